// Interrupted by SIGKILL and rerun equals the uninterrupted run, bit for bit on CPU: the tiny
// pipeline is killed (the whole process group: the pipeline, its stage child and the annotation
// server and simulated annotators) once inside every stage, rerun after each kill, and its outputs
// are compared with those of a straight run of the same config. This exercises the one resume
// rule (policy/training/training.h) of the sft, reward and ppo trainers through their commands, and
// the pipeline's own rerun of an interrupted stage.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "common/files.h"
#include "common/process.h"
#include "tests/test_support.h"

namespace {

using rlhf::testing::rlhf_binary;
using rlhf::testing::run_command;

// Checkpoints often (sft every 5 steps, reward every 2, ppo every iteration) so every kill lands
// between two of them.
const char* kConfig = R"(
name: "kill"
seed: 5
quickstart { sft_examples: 400 tokenizer_problems: 300 heldout_problems: 24 sample_prompts: 24 ppo_prompts: 64 }
tokenizer { vocab_size: 384 }
sft { model { dim: 32 n_layers: 1 n_heads: 2 n_kv_heads: 2 max_seq_len: 64 } seq_len: 64 steps: 40 batch_size: 16 optimizer { lr: 3e-3 } eval_every: 20 save_every: 5 threads: 1 }
sample { answers_per_prompt: 3 max_new_tokens: 10 batch_size: 32 }
annotate { teacher: "arithmetic" annotators: 2 }
reward { max_prompt_tokens: 46 max_answer_tokens: 16 steps: 12 batch_pairs: 16 eval_every: 4 save_every: 2 threads: 1 }
ppo { iterations: 4 batch_size: 8 minibatch_size: 4 ppo_epochs: 1 max_new_tokens: 10 checkpoint_every: 1 }
)";

