// `rlhf pipeline run FILE.pbtxt [--run-dir DIR] [--from STAGE] [--only STAGE] [--force]` and
// `rlhf pipeline sweep FILE.pbtxt --seeds 0-4 [--run-dir DIR]` and
// `rlhf pipeline compare FILE.pbtxt [--run-dir DIR] [--methods ...] [--seeds 0-2]`.
#include <cstdio>
#include <string>
#include <vector>

#include "common/error.h"
#include "pipelines/compare.h"
#include "pipelines/pipeline.h"
#include "pipelines/sweep_report.h"
#include "tools/cli.h"

namespace {

int run_pipeline_cmd(const rlhf::cli::Args& args) {
  if (args.positional().size() != 1)
    throw rlhf::UsageError("expected one pipeline config file (FILE.pbtxt)");
  rlhf::pipelines::RunOptions o;
  o.config_path = args.positional()[0];
  o.run_dir = args.get("run-dir");
  o.from_stage = args.get("from");
  o.only_stage = args.get("only");
  o.force = args.get_bool("force");
  o.device = args.get("device");
  o.dtype = args.get("dtype");
  o.stop_timeout_s = args.get_double("stop-timeout");
  if (!(o.stop_timeout_s > 0) || o.stop_timeout_s > 86400)
    throw rlhf::UsageError("--stop-timeout: expected seconds in (0, 86400], got " +
                           args.get("stop-timeout"));
  std::string dir = rlhf::pipelines::run_pipeline(o);
  std::printf("pipeline finished: %s/summary.json\n", dir.c_str());
  return 0;
}

int run_sweep_cmd(const rlhf::cli::Args& args) {
  if (args.positional().size() != 1)
    throw rlhf::UsageError("expected one pipeline config file (FILE.pbtxt)");
  rlhf::pipelines::RunOptions o;
  o.config_path = args.positional()[0];
  o.run_dir = args.get("run-dir");
  o.device = args.get("device");
  o.dtype = args.get("dtype");
  const auto seeds = rlhf::pipelines::parse_seeds(args.get("seeds"));
  const std::string dir = rlhf::pipelines::run_sweep(o, seeds);
  std::printf("sweep finished: %s/sweep.json    %s/sweep.html\n", dir.c_str(), dir.c_str());
  return 0;
}

// "ppo,grpo" -> {"ppo", "grpo"}; empty text -> none (the config's or all).
std::vector<std::string> split_methods(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size() && !text.empty()) {
    const size_t comma = text.find(',', start);
    const std::string part = text.substr(start, comma == std::string::npos ? comma : comma - start);
    if (part.empty()) throw rlhf::UsageError("--methods: empty method name in '" + text + "'");
    out.push_back(part);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

int run_compare_cmd(const rlhf::cli::Args& args) {
  if (args.positional().size() != 1)
    throw rlhf::UsageError("expected one pipeline config file (FILE.pbtxt)");
  rlhf::pipelines::CompareOptions o;
  o.run.config_path = args.positional()[0];
  o.run.run_dir = args.get("run-dir");
  o.run.device = args.get("device");
  o.run.dtype = args.get("dtype");
  o.methods = split_methods(args.get("methods"));
  if (!args.get("seeds").empty()) o.seeds = rlhf::pipelines::parse_seeds(args.get("seeds"));
  const std::string dir = rlhf::pipelines::run_compare(o);
  std::printf("compare finished: %s/compare.json    %s/compare.html\n", dir.c_str(), dir.c_str());
  return 0;
}

rlhf::cli::Register reg(
    {"pipeline run",
     "run the staged pipeline (tokenizer, sft, sample, annotate, reward, ppo, report)",
     "FILE.pbtxt [--run-dir DIR] [--from STAGE] [--only STAGE] [--force] [--device D] [--dtype T] "
     "[--stop-timeout S]",
     {{"run-dir", "run folder (default runs/<name>)"},
      {"from", "rerun this stage and every stage after it"},
      {"only", "run only this stage (its inputs must be complete)"},
      {"force", "rerun stages even when their inputs did not change", "", true},
      {"device", "every stage's device: cpu | cuda | cuda:N (overrides the config's)"},
      {"dtype", "every stage's dtype: fp32 | bf16 (overrides the config's)"},
      {"stop-timeout",
       "seconds a stage or server child may take to end after SIGTERM / SIGINT (passed on to it) "
       "before it is killed",
       "10"}},
     run_pipeline_cmd});

rlhf::cli::Register sweep_reg(
    {"pipeline sweep",
     "run the pipeline once per seed into DIR/seed-N/ (resumable), then DIR/sweep.json and "
     "DIR/sweep.html (mean, min and max of every summary figure; all seeds' curves on one chart)",
     "FILE.pbtxt --seeds 0-4 [--run-dir DIR] [--device D] [--dtype T]",
     {{"seeds", "seeds: a range 0-4, a list 0,2,7, or both (0-2,9)", "0-4"},
      {"run-dir", "sweep folder (default runs/<name>-sweep)"},
      {"device", "every stage's device: cpu | cuda | cuda:N (overrides the config's)"},
      {"dtype", "every stage's dtype: fp32 | bf16 (overrides the config's)"}},
     run_sweep_cmd});

rlhf::cli::Register compare_reg(
    {"pipeline compare",
     "train PPO, GRPO, Dr. GRPO, RLOO, REINFORCE++-baseline and DPO from the run's SFT student "
     "(the stages through reward are run or reused) into DIR/compare/<method>/seed-N/ "
     "(resumable), each measured by the gold teacher; then DIR/compare.json and DIR/compare.html",
     "FILE.pbtxt [--run-dir DIR] [--methods ppo,grpo,...] [--seeds 0-2] [--device D] [--dtype T]",
     {{"run-dir", "run folder (default runs/<name>)"},
      {"methods",
       "comma-separated: ppo, grpo, dr_grpo, rloo, reinforce_baseline, dpo "
       "(default: the config's compare.methods, else all six)"},
      {"seeds", "training seeds: a range 0-2, a list 0,2,7, or both (default 0)"},
      {"device", "every stage's device: cpu | cuda | cuda:N (overrides the config's)"},
      {"dtype", "every stage's dtype: fp32 | bf16 (overrides the config's)"}},
     run_compare_cmd});

}  // namespace
