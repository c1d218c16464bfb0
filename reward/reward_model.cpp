#include "reward/reward_model.h"

#include <algorithm>
#include <filesystem>
#include <numeric>

#include "common/error.h"
#include "common/files.h"
#include "policy/model/checkpoint.h"

namespace rlhf::reward {

namespace fs = std::filesystem;

std::vector<int64_t> build_sequence(const std::vector<int>& prompt_ids,
                                    const std::vector<int>& answer_ids, int bos_id, int eos_id,
                                    const EncodeOptions& options) {
  std::vector<int64_t> seq;
  // A prompt that starts with BOS (written by a chat template) keeps that one BOS only.
  const size_t own_bos = bos_id >= 0 && !prompt_ids.empty() && prompt_ids.front() == bos_id;
  size_t np = std::min(prompt_ids.size() - own_bos,
                       static_cast<size_t>(std::max(0, options.max_prompt_tokens)));
  size_t na =
      std::min(answer_ids.size(), static_cast<size_t>(std::max(0, options.max_answer_tokens)));
  seq.reserve(np + na + 2);
  if (bos_id >= 0) seq.push_back(bos_id);
  seq.insert(seq.end(), prompt_ids.end() - static_cast<std::ptrdiff_t>(np), prompt_ids.end());
  seq.insert(seq.end(), answer_ids.begin(), answer_ids.begin() + static_cast<std::ptrdiff_t>(na));
  if (eos_id >= 0) seq.push_back(eos_id);
  if (seq.empty()) seq.push_back(0);  // never score an empty row
  return seq;
}

PaddedBatch pad_batch(const std::vector<std::vector<int64_t>>& sequences, int64_t pad_id,
                      bool left_pad) {
  TORCH_CHECK(!sequences.empty(), "pad_batch: no sequences");
  int64_t n = static_cast<int64_t>(sequences.size()), t = 0;
  for (const auto& s : sequences) t = std::max<int64_t>(t, static_cast<int64_t>(s.size()));
  auto ids = torch::full({n, t}, std::max<int64_t>(pad_id, 0), torch::kLong);
  auto mask = torch::zeros({n, t}, torch::kLong);
  auto ia = ids.accessor<int64_t, 2>();
  auto ma = mask.accessor<int64_t, 2>();
  for (int64_t i = 0; i < n; ++i) {
    const auto& s = sequences[static_cast<size_t>(i)];
    int64_t off = left_pad ? t - static_cast<int64_t>(s.size()) : 0;
    for (size_t j = 0; j < s.size(); ++j) {
      ia[i][off + static_cast<int64_t>(j)] = s[j];
      ma[i][off + static_cast<int64_t>(j)] = 1;
    }
  }
  return {ids, mask};
}

torch::Tensor score_batch(policy::Transformer& model, const torch::Tensor& ids,
                          const torch::Tensor& mask, policy::Precision precision) {
  TORCH_CHECK(ids.dim() == 2 && mask.sizes() == ids.sizes(),
              "score_batch: ids and mask must both be [N, T]");
  TORCH_CHECK(model->config().value_head, "score_batch: the model has no scalar (value) head");
  torch::Tensor hidden;  // [N, T, D]
  {
    policy::AutocastScope autocast(ids.device(), precision);  // kFp32: a no-op
    hidden = model->hidden_states(ids, mask);
  }
  // bf16: the head reads float32 hidden states outside the autocast, so it runs in float32.
  if (precision == policy::Precision::kBf16) hidden = hidden.to(torch::kFloat);
  int64_t n = ids.size(0), t = ids.size(1);
  // Index of the last real token: max over (position + 1) where mask is 1, minus 1.
  auto pos = torch::arange(1, t + 1, mask.options());
  auto last = std::get<0>((mask * pos).max(1)) - 1;  // [N]
  last = last.clamp_min(0);
  auto rows = torch::arange(n, last.options());
  auto h = hidden.index({rows, last}).unsqueeze(1);  // [N, 1, D]
  return model->values_from_hidden(h).reshape({n}).to(torch::kFloat);
}

std::vector<float> score_sequences(policy::Transformer& model,
                                   const std::vector<std::vector<int64_t>>& sequences,
                                   int batch_size, const torch::Device& device, float score_offset,
                                   policy::Precision precision) {
  std::vector<float> out(sequences.size());
  if (sequences.empty()) return out;
  torch::NoGradGuard no_grad;
  bool was_training = model->is_training();
  model->eval();
  std::vector<size_t> order(sequences.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return sequences[a].size() < sequences[b].size(); });
  int64_t pad = model->config().pad_id;
  size_t bs = static_cast<size_t>(std::max(1, batch_size));
  for (size_t start = 0; start < order.size(); start += bs) {
    size_t end = std::min(order.size(), start + bs);
    std::vector<std::vector<int64_t>> chunk;
    for (size_t k = start; k < end; ++k) chunk.push_back(sequences[order[k]]);
    auto b = pad_batch(chunk, pad);
    auto s = score_batch(model, b.ids.to(device), b.mask.to(device), precision)
                 .to(torch::kCPU)
                 .contiguous();
    if (score_offset != 0) s = s - score_offset;
    auto acc = s.accessor<float, 1>();
    for (size_t k = start; k < end; ++k) out[order[k]] = acc[static_cast<int64_t>(k - start)];
  }
  if (was_training) model->train();
  return out;
}