// Starts `rlhf pipeline run` in its own process group, waits until `ready()` holds, then SIGKILLs
// the group. Returns true when the kill hit a running pipeline (false: it finished first).
bool run_and_kill_when(const std::string& config, const std::string& run_dir,
                       const std::function<bool()>& ready) {
  rlhf::process::Options o;
  o.argv = {rlhf_binary(), "pipeline", "run", config, "--run-dir", run_dir};
  o.stdout_redirect = rlhf::process::Redirect::null();
  o.stderr_redirect = rlhf::process::Redirect::null();
  o.own_process_group = true;
  rlhf::process::Child pipeline = rlhf::process::Child::start(o);
  while (true) {
    if (!pipeline.running()) return false;  // finished before the trigger
    if (ready()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  pipeline.signal(SIGKILL);  // the whole group
  const rlhf::process::ExitStatus status = pipeline.wait();
  // Let the group's other members (stage child, server, annotators) go too.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  return status.signal() == SIGKILL;
}

bool exists(const std::string& p) { return std::filesystem::exists(p); }

// The newest checkpoint named by <dir>/latest is past the first one.
bool latest_past_first(const std::string& pointer, const std::string& first) {
  if (!exists(pointer)) return false;
  std::string name = rlhf::read_file(pointer);
  return name.rfind(first, 0) != 0;
}

TEST(KillResume, EveryStageKilledOnceEqualsTheStraightRun) {
  rlhf::testing::TempDir dir("killresume");
  const std::string config = dir / "p.pbtxt";
  rlhf::write_file_atomic(config, kConfig);
  const std::string straight = dir / "straight", killed = dir / "killed";
  std::string out;
  ASSERT_EQ(run_command(rlhf_binary() + " pipeline run " + config + " --run-dir " + straight, &out),
            0)
      << out;

  struct Kill {
    const char* stage;
    std::function<bool()> ready;
  };
  const std::vector<Kill> kills = {
      {"tokenizer", [&] { return exists(killed + "/data/sft.jsonl"); }},
      {"sft", [&] { return latest_past_first(killed + "/sft/state/latest", "step-00000005"); }},
      {"sample", [&] { return exists(killed + "/sample"); }},
      {"annotate", [&] { return exists(killed + "/annotate/annotate.sock"); }},
      {"reward",
       [&] { return latest_past_first(killed + "/reward/state/latest", "step-00000002"); }},
      {"ppo", [&] { return latest_past_first(killed + "/ppo/checkpoints/latest", "iter-0000"); }},
  };
  for (const auto& k : kills)
    EXPECT_TRUE(run_and_kill_when(config, killed, k.ready))
        << "the run ended before the kill in " << k.stage;
  ASSERT_EQ(run_command(rlhf_binary() + " pipeline run " + config + " --run-dir " + killed, &out),
            0)
      << out;

  for (const char* file : {"sft/model/model.safetensors", "sample/tasks.jsonl",
                           "reward/model/model.safetensors", "ppo/model/model.safetensors"})
    EXPECT_EQ(rlhf::sha256_file(killed + "/" + file), rlhf::sha256_file(straight + "/" + file))
        << file;
  auto a = nlohmann::json::parse(rlhf::read_file(straight + "/summary.json"));
  auto b = nlohmann::json::parse(rlhf::read_file(killed + "/summary.json"));
  for (const char* key :
       {"sft_gold_accuracy", "reward_gold_agreement", "ppo_gold_accuracy", "ppo_final_kl"})
    EXPECT_EQ(a[key], b[key]) << key;
}

// Every descendant of `pid` now (children, their children, ...), from /proc.
std::vector<pid_t> descendants(pid_t pid) {
  std::vector<pid_t> all;
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  for (pid_t c; in >> c;) {
    all.push_back(c);
    for (pid_t d : descendants(c)) all.push_back(d);
  }
  return all;
}

// The pids of `pids` still alive after waiting up to `seconds` for them to go.
std::vector<pid_t> survivors(const std::vector<pid_t>& pids, double seconds) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int>(seconds * 1e3));
  std::vector<pid_t> alive;
  do {
    alive.clear();
    for (pid_t p : pids)
      if (::kill(p, 0) == 0) alive.push_back(p);
    if (alive.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  } while (std::chrono::steady_clock::now() < deadline);
  return alive;
}

// A scheduler stops a job with SIGTERM to the pipeline alone (not its process group): during SFT
// on 2 ranks it is passed on to `rlhf launch` and so to the ranks; the pipeline exits 143 once
// they ended (none is left training, orphaned), and a rerun resumes SFT and completes.
TEST(KillResume, SigtermReachesEveryChildAndARerunResumes) {
  rlhf::testing::TempDir dir("sigterm");
  const std::string config = dir / "p.pbtxt", run = dir / "run", log = dir / "stopped.log";
  rlhf::write_file_atomic(config, std::string(kConfig) + "processes { sft: 2 }\n");
  rlhf::process::Options o;
  o.argv = {rlhf_binary(), "pipeline", "run", config, "--run-dir", run, "--stop-timeout", "20"};
  o.stdout_redirect = rlhf::process::Redirect::file(log);
  o.stderr_redirect = rlhf::process::Redirect::to_stdout();
  o.own_process_group = true;  // the destructor's SIGKILL cleans up after a failure
  rlhf::process::Child pipeline = rlhf::process::Child::start(o);
  while (pipeline.running() && !latest_past_first(run + "/sft/state/latest", "step-00000005"))
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_TRUE(pipeline.running()) << rlhf::read_file(log);
  const std::vector<pid_t> children = descendants(pipeline.pid());
  ASSERT_GE(children.size(), 3u) << "expected rlhf launch and two ranks";
  ASSERT_EQ(::kill(pipeline.pid(), SIGTERM), 0);
  const auto status = pipeline.wait_for(60);
  ASSERT_TRUE(status.has_value()) << "the pipeline still runs 60 s after SIGTERM";
  // The pipeline waited for them: gone by now (before the fix they trained on, orphaned).
  const std::vector<pid_t> left = survivors(children, 0.5);
  for (pid_t p : left) ::kill(p, SIGKILL);
  EXPECT_EQ(left, std::vector<pid_t>{}) << rlhf::read_file(log);
  EXPECT_EQ(status->code(), 128 + SIGTERM) << status->describe() << "\n" << rlhf::read_file(log);
  EXPECT_NE(rlhf::read_file(log).find("stopped by SIGTERM"), std::string::npos)
      << rlhf::read_file(log);
  EXPECT_FALSE(exists(run + "/sft/model/model.safetensors"));
  std::string out;
  ASSERT_EQ(run_command(rlhf_binary() + " pipeline run " + config + " --run-dir " + run, &out), 0)
      << out;
  EXPECT_NE(out.find("resuming from"), std::string::npos) << out;
  EXPECT_TRUE(exists(run + "/ppo/model/model.safetensors"));
}

}  // namespace
