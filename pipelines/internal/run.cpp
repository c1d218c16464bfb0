#include "pipelines/internal/run.h"

#include <chrono>
#include <filesystem>

#include "common/error.h"
#include "common/files.h"
#include "common/launch.h"
#include "common/manifest.h"
#include "common/process.h"
#include "common/text_config.h"
#include "pipelines/internal/subprocess.h"
#include "pipelines/pipeline_config.h"
#include "policy/training/sft_config.h"

namespace rlhf::pipelines {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The command's --device / --dtype over the config's, then the pipeline-wide values (when set)
// into every stage section that computes.
void apply_device_and_dtype(proto::PipelineConfig& c, const RunOptions& o) {
  if (!o.device.empty()) c.set_device(o.device);
  if (!o.dtype.empty()) c.set_dtype(o.dtype);
  policy::validate_device_and_dtype(c.has_device() ? c.device() : "cpu",
                                    c.has_dtype() ? c.dtype() : "fp32",
                                    ConfigErrors(c, "pipeline run --device/--dtype"));
  if (c.has_device()) {
    c.mutable_sft()->set_device(c.device());
    c.mutable_sample()->set_device(c.device());
    c.mutable_reward()->set_device(c.device());
    c.mutable_ppo()->set_device(c.device());
  }
  if (c.has_dtype()) {
    c.mutable_sft()->set_dtype(c.dtype());
    c.mutable_sample()->set_dtype(c.dtype());
    c.mutable_reward()->set_dtype(c.dtype());
    c.mutable_ppo()->set_dtype(c.dtype());
  }
}

}  // namespace

void Run::save_state() const { write_file_atomic(path("pipeline_state.json"), state.dump(2)); }

Run open_run(const RunOptions& options) {
  Run run;
  run.config = load_pipeline_config(options.config_path);
  apply_device_and_dtype(run.config, options);
  if (options.seed) run.config.set_seed(*options.seed);
  run.config_path = options.config_path;
  run.dir = options.run_dir.empty() ? "runs/" + run.config.name() : options.run_dir;
  run.exe = process::self_executable();
  make_dirs(run.dir);
  run.dir = fs::canonical(run.dir).string();
  write_file_atomic(run.path("pipeline.pbtxt"), to_text_format(run.config));
  if (file_exists(run.path("pipeline_state.json")))
    run.state = json::parse(read_file(run.path("pipeline_state.json")), nullptr, false);
  if (!run.state.is_object()) run.state = json::object();
  if (!run.state.contains("stages")) run.state["stages"] = json::object();
  return run;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string hash_inputs(const std::string& config_text, const std::vector<std::string>& files,
                        const std::string& base) {
  std::string all = config_text;
  const std::string prefix = base.empty() ? "" : base + "/";
  for (const auto& f : files) {
    const bool inside = !prefix.empty() && f.compare(0, prefix.size(), prefix) == 0;
    all += "\n" + (inside ? "<run>/" + f.substr(prefix.size()) : f) + " ";
    all += file_exists(f) && fs::is_regular_file(f) ? sha256_file(f) : "-";
  }
  return sha256_hex(all);
}

// A trainer command line, under `rlhf launch` when the stage runs on more than one process
// (the rendezvous port is a free loopback port, so concurrent pipelines do not collide).
std::vector<std::string> trainer_argv(const std::string& exe, int processes,
                                      std::vector<std::string> command) {
  if (processes <= 1) {
    command.insert(command.begin(), exe);
    return command;
  }
  std::vector<std::string> argv = {exe,
                                   "launch",
                                   "--nproc-per-node",
                                   std::to_string(processes),
                                   "--master-port",
                                   std::to_string(launch::free_loopback_port()),
                                   "--",
                                   "rlhf"};
  argv.insert(argv.end(), command.begin(), command.end());
  return argv;
}

void run_or_throw(const std::vector<std::string>& argv, const std::string& stage) {
  int code = run_child(argv);
  if (code != 0)
    throw Error("stage '" + stage + "' failed (exit " + std::to_string(code) +
                "): " + process::join_command(argv));
}

proto::PpoConfig wire_ppo_config(const Run& run, proto::PpoConfig cfg, uint64_t seed_offset,
                                 const std::string& out_dir) {
  cfg.set_policy(run.path("sft/model"));
  cfg.set_reward_model(run.path("reward"));
  if (cfg.value_model() == "reward") cfg.set_value_model(run.path("reward/model"));
  cfg.set_prompts(run.path("data/ppo_prompts.jsonl"));
  cfg.set_tokenizer(run.tokenizer_model());
  cfg.set_seed(run.config.seed() + 1 + seed_offset);
  cfg.set_out_dir(out_dir);
  return cfg;
}

std::vector<quickstart::Problem> heldout_problems(const Run& run) {
  return quickstart::generate_problems(
      quickstart::Split::kHeldOut, run.config.quickstart().heldout_problems(),
      run.config.seed() + 1000, run.config.quickstart().max_operand());
}

}  // namespace rlhf::pipelines
