// The tiny pipeline configuration the end-to-end pipeline tests share (pipeline_test,
// compare_test): every stage runs in seconds on 2 cores, trainers as 2 data-parallel ranks.
#pragma once

namespace rlhf::testing {

inline constexpr const char* kTinyPipelineConfig = R"(
name: "tiny"
seed: 3
quickstart { sft_examples: 400 tokenizer_problems: 300 heldout_problems: 24 sample_prompts: 24 ppo_prompts: 64 }
tokenizer { vocab_size: 384 }
sft { model { dim: 32 n_layers: 1 n_heads: 2 n_kv_heads: 2 max_seq_len: 64 } seq_len: 64 steps: 30 batch_size: 16 optimizer { lr: 3e-3 } eval_every: 30 }
sample { answers_per_prompt: 3 max_new_tokens: 10 batch_size: 32 }
annotate { teacher: "arithmetic" annotators: 2 }
reward { max_prompt_tokens: 46 max_answer_tokens: 16 steps: 10 batch_pairs: 16 eval_every: 10 }
ppo { iterations: 2 batch_size: 8 minibatch_size: 4 ppo_epochs: 1 max_new_tokens: 10 checkpoint_every: 1 }
processes { sft: 2 reward: 2 ppo: 2 }
)";

}  // namespace rlhf::testing
