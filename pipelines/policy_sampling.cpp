#include "pipelines/policy_sampling.h"

#include <algorithm>

#include "policy/tokenizer/prompt_format.h"

namespace rlhf::pipelines {

std::vector<std::string> answer_prompts(policy::Transformer& model, const policy::Tokenizer& tok,
                                        const std::vector<std::string>& prompts,
                                        const policy::SamplingOptions& options, int batch) {
  std::vector<std::string> out;
  out.reserve(prompts.size());
  for (size_t start = 0; start < prompts.size(); start += static_cast<size_t>(batch)) {
    size_t end = std::min(prompts.size(), start + static_cast<size_t>(batch));
    std::vector<std::vector<int64_t>> ids;
    for (size_t i = start; i < end; ++i) ids.push_back(policy::encode_prompt(tok, prompts[i]));
    policy::SamplingOptions o = options;
    o.seed = options.seed + start;
    auto gen = policy::generate(model, ids, o);
    for (const auto& r : gen.responses) out.push_back(policy::decode_response(tok, r));
  }
  return out;
}

std::vector<std::vector<std::string>> sample_answers(policy::Transformer& model,
                                                     const policy::Tokenizer& tok,
                                                     const std::vector<std::string>& prompts, int k,
                                                     const policy::SamplingOptions& options,
                                                     int batch) {
  std::vector<std::string> repeated;
  repeated.reserve(prompts.size() * static_cast<size_t>(k));
  for (const auto& p : prompts)
    for (int j = 0; j < k; ++j) repeated.push_back(p);
  auto flat = answer_prompts(model, tok, repeated, options, batch);
  std::vector<std::vector<std::string>> out(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i)
    for (int j = 0; j < k; ++j) out[i].push_back(flat[i * static_cast<size_t>(k) + j]);
  return out;
}

GoldEval evaluate_gold(policy::Transformer& model, const policy::Tokenizer& tok,
                       const std::vector<quickstart::Problem>& problems, int max_new_tokens,
                       int batch, policy::Precision precision) {
  GoldEval r;
  for (const auto& p : problems) {
    r.prompts.push_back(p.prompt());
    r.golds.push_back(p.gold());
  }
  policy::SamplingOptions o;
  o.temperature = 0.0f;
  o.max_new_tokens = max_new_tokens;
  o.precision = precision;
  r.answers = answer_prompts(model, tok, r.prompts, o, batch);
  int right = 0;
  for (size_t i = 0; i < problems.size(); ++i) {
    bool ok = quickstart::is_correct(problems[i], r.answers[i]);
    r.correct.push_back(ok);
    right += ok ? 1 : 0;
  }
  r.accuracy = problems.empty() ? 0.0 : static_cast<double>(right) / problems.size();
  return r;
}

}  // namespace rlhf::pipelines
