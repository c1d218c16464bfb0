// The staged pipeline: tokenizer -> sft -> sample -> annotate -> reward -> ppo -> report.
//
// Each stage writes its output folder and manifest (manifest.pb + manifest.json) into the run
// folder. A rerun skips a stage whose manifest is complete and whose fingerprint (the stage's
// resolved config plus the content hashes of its inputs, recorded in pipeline_state.json) is
// unchanged; an interrupted stage is rerun with the same command, and the stages that checkpoint
// (sft, reward, ppo) resume from their last checkpoint. Inputs are checked across stages: a
// policy and a reward model must share the tokenizer (content hash) and vocabulary size.
//
// Training stages run as child processes of the same executable (`rlhf sft ...`), so their
// memory is returned when they end (and a SIGTERM or SIGINT to the pipeline is passed on to them,
// see RunOptions::stop_timeout_s); the annotate stage starts the annotation server on a Unix
// socket in the run folder and runs the simulated teacher over it (or waits for people).
//
// Errors: run_pipeline throws UsageError for an unknown stage name, rlhf::Error from loading the
// config (pipeline_config.h), and rlhf::Error prefixed "pipeline stage '<name>': " for anything a
// stage throws or a child process that fails (its exit status and log). Thread safety: one
// run_pipeline per run folder; it starts child processes, waits for them, and prints progress to
// stdout and stderr.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "pipelines/pipeline_config.h"
#include "proto/pipeline.pb.h"

namespace rlhf::pipelines {

// Stage names in execution order.
const std::vector<std::string>& stage_names();

struct RunOptions {
  std::string config_path;  // PipelineConfig in text format
  std::string run_dir;      // "" = runs/<name>
  std::string from_stage;   // "" = first stage; rerun this stage and all after it
  std::string only_stage;   // "" = all; run just this stage (its inputs must be complete)
  std::string last_stage;   // "" = through the report; else stop after this stage (no summary)
  bool force = false;       // rerun stages even when their fingerprint is unchanged
  std::string device;       // "" = the config's; else PipelineConfig.device (every stage's device)
  std::string dtype;        // "" = the config's; else PipelineConfig.dtype (every stage's dtype)
  std::optional<uint64_t>
      seed;  // unset = the config's; else PipelineConfig.seed (`pipeline sweep`)
  // After SIGTERM or SIGINT (passed on to the stage and server children): how long each child may
  // take to end before it is killed (SIGKILL). Then run_pipeline throws rlhf::Error "stopped by
  // SIGTERM" (exit code 128 + signal); a rerun resumes the interrupted stage.
  double stop_timeout_s = 10;
};

// Runs the pipeline; returns the run folder. Throws rlhf::Error naming the stage on failure.
std::string run_pipeline(const RunOptions& options);

// `rlhf pipeline sweep`: the pipeline once per seed, seed N into <sweep_dir>/seed-N/ (RunOptions
// with that seed and run folder; run_pipeline's resume rule makes the sweep resumable: a finished
// seed's stages are all skipped, an interrupted one resumes), then sweep.json and sweep.html
// (pipelines/sweep_report.h) after each seed, so they show the sweep so far. `base` gives the
// config and the device / dtype overrides; its run_dir is the sweep folder ("" =
// runs/<name>-sweep). Returns the sweep folder. Throws like run_pipeline, naming the seed.
std::string run_sweep(const RunOptions& base, const std::vector<uint64_t>& seeds);

}  // namespace rlhf::pipelines
