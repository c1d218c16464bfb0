// run_sweep (pipelines/pipeline.h): the pipeline once per seed, then the sweep report.
#include <cstdio>

#include "common/error.h"
#include "common/files.h"
#include "pipelines/pipeline.h"
#include "pipelines/pipeline_config.h"
#include "pipelines/sweep_report.h"

namespace rlhf::pipelines {

std::string run_sweep(const RunOptions& base, const std::vector<uint64_t>& seeds) {
  if (seeds.empty()) throw UsageError("pipeline sweep: no seeds given");
  if (!base.from_stage.empty() || !base.only_stage.empty())
    throw UsageError("pipeline sweep: --from and --only apply to one run (use pipeline run)");
  // The config is read (and refused, naming file and field) before any folder is made.
  const std::string name = load_pipeline_config(base.config_path).name();
  const std::string dir = base.run_dir.empty() ? "runs/" + name + "-sweep" : base.run_dir;
  make_dirs(dir);
  for (size_t i = 0; i < seeds.size(); ++i) {
    RunOptions o = base;
    o.seed = seeds[i];
    o.run_dir = seed_run_dir(dir, seeds[i]);
    std::printf("== sweep: seed %llu (%zu of %zu) in %s\n",
                static_cast<unsigned long long>(seeds[i]), i + 1, seeds.size(), o.run_dir.c_str());
    std::fflush(stdout);
    try {
      run_pipeline(o);
    } catch (...) {
      rethrow_with_context("pipeline sweep, seed " + std::to_string(seeds[i]));
    }
    write_sweep_report(dir, seeds);
  }
  return dir;
}

}  // namespace rlhf::pipelines
