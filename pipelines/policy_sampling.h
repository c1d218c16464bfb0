// Text-level helpers over policy generation used by the pipeline stages: answering prompts
// greedily (gold evaluation) and sampling K answers per prompt (annotation tasks).
//
// Errors: what policy::generate and the tokenizer throw (rlhf::Error naming the problem, e.g. a
// prompt longer than the model's max_seq_len; c10::Error from libtorch). Thread safety: these
// run forward passes of `model`, which is not thread-safe (policy/model/model.h): one call per
// model at a time.
#pragma once

#include <string>
#include <vector>

#include "pipelines/quickstart_task.h"
#include "policy/decoding/generation.h"
#include "policy/model/model.h"
#include "policy/tokenizer/tokenizer.h"

namespace rlhf::pipelines {

// Answers each prompt once (ids formatted with policy/tokenizer/prompt_format.h), in batches of
// `batch`. options.seed is offset per batch so results do not depend on the batch size only through
// it.
std::vector<std::string> answer_prompts(policy::Transformer& model, const policy::Tokenizer& tok,
                                        const std::vector<std::string>& prompts,
                                        const policy::SamplingOptions& options, int batch = 64);

// K sampled answers per prompt: result[i][k].
std::vector<std::vector<std::string>> sample_answers(policy::Transformer& model,
                                                     const policy::Tokenizer& tok,
                                                     const std::vector<std::string>& prompts, int k,
                                                     const policy::SamplingOptions& options,
                                                     int batch = 64);

struct GoldEval {
  double accuracy = 0;
  std::vector<std::string> prompts, answers;
  std::vector<int> golds;
  std::vector<bool> correct;
};

// Greedy answers to the problems and the share that is correct (the quickstart's gold accuracy).
GoldEval evaluate_gold(policy::Transformer& model, const policy::Tokenizer& tok,
                       const std::vector<quickstart::Problem>& problems, int max_new_tokens = 24,
                       int batch = 64, policy::Precision precision = policy::Precision::kFp32);

}  // namespace rlhf::pipelines
