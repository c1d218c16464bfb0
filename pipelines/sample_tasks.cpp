#include "pipelines/sample_tasks.h"

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>

#include "common/error.h"
#include "common/files.h"
#include "common/progress.h"
#include "pipelines/ppo_prompts.h"
#include "policy/model/checkpoint.h"
#include "policy/runtime/device.h"
#include "policy/tokenizer/prompt_format.h"
#include "policy/tokenizer/tokenizer.h"

namespace rlhf::pipelines {

namespace {

using ojson = nlohmann::ordered_json;

policy::Tokenizer sample_tokenizer(const SampleTasksOptions& o, int model_vocab) {
  std::string path = o.tokenizer;
  if (path.empty()) path = policy::Tokenizer::file_in_folder(o.model);
  if (path.empty())
    throw Error(o.model + ": holds no tokenizer.model or tokenizer.json; give a tokenizer");
  policy::Tokenizer tok = policy::Tokenizer::load(path);
  if (tok.vocab_size() > model_vocab)
    throw Error("tokenizer " + path + " has " + std::to_string(tok.vocab_size()) +
                " pieces but the model's vocab_size is " + std::to_string(model_vocab));
  return tok;
}

ojson sampling_json(const policy::SamplingOptions& s) {
  return {{"temperature", s.temperature},
          {"top_k", s.top_k},
          {"top_p", s.top_p},
          {"max_new_tokens", s.max_new_tokens},
          {"seed", s.seed}};
}

}  // namespace

SampleTasksResult sample_tasks(const SampleTasksOptions& o) {
  if (o.answers_per_prompt < 2 || o.answers_per_prompt > 26)
    throw Error("answers per prompt must be in [2, 26] (an annotation task's limits), got " +
                std::to_string(o.answers_per_prompt));
  if (o.batch < 1) throw Error("batch must be >= 1, got " + std::to_string(o.batch));
  policy::LoadedModel loaded = policy::load_checkpoint(o.model);
  auto& model = loaded.model;
  model->to(policy::resolve_device(o.device, "device"));
  model->eval();
  const policy::Tokenizer tok = sample_tokenizer(o, model->config().vocab_size);
  const PromptSet set = read_prompt_set(o.prompts, tok);
  for (size_t i = 0; i < set.ids.size(); ++i)
    if (set.texts[i].empty() && set.messages[i].is_null())
      throw Error(o.prompts + ": prompt " + std::to_string(i + 1) +
                  " is given as ids only; annotators need its text (give \"prompt\" or "
                  "\"messages\")");

  policy::SamplingOptions so = o.sampling;
  so.stop_ids = set.stop_ids;
  so.eos_id = model->config().eos_id;
  const size_t k = static_cast<size_t>(o.answers_per_prompt);
  const size_t rows = set.ids.size() * k;
  std::vector<std::string> answers(rows);
  SampleTasksResult r;
  const auto start = std::chrono::steady_clock::now();
  Progress progress("sample", static_cast<int64_t>(rows), "answer");
  for (size_t first = 0; first < rows; first += static_cast<size_t>(o.batch)) {
    const size_t end = std::min(rows, first + static_cast<size_t>(o.batch));
    std::vector<std::vector<int64_t>> prompts;
    for (size_t row = first; row < end; ++row) prompts.push_back(set.ids[row / k]);
    policy::SamplingOptions batch_options = so;
    batch_options.seed = so.seed + first;
    const auto gen = policy::generate(model, prompts, batch_options);
    for (size_t row = first; row < end; ++row)
      answers[row] = policy::decode_reply(tok, gen.responses[row - first], so.eos_id, so.stop_ids);
    r.generated_tokens += gen.generated_tokens;
    progress.update(static_cast<int64_t>(end));
  }
  progress.finish();

  std::string lines;
  for (size_t p = 0; p < set.ids.size(); ++p) {
    ojson line = set.messages[p].is_null() ? ojson{{"prompt", set.texts[p]}}
                                           : ojson{{"messages", set.messages[p]}};
    line["answers"] =
        std::vector<std::string>(answers.begin() + p * k, answers.begin() + (p + 1) * k);
    line["model"] = o.model;
    line["sampling"] = sampling_json(so);
    lines += line.dump(-1, ' ', false, ojson::error_handler_t::replace) + "\n";
  }
  write_file_atomic(o.out, lines);
  r.prompts = static_cast<int64_t>(set.ids.size());
  r.answers = static_cast<int64_t>(rows);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace rlhf::pipelines
