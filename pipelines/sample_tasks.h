// `rlhf sample`: K sampled answers per prompt from a policy, written as annotation tasks
// (annotation/import_export.h add_tasks_jsonl reads them). Prompts are a prompt set
// (pipelines/ppo_prompts.h): text lines, conversation lines ({"messages": [...]}, rendered with
// the chat template and its generation prompt, generation stopped at the template's end-of-turn
// ids) or an annotation database. Each task line is
//   {"prompt": text, "answers": [...], "model": DIR, "sampling": {...}}            (text), or
//   {"messages": [...], "answers": [...], "model": DIR, "sampling": {...}}         (conversation),
// the answers decoded up to (not including) the first EOS / end-of-turn token, so annotators see
// the reply's text and no template markup.
//
// Reproducible: the same seed, model and prompts give the same file on CPU (batch b of the
// repeated prompt list draws with seed + its first row).
//
// Errors: rlhf::Error naming the file and what was expected: a prompt given as ids only (no
// text to show annotators), a model without a tokenizer and no `tokenizer`, a tokenizer larger
// than the model's vocabulary, answers_per_prompt outside [2, 26] (a task's limits); the
// prompt set's and the checkpoint loader's own errors. The output is written atomically.
// Thread safety: one call at a time per process (it uses libtorch's thread pool).
#pragma once

#include <cstdint>
#include <string>

#include "policy/decoding/generation.h"

namespace rlhf::pipelines {

struct SampleTasksOptions {
  std::string model;      // checkpoint folder (native or Hugging Face)
  std::string tokenizer;  // "" = the one in the model folder
  std::string prompts;    // prompt set
  std::string out;        // tasks JSONL
  int answers_per_prompt = 4;
  int batch = 16;  // sequences per generate() call
  std::string device = "cpu";
  policy::SamplingOptions sampling;  // stop_ids and eos_id are set from the model and prompts
};

struct SampleTasksResult {
  int64_t prompts = 0, answers = 0, generated_tokens = 0;
  double seconds = 0;
};

SampleTasksResult sample_tasks(const SampleTasksOptions& options);

}  // namespace rlhf::pipelines