EncodeOptions RewardModel::encode_options() const {
  EncodeOptions o;
  if (meta.max_prompt_tokens() > 0) o.max_prompt_tokens = meta.max_prompt_tokens();
  if (meta.max_answer_tokens() > 0) o.max_answer_tokens = meta.max_answer_tokens();
  return o;
}

std::vector<int64_t> RewardModel::encode(const std::string& prompt,
                                         const std::string& answer) const {
  return build_sequence(tokenizer.encode(prompt), tokenizer.encode(answer), model->config().bos_id,
                        model->config().eos_id, encode_options());
}

std::string resolve_model_dir(const std::string& dir) {
  if (file_exists(dir + "/checkpoint.pb")) return dir;
  if (file_exists(dir + "/model/checkpoint.pb")) return dir + "/model";
  throw Error(dir + ": not a reward model folder (no checkpoint.pb in it or in " + dir + "/model)");
}

RewardModel load_reward_model(const std::string& dir_in, const policy::LoadOptions& options) {
  try {
    RewardModel rm;
    rm.dir = resolve_model_dir(dir_in);
    std::string meta_path = rm.dir + "/reward.pb";
    if (!file_exists(meta_path))
      throw Error(meta_path + ": missing (is this a reward model? policy checkpoints have none)");
    if (!rm.meta.ParseFromString(read_file(meta_path)))
      throw Error(meta_path + ": corrupt (not a RewardModelMeta message)");
    if (rm.meta.schema_version() != 1)
      throw Error(meta_path + ": unsupported schema_version " +
                  std::to_string(rm.meta.schema_version()) + " (expected 1)");
    auto loaded = policy::load_checkpoint(rm.dir, options);
    rm.model = loaded.model;
    if (!rm.model->config().value_head)
      throw Error(rm.dir + ": checkpoint has no scalar head (value_head)");
    std::string tok =
        rm.dir + "/" +
        (rm.meta.tokenizer_file().empty() ? "tokenizer.model" : rm.meta.tokenizer_file());
    rm.tokenizer = policy::Tokenizer::load(tok);
    if (!loaded.info.tokenizer_sha256.empty() &&
        loaded.info.tokenizer_sha256 != rm.tokenizer.sha256())
      throw Error(tok + ": tokenizer hash " + rm.tokenizer.sha256() +
                  " differs from the checkpoint's " + loaded.info.tokenizer_sha256);
    if (rm.tokenizer.vocab_size() > rm.model->config().vocab_size)
      throw Error(tok + ": tokenizer vocab " + std::to_string(rm.tokenizer.vocab_size()) +
                  " exceeds the model's vocab_size " +
                  std::to_string(rm.model->config().vocab_size));
    rm.model->eval();
    return rm;
  } catch (...) {
    rethrow_with_context("loading reward model " + dir_in);
  }
}

void save_reward_model(policy::Transformer& model, const std::string& tokenizer_path,
                       const proto::RewardModelMeta& meta_in, const std::string& dir,
                       int64_t step) {
  std::string tmp = dir + ".new", old = dir + ".old";
  fs::remove_all(tmp);
  policy::CheckpointInfo info;
  info.kind = "reward";
  info.created_by = "rlhf reward train";
  info.step = step;
  const policy::Tokenizer tok = policy::Tokenizer::load(tokenizer_path);
  info.tokenizer_sha256 = tok.sha256();
  policy::save_checkpoint(model, tmp, info);
  const std::string tokenizer_file = tok.save(tmp);
  proto::RewardModelMeta meta = meta_in;
  meta.set_schema_version(1);
  meta.set_tokenizer_file(tokenizer_file);
  meta.set_step(step);
  std::string bin;
  meta.SerializeToString(&bin);
  write_file_atomic(tmp + "/reward.pb", bin);
  fs::remove_all(old);
  if (fs::exists(dir)) fs::rename(dir, old);
  rename_atomic(tmp, dir);
  fs::remove_all(old);
}

}  // namespace rlhf::reward
