// The run folder of the staged pipeline, shared by `pipeline run` (pipeline.cpp) and `pipeline
// compare` (compare.cpp): the resolved config, the run's paths, its pipeline_state.json, and the
// helpers that start trainer children and hash a stage's inputs.
//
// Errors: open_run throws what load_pipeline_config throws (rlhf::Error naming file and field) and
// rlhf::Error when the folder cannot be made; run_or_throw throws rlhf::Error naming the stage,
// the exit status and the command. Thread safety: a Run is used from the pipeline's main thread.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "pipelines/pipeline.h"
#include "pipelines/quickstart_task.h"
#include "proto/pipeline.pb.h"

namespace rlhf::pipelines {

// Everything a stage needs to know about the run.
struct Run {
  proto::PipelineConfig config;
  std::string config_path;  // for error messages
  std::string dir;          // absolute
  std::string exe;
  nlohmann::json state;  // pipeline_state.json: {"stages": {name: {"fingerprint": ..., ...}}}

  std::string path(const std::string& rel) const { return dir + "/" + rel; }
  std::string tokenizer_model() const { return path("tokenizer/tokenizer.model"); }
  void save_state() const;
};

// Reads the config (with the options' device, dtype and seed over it), makes the run folder,
// writes its pipeline.pbtxt and reads its pipeline_state.json.
Run open_run(const RunOptions& options);

// Monotonic seconds.
double now_s();

// A stage's fingerprint: the config text plus each file's path and content hash ("-" if absent).
// Paths inside `base` (the run folder) count relative to it, so a run folder that is moved or
// copied keeps its fingerprints; "" = absolute paths (fingerprints written before 2026-12-07).
std::string hash_inputs(const std::string& config_text, const std::vector<std::string>& files,
                        const std::string& base = "");

// A trainer command line, under `rlhf launch` when the stage runs on more than one process
// (the rendezvous port is a free loopback port, so concurrent pipelines do not collide).
std::vector<std::string> trainer_argv(const std::string& exe, int processes,
                                      std::vector<std::string> command);

// Runs the child and waits; throws naming `stage` when it fails.
void run_or_throw(const std::vector<std::string>& argv, const std::string& stage);

// `cfg` (the ppo section, or a compared method's variant of it) wired to the run: the SFT policy,
// the reward model (also the critic's start with `value_model: "reward"`: InstructGPT; any other
// non-empty value is a checkpoint folder used as given), the PPO prompts, the tokenizer, the
// seed (the pipeline's seed + 1 + seed_offset) and the output folder.
proto::PpoConfig wire_ppo_config(const Run& run, proto::PpoConfig cfg, uint64_t seed_offset,
                                 const std::string& out_dir);

// The quickstart's held-out problems (gold accuracy is measured on these).
std::vector<quickstart::Problem> heldout_problems(const Run& run);

}  // namespace rlhf::pipelines
