// `rlhf pipeline run FILE.pbtxt [--run-dir DIR] [--from STAGE] [--only STAGE] [--force]` and
// `rlhf pipeline sweep FILE.pbtxt --seeds 0-4 [--run-dir DIR]`.
#include <cstdio>

#include "common/error.h"
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

}  // namespace
