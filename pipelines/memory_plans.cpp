#include "pipelines/memory_plans.h"

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/files.h"
#include "policy/model/checkpoint.h"
#include "policy/ppo/ppo_config.h"
#include "policy/tokenizer/tokenizer.h"
#include "reward/reward_model.h"

namespace rlhf::pipelines {

namespace {

// A checkpoint folder's architecture, from its config.json (native and Hugging Face folders both
// have one), without reading a weight.
policy::ModelConfig folder_config(const std::string& dir, const std::string& what) {
  std::string path = dir + "/config.json";
  if (!file_exists(path) && file_exists(dir + "/model/config.json"))
    path = dir + "/model/config.json";  // a stage folder: its model/ checkpoint
  if (!file_exists(path))
    throw Error("memory plan: " + what + " " + dir +
                " has no config.json (expected a checkpoint "
                "folder)");
  return policy::model_config_from_hf_json(path);
}

// From scratch: the config's architecture, the vocabulary from the tokenizer when not given.
policy::ModelConfig scratch_config(const proto::ModelConfig& p, const std::string& tokenizer) {
  policy::ModelConfig m;
  if (p.dim()) m.dim = p.dim();
  if (p.n_layers()) m.n_layers = p.n_layers();
  if (p.n_heads()) m.n_heads = p.n_heads();
  m.n_kv_heads = p.n_kv_heads() ? p.n_kv_heads() : m.n_heads;
  if (p.hidden_dim()) m.hidden_dim = p.hidden_dim();
  if (p.max_seq_len()) m.max_seq_len = p.max_seq_len();
  m.tie_embeddings = p.tie_embeddings();
  if (p.vocab_size())
    m.vocab_size = p.vocab_size();
  else if (!tokenizer.empty())
    m.vocab_size = policy::Tokenizer::load(tokenizer).vocab_size();
  return m;
}

std::vector<std::string> lora_targets(const proto::LoraConfig& l) {
  if (l.targets_size() == 0) return {"q", "v"};
  return {l.targets().begin(), l.targets().end()};
}

bool lora_on(const proto::LoraConfig& l) { return l.rank() > 0; }

policy::MemoryPlan begin(const char* stage, const std::string& device, const std::string& dtype) {
  policy::MemoryPlan plan;
  plan.stage = stage;
  plan.device = device;
  plan.dtype = dtype;
  return plan;
}

// A trained model: full, or frozen base + LoRA adapters (+ the value head when it has one).
policy::ModelPart trained(const std::string& name, const policy::ModelShape& s,
                          const proto::LoraConfig& lora, bool bf16_frozen_base) {
  policy::ModelPart p{name, s, 4, false, s.matrix_params() + s.other_params()};
  if (lora_on(lora)) {
    p.trainable = s.lora_params(lora.rank(), lora_targets(lora)) + (s.value_head ? s.dim + 1 : 0);
    if (bf16_frozen_base) p.matrix_bytes = p.embedding_bytes = 2;  // matrices and embeddings
  }
  return p;
}

void add_activations(policy::MemoryPlan& plan, const policy::ModelShape& s, int64_t rows,
                     int64_t seq, bool logits, const std::string& dtype) {
  plan.add("activations", "training",
           policy::activation_bytes(s, rows, seq, logits, dtype == "bf16"),
           "estimate: " + std::to_string(rows) + " rows x " + std::to_string(seq) + " tokens");
}

// The critic: a separate model trained in full, or (critic "policy_base" / "reward_base") adapters
// and a value head on the policy's / the reward model's shared base, with its own fused cache (its
// effective weights differ).
void add_critic(policy::MemoryPlan& plan, const proto::PpoConfig& c, const policy::ModelConfig& pc,
                const policy::ModelConfig& rc) {
  policy::ModelConfig vc =
      c.critic() == "reward_base" ? rc
      : c.value_model().empty()
          ? pc
          : folder_config(reward::resolve_model_dir(c.value_model()), "ppo config: value_model");
  vc.value_head = true;
  const auto cs = model_shape(vc);
  if (!policy::critic_on_shared_base(c)) {
    policy::add_model(plan, {"critic", cs, 4, false, cs.matrix_params() + cs.other_params()});
    return;
  }
  const proto::LoraConfig l = policy::critic_lora_config(c);
  policy::add_model(
      plan, {"critic", cs, 4, true, cs.lora_params(l.rank(), lora_targets(l)) + cs.dim + 1, 4,
             c.critic() == "reward_base" ? "reward model" : "policy"});
  // Its effective weights have the base's dtype: the reward model's or the policy's, bfloat16
  // under bf16 (the stage loads both so), else float32.
  const int base_bytes = c.dtype() == "bf16" ? 2 : 4;
  plan.add("critic", "fused cache", cs.fused_params() * base_bytes, "its own concatenated weights");
}

}  // namespace

policy::ModelShape model_shape(const policy::ModelConfig& c) {
  policy::ModelShape s;
  s.vocab = c.vocab_size;
  s.dim = c.dim;
  s.layers = c.n_layers;
  s.heads = c.n_heads;
  s.kv_heads = c.n_kv_heads;
  s.head_dim = c.head_dim();
  s.hidden = c.resolved_hidden_dim();
  s.tied = c.tie_embeddings;
  s.qkv_bias = c.qkv_bias;
  s.o_bias = c.o_bias;
  s.mlp_bias = c.mlp_bias;
  s.qk_norm = c.qk_norm;
  s.value_head = c.value_head;
  return s;
}

policy::MemoryPlan sft_memory_plan(const proto::SftConfig& c) {
  auto plan = begin("sft", c.device(), c.dtype());
  const policy::ModelConfig mc = c.init_from().empty()
                                     ? scratch_config(c.model(), c.tokenizer())
                                     : folder_config(c.init_from(), "sft config: init_from");
  const auto s = model_shape(mc);
  const bool bf16 = c.dtype() == "bf16";
  policy::add_model(plan, trained("policy", s, c.lora(), bf16));  // sft_trainer: bf16 LoRA base
  const int64_t seq =
      c.seq_len() > 0 ? std::min<int64_t>(c.seq_len(), mc.max_seq_len) : mc.max_seq_len;
  add_activations(plan, s, c.batch_size(), seq, true, c.dtype());
  return plan;
}

policy::MemoryPlan reward_memory_plan(const proto::RewardTrainConfig& c) {
  auto plan = begin("reward train", c.device(), c.dtype());
  policy::ModelConfig mc = c.init_from().empty()
                               ? scratch_config(c.model(), c.tokenizer())
                               : folder_config(c.init_from(), "reward config: init_from");
  mc.value_head = true;
  const auto s = model_shape(mc);
  // reward/trainer.cpp: bf16 LoRA base, as SFT's
  policy::add_model(plan, trained("reward model", s, c.lora(), c.dtype() == "bf16"));
  // Each comparison is two sequences (chosen, rejected) of prompt + answer tokens.
  add_activations(plan, s, 2 * int64_t{c.batch_pairs()},
                  int64_t{c.max_prompt_tokens()} + c.max_answer_tokens(), false, c.dtype());
  return plan;
}

policy::MemoryPlan ppo_memory_plan(const proto::PpoConfig& c) {
  auto plan = begin("ppo", c.device(), c.dtype());
  const bool bf16 = c.dtype() == "bf16", lora = lora_on(c.lora());
  const auto pc = folder_config(c.policy(), "ppo config: policy");
  const auto s = model_shape(pc);
  // bf16 with LoRA: the stage loads the frozen base (matrices, embeddings) in bfloat16.
  policy::add_model(plan, trained("policy", s, c.lora(), bf16));
  if (lora && c.reference().empty()) {
    policy::add_model(plan, {"reference", s, 2, true, 0});  // the base with adapters off
  } else {
    const auto rs = c.reference().empty()
                        ? s
                        : model_shape(folder_config(c.reference(), "ppo config: reference"));
    // bf16: its matrices stored so, with LoRA its embedding table too (as the policy's base).
    policy::add_model(plan, {"reference", rs, bf16 ? 2 : 4, false, 0, bf16 && lora ? 2 : 4});
  }
  policy::ModelConfig rc =
      folder_config(reward::resolve_model_dir(c.reward_model()), "ppo config: reward_model");
  rc.value_head = true;
  add_critic(plan, c, pc, rc);
  // Once, also with critic "reward_base"; frozen: bf16 reads its matrices and embedding table in
  // bfloat16 (reward::ScorerOptions::precision).
  const int rm_bytes = bf16 ? 2 : 4;
  policy::add_model(plan, {"reward model", model_shape(rc), rm_bytes, false, 0, rm_bytes});
  const int64_t seq = int64_t{c.max_prompt_tokens()} + c.max_new_tokens();
  plan.add("generation", "KV cache", policy::kv_cache_bytes(s, c.batch_size(), seq, bf16),
           std::to_string(c.batch_size()) + " x " + std::to_string(seq) + " positions" +
               (bf16 ? " bf16" : " fp32"));
  add_activations(plan, s, c.minibatch_size(), seq, true, c.dtype());
  return plan;
}

template <class Config>
void check_stage_memory(const Config& config, policy::MemoryPlan (*plan_of)(const Config&)) {
  const char* skip = std::getenv("RLHF_NO_MEMORY_CHECK");
  if (skip && *skip && std::string(skip) != "0") return;
  policy::MemoryPlan plan;
  try {
    plan = plan_of(config);
  } catch (const std::exception&) {
    return;  // a folder the plan cannot read: the stage's own loading names what is wrong
  }
  policy::check_plan_fits(plan, policy::available_memory(plan.device));
}
template void check_stage_memory(const proto::SftConfig&,
                                 policy::MemoryPlan (*)(const proto::SftConfig&));
template void check_stage_memory(const proto::RewardTrainConfig&,
                                 policy::MemoryPlan (*)(const proto::RewardTrainConfig&));
template void check_stage_memory(const proto::PpoConfig&,
                                 policy::MemoryPlan (*)(const proto::PpoConfig&));

void check_stage_memory(const policy::MemoryPlan& plan) {
  const char* skip = std::getenv("RLHF_NO_MEMORY_CHECK");
  if (skip && *skip && std::string(skip) != "0") return;
  policy::check_plan_fits(plan, policy::available_memory(plan.device));
}

}  // namespace rlhf::pipelines
