#include "reward/scorer.h"

#include <unordered_map>

#include "common/error.h"
#include "policy/model/checkpoint.h"
#include "policy/runtime/device.h"

namespace rlhf::reward {

namespace {
torch::Device parse_device(const std::string& name) {
  return policy::resolve_device(name.empty() ? "cpu" : name, "reward scorer: device");
}

// bf16: the model is frozen, so its matrices and embedding table are read as bfloat16.
policy::LoadOptions load_options(const ScorerOptions& o) {
  return policy::frozen_base_load_options(o.precision == policy::Precision::kBf16, true);
}
}  // namespace

RewardScorer::RewardScorer(const std::string& model_dir, const ScorerOptions& options)
    : rm_(load_reward_model(model_dir, load_options(options))),
      options_(options),
      device_(parse_device(options.device)) {
  rm_.model->to(device_);
  rm_.model->eval();
}

std::vector<float> RewardScorer::score(const std::vector<std::string>& prompts,
                                       const std::vector<std::string>& answers) {
  if (prompts.size() != answers.size())
    throw Error("RewardScorer::score: " + std::to_string(prompts.size()) + " prompts but " +
                std::to_string(answers.size()) + " answers");
  std::vector<std::vector<int64_t>> seqs;
  seqs.reserve(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) seqs.push_back(rm_.encode(prompts[i], answers[i]));
  return score_sequences(rm_.model, seqs, options_.batch_size, device_, rm_.pending_offset(),
                         options_.precision);
}

std::vector<float> RewardScorer::score_ids(const std::vector<std::vector<int>>& prompt_ids,
                                           const std::vector<std::vector<int>>& answer_ids) {
  if (prompt_ids.size() != answer_ids.size())
    throw Error("RewardScorer::score_ids: " + std::to_string(prompt_ids.size()) + " prompts but " +
                std::to_string(answer_ids.size()) + " answers");
  const auto& cfg = rm_.model->config();
  std::vector<std::vector<int64_t>> seqs;
  for (size_t i = 0; i < prompt_ids.size(); ++i) {
    std::vector<int> p = prompt_ids[i], a = answer_ids[i];
    if (!p.empty() && p.front() == cfg.bos_id) p.erase(p.begin());
    if (!a.empty() && a.back() == cfg.eos_id) a.pop_back();
    for (int id : p)
      if (id < 0 || id >= cfg.vocab_size)
        throw Error("RewardScorer::score_ids: prompt " + std::to_string(i) + " has token id " +
                    std::to_string(id) + " outside the vocabulary [0, " +
                    std::to_string(cfg.vocab_size) + ")");
    for (int id : a)
      if (id < 0 || id >= cfg.vocab_size)
        throw Error("RewardScorer::score_ids: answer " + std::to_string(i) + " has token id " +
                    std::to_string(id) + " outside the vocabulary [0, " +
                    std::to_string(cfg.vocab_size) + ")");
    seqs.push_back(build_sequence(p, a, cfg.bos_id, cfg.eos_id, rm_.encode_options()));
  }
  return score_sequences(rm_.model, seqs, options_.batch_size, device_, rm_.pending_offset(),
                         options_.precision);
}

PairMetrics RewardScorer::evaluate(const std::vector<Comparison>& comparisons) {
  std::vector<std::string> prompts, answers;
  for (const auto& c : comparisons) {
    prompts.push_back(c.prompt);
    answers.push_back(c.chosen);
    prompts.push_back(c.prompt);
    answers.push_back(c.rejected);
  }
  auto s = score(prompts, answers);
  std::vector<float> ch, rj;
  for (size_t i = 0; i < comparisons.size(); ++i) {
    ch.push_back(s[2 * i]);
    rj.push_back(s[2 * i + 1]);
  }
  return pair_metrics(ch, rj);
}

}  // namespace rlhf::reward
