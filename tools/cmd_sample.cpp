// `rlhf sample`: K sampled answers per prompt from a policy, as annotation tasks
// (pipelines/sample_tasks.h); `rlhf annotate add-tasks --input` loads them.
#include <cstdio>

#include "common/error.h"
#include "pipelines/sample_tasks.h"
#include "policy/runtime/device.h"
#include "tools/cli.h"

namespace {

using rlhf::cli::Args;

int run(const Args& args) {
  rlhf::pipelines::SampleTasksOptions o;
  o.model = args.get("model");
  o.tokenizer = args.get("tokenizer");
  o.prompts = args.get("prompts");
  o.out = args.get("out");
  o.answers_per_prompt = static_cast<int>(args.get_int("answers-per-prompt"));
  o.batch = static_cast<int>(args.get_int("batch"));
  o.device = args.get("device");
  auto& s = o.sampling;
  s.max_new_tokens = static_cast<int>(args.get_int("max-new-tokens"));
  s.temperature = static_cast<float>(args.get_double("temperature"));
  s.top_k = static_cast<int>(args.get_int("top-k"));
  s.top_p = static_cast<float>(args.get_double("top-p"));
  s.seed = static_cast<uint64_t>(args.get_int("seed"));
  s.precision = rlhf::policy::parse_precision(args.get("dtype"), "--dtype");
  if (s.max_new_tokens < 1) throw rlhf::UsageError("--max-new-tokens must be >= 1");
  if (!(s.temperature >= 0)) throw rlhf::UsageError("--temperature must be >= 0 (0 = greedy)");
  if (!(s.top_p > 0 && s.top_p <= 1)) throw rlhf::UsageError("--top-p must be in (0, 1]");
  if (s.top_k < 0) throw rlhf::UsageError("--top-k must be >= 0");
  if (o.answers_per_prompt < 2 || o.answers_per_prompt > 26)
    throw rlhf::UsageError("--answers-per-prompt must be in [2, 26]");
  if (o.batch < 1) throw rlhf::UsageError("--batch must be >= 1");
  const auto r = rlhf::pipelines::sample_tasks(o);
  std::printf("sampled %lld answers for %lld prompts into %s (%lld tokens, %.1f s)\n",
              static_cast<long long>(r.answers), static_cast<long long>(r.prompts), o.out.c_str(),
              static_cast<long long>(r.generated_tokens), r.seconds);
  return 0;
}

rlhf::cli::Register reg({
    "sample",
    "sample K answers per prompt from a policy as annotation tasks (text or conversation prompts)",
    "--model DIR --prompts FILE --out tasks.jsonl [--answers-per-prompt K] [--tokenizer PATH] "
    "[--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S] [--batch B] "
    "[--device D] [--dtype T]",
    {
        {"model", "checkpoint folder (native or Hugging Face)", "", false, true},
        {"prompts",
         "prompt set: JSON lines {\"prompt\": text} or {\"messages\": [...]} (rendered with the "
         "model's chat template), or an annotation database",
         "", false, true},
        {"out", "tasks JSON lines for `rlhf annotate add-tasks` (written atomically)", "", false,
         true},
        {"answers-per-prompt", "answers sampled per prompt (2..26)", "4"},
        {"tokenizer", ".model, tokenizer.json or a folder (default: the one in --model)", ""},
        {"max-new-tokens", "tokens per answer at most", "128"},
        {"temperature", "sampling temperature; 0 = greedy", "1.0"},
        {"top-k", "keep only the K most likely tokens; 0 = off", "0"},
        {"top-p", "nucleus sampling mass; 1 = off", "1.0"},
        {"seed", "random seed (same seed, same answers on CPU)", "0"},
        {"batch", "sequences generated together", "16"},
        {"device", "cpu | cuda | cuda:N", "cpu"},
        {"dtype", "fp32 | bf16", "fp32"},
    },
    run,
});

}  // namespace
