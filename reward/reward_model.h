// The reward model: the policy's decoder backbone (policy::Transformer) plus a scalar head
// (the model's value head, Linear(D, 1)) read at the last non-pad token of prompt + answer.
//
// Input layout of one (prompt, answer): [bos] + last max_prompt_tokens of the prompt + first
// max_answer_tokens of the answer + [eos]; prompt and answer are tokenized separately, so the
// answer's tokens do not depend on the prompt. The score is read at the final [eos]. A prompt
// whose ids already begin with [bos] (a chat template that writes it, as Llama 3's
// <|begin_of_text|>) gets no second one.
//
// A reward model folder is a policy checkpoint (policy/model/checkpoint.h, kind "reward", with a
// value head) plus a copy of the tokenizer (tokenizer.model, or tokenizer.json and its
// tokenizer_config.json: policy::Tokenizer::save; reward.pb's tokenizer_file names the main file)
// and reward.pb (proto::RewardModelMeta).
//
// Errors: loading and resolving throw rlhf::Error naming the folder and file (and, for a
// tokenizer that does not match the checkpoint, both hashes or vocabulary sizes); pad_batch and
// score_batch check their inputs with TORCH_CHECK (c10::Error); saving names the path it could
// not write. Thread safety: scoring runs forward passes of the model, which is not thread-safe
// (policy/model/model.h): one call per model at a time. Ownership: a RewardModel owns its model
// and tokenizer (libtorch and shared handles).
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "policy/model/checkpoint.h"
#include "policy/model/model.h"
#include "policy/runtime/device.h"
#include "policy/tokenizer/tokenizer.h"
#include "proto/reward.pb.h"

namespace rlhf::reward {

struct EncodeOptions {
  int max_prompt_tokens = 192;  // keep the last N tokens of the prompt (its end matters most)
  int max_answer_tokens = 192;  // keep the first N tokens of the answer
};

// Ids for one (prompt, answer) from already tokenized parts (see the layout above).
// bos/eos < 0 are left out.
std::vector<int64_t> build_sequence(const std::vector<int>& prompt_ids,
                                    const std::vector<int>& answer_ids, int bos_id, int eos_id,
                                    const EncodeOptions& options);

// A padded batch: ids [N, T] int64, mask [N, T] int64 (1 real, 0 pad).
struct PaddedBatch {
  torch::Tensor ids, mask;
};
PaddedBatch pad_batch(const std::vector<std::vector<int64_t>>& sequences, int64_t pad_id,
                      bool left_pad = false);

// Scalar scores [N] (float32) read at each row's last real token. ids/mask: [N, T] on the model's
// device; rows may be left- or right-padded. Requires model->config().value_head.
// Grad mode follows the caller. precision kBf16: the backbone runs under bf16 autocast
// (policy::AutocastScope, as a model with bfloat16 matrices needs) and the scalar head in float32
// outside it, so the scores are not rounded to bfloat16; kFp32 (the default) adds nothing, and
// an autocast the caller opened applies to the whole forward as before.
torch::Tensor score_batch(policy::Transformer& model, const torch::Tensor& ids,
                          const torch::Tensor& mask,
                          policy::Precision precision = policy::Precision::kFp32);

// Scores sequences in chunks of batch_size under NoGradGuard (eval mode), sorted by length so
// that padding stays small; results are in input order, minus score_offset. precision: as
// score_batch's.
std::vector<float> score_sequences(policy::Transformer& model,
                                   const std::vector<std::vector<int64_t>>& sequences,
                                   int batch_size, const torch::Device& device,
                                   float score_offset = 0.0f,
                                   policy::Precision precision = policy::Precision::kFp32);

// A loaded reward model.
struct RewardModel {
  policy::Transformer model{nullptr};
  policy::Tokenizer tokenizer;
  proto::RewardModelMeta meta;
  std::string dir;  // the resolved model folder

  EncodeOptions encode_options() const;
  std::vector<int64_t> encode(const std::string& prompt, const std::string& answer) const;
  // What score_sequences must still subtract (0 when the offset is folded into the head bias).
  float pending_offset() const { return meta.offset_folded() ? 0.0f : meta.score_offset(); }
};

// Resolves a model folder: DIR itself when it holds checkpoint.pb, else DIR/model (the layout of
// `rlhf reward train --out DIR`). Throws naming DIR when neither is a checkpoint.
std::string resolve_model_dir(const std::string& dir);

// Loads a reward model folder (see resolve_model_dir); errors name the folder and file. `options`
// as policy::load_checkpoint's (e.g. frozen_base_load_options(true, true): matrices and embedding
// table in bfloat16, for scoring under bf16 autocast only); the default reads float32.
RewardModel load_reward_model(const std::string& dir, const policy::LoadOptions& options = {});

// Writes a reward model folder: the checkpoint, a copy of the tokenizer's files, reward.pb.
// tokenizer_path: anything policy::Tokenizer::load accepts (.model, tokenizer.json, folder).
// Replaces `dir` as a whole (written under a temporary name, then renamed).
void save_reward_model(policy::Transformer& model, const std::string& tokenizer_path,
                       const proto::RewardModelMeta& meta, const std::string& dir, int64_t step);

}  // namespace rlhf::reward
