// Data parallelism through the rlhf binary (`rlhf launch`, c10d Gloo over loopback): N ranks x
// B/N rows equal 1 rank x B rows for SFT, reward and PPO; an interrupted 2-rank run resumes to the
// uninterrupted result; a killed rank stops every rank quickly and is named; two "nodes" (two
// launchers, one rank each) train as one 2-rank job.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/files.h"
#include "common/process.h"
#include "tests/test_support.h"

namespace {

using rlhf::testing::rlhf_binary;
using rlhf::testing::run_command;
using rlhf::testing::TempDir;
using json = nlohmann::json;

const char* kNames[] = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight"};

// Shared inputs: a tokenizer, SFT data, preference pairs, prompts (made once per process).
struct Fixture {
  TempDir dir{"dp"};
  std::string tok, sft, pairs, prompts;
  Fixture() {
    sft = dir / "sft.jsonl";
    pairs = dir / "pairs.jsonl";
    prompts = dir / "prompts.jsonl";
    std::ofstream s(sft), p(pairs), q(prompts);
    uint32_t x = 7;
    for (int i = 0; i < 240; ++i) {
      x = x * 1664525u + 1013904223u;
      const int a = (x >> 8) % 4, b = (x >> 16) % 4, w = (a + b + 1 + (x >> 24) % 3) % 9;
      const std::string prompt = std::string("what is ") + kNames[a] + " plus " + kNames[b] + "?";
      const std::string good =
          std::string(kNames[a]) + " plus " + kNames[b] + " is " + kNames[a + b] + ".";
      const std::string bad =
          std::string(kNames[a]) + " plus " + kNames[b] + " is " + kNames[w] + ".";
      s << json{{"prompt", prompt}, {"response", good}}.dump() << "\n";
      p << json{{"prompt", prompt}, {"chosen", good}, {"rejected", bad}}.dump() << "\n";
      if (i < 32) q << json{{"prompt", prompt}}.dump() << "\n";
    }
    s.close();
    std::string out;
    EXPECT_EQ(run_command(rlhf_binary() + " tokenizer train --input " + sft +
                              " --vocab-size 320 --out " + (dir / "tok"),
                          &out),
              0)
        << out;
    tok = dir / "tok/tokenizer.model";
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

std::string write_config(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
  return path;
}

std::string sft_config(const Fixture& f, int steps) {
  return "train_file: \"" + f.sft + "\"\ntokenizer: \"" + f.tok +
         "\"\nmodel { dim: 32 n_layers: 2 n_heads: 2 max_seq_len: 48 }\n"
         "steps: " +
         std::to_string(steps) +
         " batch_size: 8 grad_accum: 2 optimizer { lr: 3e-3 } eval_every: 10 save_every: 5 seed: "
         "3\n";
}

// `rlhf launch --nproc-per-node n -- rlhf <args>` (n = 0: plain `rlhf <args>`); returns the exit
// code, output in *out.
int launch(int n, const std::string& args, std::string* out, const std::string& extra = "") {
  const std::string cmd = n == 0 ? rlhf_binary() + " " + args
                                 : "RLHF_DIST_TIMEOUT_S=60 " + rlhf_binary() +
                                       " launch --nproc-per-node " + std::to_string(n) +
                                       " --master-port " + std::to_string(29700 + getpid() % 200) +
                                       " " + extra + " -- rlhf " + args;
  return run_command(cmd, out);
}

std::vector<json> metrics(const std::string& dir) {
  std::vector<json> rows;
  std::ifstream in(dir + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) rows.push_back(json::parse(line));
  return rows;
}

// Relative agreement, with an absolute floor for values near zero (rel * floor).
void expect_close(double a, double b, const std::string& what, double rel = 1e-4,
                  double floor = 1e-3) {
  EXPECT_LE(std::fabs(a - b), rel * std::max(floor, std::fabs(a)))
      << what << ": " << a << " vs " << b;
}

// Every key of `keys` in every row of both logs agrees.
void expect_same_curves(const std::string& one, const std::string& two,
                        const std::vector<std::string>& keys) {
  auto a = metrics(one), b = metrics(two);
  ASSERT_EQ(a.size(), b.size());
  ASSERT_FALSE(a.empty());
  int compared = 0;
  for (size_t i = 0; i < a.size(); ++i)
    for (const auto& k : keys)
      if (a[i].contains(k)) {
        ASSERT_TRUE(b[i].contains(k)) << k << " row " << i;
        expect_close(a[i][k].get<double>(), b[i][k].get<double>(),
                     k + " at step " + std::to_string(a[i]["step"].get<int64_t>()));
        ++compared;
      }
  EXPECT_GT(compared, 10);
}

TEST(DataParallel, SftTwoRanksEqualOneRank) {
  auto& f = fixture();
  TempDir d("dp_sft");
  const auto cfg = write_config(d / "sft.pbtxt", sft_config(f, 20));
  std::string out;
  ASSERT_EQ(launch(0, "sft --config " + cfg + " --out " + (d / "one"), &out), 0) << out;
  ASSERT_EQ(launch(2, "sft --config " + cfg + " --out " + (d / "two"), &out), 0) << out;
  expect_same_curves(d / "one", d / "two", {"loss", "grad_norm", "eval_loss"});
  EXPECT_TRUE(std::filesystem::exists(d / "two/manifest.pb"));
  EXPECT_NE(out.find("[rank 0] sft: "), std::string::npos) << out;  // rank 0 reports
  EXPECT_EQ(out.find("[rank 1] sft: "), std::string::npos) << out;  // the others stay quiet
}

TEST(DataParallel, RewardTwoRanksEqualOneRank) {
  auto& f = fixture();
  TempDir d("dp_reward");
  const auto cfg =
      write_config(d / "reward.pbtxt",
                   "format: \"pairs\"\ntrain_file: \"" + f.pairs + "\"\ntokenizer: \"" + f.tok +
                       "\"\nmodel { dim: 32 n_layers: 2 n_heads: 2 }\nmax_prompt_tokens: 16 "
                       "max_answer_tokens: 16\nsteps: 20 batch_pairs: 16 optimizer { lr: 1e-3 } "
                       "eval_every: 10\n");
  std::string out;
  ASSERT_EQ(launch(0, "reward train --config " + cfg + " --out " + (d / "one"), &out), 0) << out;
  ASSERT_EQ(launch(2, "reward train --config " + cfg + " --out " + (d / "two"), &out), 0) << out;
  expect_same_curves(
      d / "one", d / "two",
      {"train/loss", "train/accuracy", "train/grad_norm", "eval/accuracy", "eval/loss"});
}

// `n` lines of distinct prompts (every pair its own ranking group), written as SFT examples or as
// preference pairs.
std::string distinct_examples(const std::string& path, int n, bool pairs) {
  std::ofstream out(path);
  for (int i = 0; i < n; ++i) {
    const int a = i % 5, b = (i / 5) % 4;
    const std::string prompt = std::string(kNames[i % 9]) + " asks: what is " + kNames[a] +
                               " plus " + kNames[b] + " " + std::to_string(i) + "?";
    const std::string good =
        std::string(kNames[a]) + " plus " + kNames[b] + " is " + kNames[a + b] + ".";
    const std::string bad =
        std::string(kNames[a]) + " plus " + kNames[b] + " is " + kNames[(a + b + 1) % 9] + ".";
    out << (pairs ? json{{"prompt", prompt}, {"chosen", good}, {"rejected", bad}}
                  : json{{"prompt", prompt}, {"response", good}})
               .dump()
        << "\n";
  }
  return path;
}

// The last batch of an epoch (PPO: of an iteration's minibatches) holds one row and the held-out
// set one example, so rank 1's share of them is empty: it still joins every collective, adding
// nothing, and the run equals one rank, for reward, SFT and PPO.
TEST(DataParallel, SharesOfZeroRowsWorkInEveryTrainer) {
  auto& f = fixture();
  TempDir d("dp_zero");
  // Reward: 41 pairs in batches of 4 (the last of each epoch has 1); 12 steps cross an epoch.
  const auto reward_cfg = write_config(
      d / "reward.pbtxt",
      "format: \"pairs\"\ntrain_file: \"" + distinct_examples(d / "pairs.jsonl", 41, true) +
          "\"\neval_file: \"" + distinct_examples(d / "pairs_eval.jsonl", 1, true) +
          "\"\ntokenizer: \"" + f.tok +
          "\"\nmodel { dim: 32 n_layers: 2 n_heads: 2 }\nmax_prompt_tokens: 16 "
          "max_answer_tokens: 16\nsteps: 12 batch_pairs: 4 optimizer { lr: 1e-3 } eval_every: "
          "5\n");
  std::string out;
  ASSERT_EQ(launch(0, "reward train --config " + reward_cfg + " --out " + (d / "rw1"), &out), 0)
      << out;
  ASSERT_EQ(launch(2, "reward train --config " + reward_cfg + " --out " + (d / "rw2"), &out), 0)
      << out;
  expect_same_curves(d / "rw1", d / "rw2",
                     {"train/loss", "train/accuracy", "train/grad_norm", "eval/loss"});
  // SFT: 17 rows in batches of 4 (the last of each pass has 1); 6 steps cross a pass.
  const auto sft_cfg = write_config(
      d / "sft.pbtxt",
      "train_file: \"" + distinct_examples(d / "sft.jsonl", 17, false) + "\"\neval_file: \"" +
          distinct_examples(d / "sft_eval.jsonl", 1, false) + "\"\ntokenizer: \"" + f.tok +
          "\"\nmodel { dim: 32 n_layers: 2 n_heads: 2 max_seq_len: 48 }\n"
          "steps: 12 batch_size: 4 optimizer { lr: 3e-3 } eval_every: 3 seed: 3\n");
  ASSERT_EQ(launch(0, "sft --config " + sft_cfg + " --out " + (d / "sft1"), &out), 0) << out;
  ASSERT_EQ(launch(2, "sft --config " + sft_cfg + " --out " + (d / "sft2"), &out), 0) << out;
  expect_same_curves(d / "sft1", d / "sft2", {"loss", "grad_norm", "eval_loss"});
  // PPO: minibatches of 2 from batches of 3 (the last holds 1 row), 2 PPO epochs.
  const auto ppo_cfg = write_config(
      d / "ppo.pbtxt", "policy: \"" + (d / "sft1/model") + "\"\nreward_model: \"" + (d / "rw1") +
                           "\"\nvalue_model: \"" + (d / "rw1/model") + "\"\nprompts: \"" +
                           f.prompts + "\"\ntokenizer: \"" + f.tok +
                           "\"\niterations: 2 batch_size: 3 minibatch_size: 2 ppo_epochs: 2\n"
                           "max_new_tokens: 6\n");
  ASSERT_EQ(launch(0, "ppo --config " + ppo_cfg + " --out " + (d / "ppo1"), &out), 0) << out;
  ASSERT_EQ(launch(2, "ppo --config " + ppo_cfg + " --out " + (d / "ppo2"), &out), 0) << out;
  auto a = metrics(d / "ppo1"), b = metrics(d / "ppo2");
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  for (const char* k : {"score/mean", "loss/policy", "loss/value", "advantages/mean"})
    for (size_t i = 0; i < 2; ++i)
      expect_close(a[i][k].get<double>(), b[i][k].get<double>(),
                   std::string("ppo ") + k + " iteration " + std::to_string(i + 1));
}

TEST(DataParallel, PpoFirstIterationTwoRanksEqualOneRank) {
  auto& f = fixture();
  TempDir d("dp_ppo");
  std::string out;
  ASSERT_EQ(launch(0,
                   "sft --config " + write_config(d / "sft.pbtxt", sft_config(f, 10)) + " --out " +
                       (d / "sft"),
                   &out),
            0)
      << out;
  ASSERT_EQ(launch(0,
                   "reward train --config " +
                       write_config(d / "rw.pbtxt",
                                    "format: \"pairs\"\ntrain_file: \"" + f.pairs +
                                        "\"\ninit_from: \"" + (d / "sft/model") +
                                        "\"\nmax_prompt_tokens: 16 max_answer_tokens: 16\n"
                                        "steps: 5 batch_pairs: 16\n") +
                       " --out " + (d / "rw"),
                   &out),
            0)
      << out;
  const auto cfg = write_config(
      d / "ppo.pbtxt", "policy: \"" + (d / "sft/model") + "\"\nreward_model: \"" + (d / "rw") +
                           "\"\nvalue_model: \"" + (d / "rw/model") + "\"\nprompts: \"" +
                           f.prompts + "\"\ntokenizer: \"" + f.tok +
                           "\"\niterations: 2 batch_size: 12 minibatch_size: 5 ppo_epochs: 2\n"
                           "max_new_tokens: 8 checkpoint_every: 1 keep_checkpoints: 5\n"
                           "normalize_scores: true whiten_rewards: true adaptive_kl: true\n");
  ASSERT_EQ(launch(0, "ppo --config " + cfg + " --out " + (d / "one"), &out), 0) << out;
  ASSERT_EQ(launch(2, "ppo --config " + cfg + " --out " + (d / "two"), &out), 0) << out;
  auto a = metrics(d / "one"), b = metrics(d / "two");
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  for (const char* k : {"score/mean", "kl/mean", "loss/policy", "loss/value", "kl/coef_next",
                        "advantages/mean", "response/length_mean"})
    for (size_t i = 0; i < 2; ++i)
      // kl/mean is a difference of per-sequence log-prob sums of a few nats each, near 0 here
      // (1e-4): float32 rounding of those sums is ~1e-6, so its floor is absolute 1e-5.
      expect_close(a[i][k].get<double>(), b[i][k].get<double>(),
                   std::string(k) + " iteration " + std::to_string(i + 1), 1e-4,
                   std::string(k) == "kl/mean" ? 0.1 : 1e-3);
  // One merged rollout file per iteration; replaying iteration 2's update in one process gives
  // the 2-rank run's minibatch numbers.
  ASSERT_EQ(launch(0,
                   "replay " + (d / "two/rollouts/iter-0002.pb") + " --update --run " +
                       (d / "two") + " --json",
                   &out),
            0)
      << out;
  std::vector<json> replayed, live;
  std::istringstream rs(out);
  for (std::string line; std::getline(rs, line);)
    if (!line.empty() && line[0] == '{') replayed.push_back(json::parse(line));
  std::ifstream ml(d / "two/minibatches.jsonl");
  for (std::string line; std::getline(ml, line);)
    if (json j = json::parse(line); j["iteration"] == 2) live.push_back(j);
  ASSERT_EQ(replayed.size(), live.size());
  for (size_t i = 0; i < live.size(); ++i)
    for (const char* k : {"loss/policy", "loss/value", "policy/approx_kl"})
      expect_close(live[i][k].get<double>(), replayed[i][k].get<double>(),
                   std::string("replayed ") + k, 1e-3);

  // critic "reward_base" (the critic's adapters and head on the teacher's base; only they are
  // all-reduced): 2 ranks equal 1 rank, and the 2-rank iteration 2 replays in one process.
  const auto rb = write_config(
      d / "ppo_rb.pbtxt", "policy: \"" + (d / "sft/model") + "\"\nreward_model: \"" + (d / "rw") +
                              "\"\ncritic: \"reward_base\"\nprompts: \"" + f.prompts +
                              "\"\ntokenizer: \"" + f.tok +
                              "\"\niterations: 2 batch_size: 12 minibatch_size: 5 ppo_epochs: 2\n"
                              "max_new_tokens: 8 checkpoint_every: 1 keep_checkpoints: 5\n");
  ASSERT_EQ(launch(0, "ppo --config " + rb + " --out " + (d / "rb1"), &out), 0) << out;
  ASSERT_EQ(launch(2, "ppo --config " + rb + " --out " + (d / "rb2"), &out), 0) << out;
  auto r1 = metrics(d / "rb1"), r2 = metrics(d / "rb2");
  ASSERT_EQ(r1.size(), 2u);
  ASSERT_EQ(r2.size(), 2u);
  for (const char* k : {"score/mean", "loss/policy", "loss/value", "advantages/mean"})
    for (size_t i = 0; i < 2; ++i)
      expect_close(r1[i][k].get<double>(), r2[i][k].get<double>(),
                   std::string("reward_base ") + k + " iteration " + std::to_string(i + 1), 1e-4,
                   1e-3);
  ASSERT_EQ(launch(0,
                   "replay " + (d / "rb2/rollouts/iter-0002.pb") + " --update --run " +
                       (d / "rb2") + " --json",
                   &out),
            0)
      << out;
  std::vector<json> rb_replayed, rb_live;
  std::istringstream rbs(out);
  for (std::string line; std::getline(rbs, line);)
    if (!line.empty() && line[0] == '{') rb_replayed.push_back(json::parse(line));
  std::ifstream rml(d / "rb2/minibatches.jsonl");
  for (std::string line; std::getline(rml, line);)
    if (json j = json::parse(line); j["iteration"] == 2) rb_live.push_back(j);
  ASSERT_EQ(rb_replayed.size(), rb_live.size());
  for (size_t i = 0; i < rb_live.size(); ++i)
    for (const char* k : {"loss/policy", "loss/value"})
      expect_close(rb_live[i][k].get<double>(), rb_replayed[i][k].get<double>(),
                   std::string("reward_base replayed ") + k, 1e-3);
}

// Critic-free estimators: the ranks split the batch at group boundaries (3 groups of K = 4 over 2
// ranks: 8 and 4 rows), group statistics and reinforce_baseline's whitening come from the global
// batch, and GRPO's per-sequence loss is weighted by rows: 2 ranks equal 1 rank, no critic is
// saved, and the 2-rank iteration replays (--recompute, --update) in one process.
TEST(DataParallel, CriticFreeEstimatorsTwoRanksEqualOneRank) {
  auto& f = fixture();
  TempDir d("dp_est");
  std::string out;
  ASSERT_EQ(launch(0,
                   "sft --config " + write_config(d / "sft.pbtxt", sft_config(f, 10)) + " --out " +
                       (d / "sft"),
                   &out),
            0)
      << out;
  ASSERT_EQ(launch(0,
                   "reward train --config " +
                       write_config(d / "rw.pbtxt",
                                    "format: \"pairs\"\ntrain_file: \"" + f.pairs +
                                        "\"\ninit_from: \"" + (d / "sft/model") +
                                        "\"\nmax_prompt_tokens: 16 max_answer_tokens: 16\n"
                                        "steps: 5 batch_pairs: 16\n") +
                       " --out " + (d / "rw"),
                   &out),
            0)
      << out;
  for (const std::string est : {"grpo", "reinforce_baseline"}) {
    SCOPED_TRACE(est);
    const auto cfg = write_config(
        d / (est + ".pbtxt"),
        "policy: \"" + (d / "sft/model") + "\"\nreward_model: \"" + (d / "rw") + "\"\nprompts: \"" +
            f.prompts + "\"\ntokenizer: \"" + f.tok +
            "\"\niterations: 2 batch_size: 12 minibatch_size: 5 ppo_epochs: 2\n"
            "max_new_tokens: 8 checkpoint_every: 1 keep_checkpoints: 5\n"
            "advantage_estimator: \"" +
            est + "\" samples_per_prompt: 4 kl_in_loss: " + (est == "grpo" ? "true" : "false") +
            "\n");
    ASSERT_EQ(launch(0, "ppo --config " + cfg + " --out " + (d / (est + "1")), &out), 0) << out;
    ASSERT_EQ(launch(2, "ppo --config " + cfg + " --out " + (d / (est + "2")), &out), 0) << out;
    auto a = metrics(d / (est + "1")), b = metrics(d / (est + "2"));
    ASSERT_EQ(a.size(), 2u);
    ASSERT_EQ(b.size(), 2u);
    EXPECT_FALSE(a[1].contains("loss/value"));
    EXPECT_FALSE(std::filesystem::exists(d / (est + "2/checkpoints/iter-0002/critic.pt")));
    for (const char* k : {"score/mean", "loss/policy", "advantages/mean", "response/length_mean"})
      for (size_t i = 0; i < 2; ++i)
        expect_close(a[i][k].get<double>(), b[i][k].get<double>(),
                     std::string(k) + " iteration " + std::to_string(i + 1), 1e-4, 1e-3);
    const std::string file = d / (est + "2/rollouts/iter-0002.pb");
    ASSERT_EQ(launch(0, "replay " + file + " --recompute", &out), 0) << out;
    ASSERT_EQ(
        launch(0, "replay " + file + " --update --run " + (d / (est + "2")) + " --json", &out), 0)
        << out;
    std::vector<json> replayed, live;
    std::istringstream rs(out);
    for (std::string line; std::getline(rs, line);)
      if (!line.empty() && line[0] == '{') replayed.push_back(json::parse(line));
    std::ifstream ml(d / (est + "2/minibatches.jsonl"));
    for (std::string line; std::getline(ml, line);)
      if (json j = json::parse(line); j["iteration"] == 2) live.push_back(j);
    ASSERT_EQ(replayed.size(), live.size());
    for (size_t i = 0; i < live.size(); ++i)
      for (const char* k : {"loss/policy", "policy/approx_kl"})
        expect_close(live[i][k].get<double>(), replayed[i][k].get<double>(),
                     std::string("replayed ") + k, 1e-3);
  }
}

TEST(DataParallel, InterruptedTwoRankRunResumesToTheSameModel) {
  auto& f = fixture();
  TempDir d("dp_resume");
  const auto cfg = write_config(d / "sft.pbtxt", sft_config(f, 20));
  std::string out;
  ASSERT_EQ(launch(2, "sft --config " + cfg + " --out " + (d / "straight"), &out), 0) << out;
  ASSERT_EQ(
      launch(2, "sft --config " + cfg + " --out " + (d / "resumed") + " --stop-after 12", &out), 0)
      << out;
  EXPECT_FALSE(std::filesystem::exists(d / "resumed/model/model.safetensors"));
  ASSERT_EQ(launch(2, "sft --config " + cfg + " --out " + (d / "resumed"), &out), 0) << out;
  EXPECT_NE(out.find("resuming from"), std::string::npos) << out;
  EXPECT_EQ(rlhf::read_file(d / "straight/model/model.safetensors"),
            rlhf::read_file(d / "resumed/model/model.safetensors"));
}

// The state does not depend on the world size: a 2-rank run resumed on 1 rank continues with the
// same global batches and ends where the uninterrupted 2-rank run does, up to float rounding.
TEST(DataParallel, ResumeOnAnotherWorldSizeIsResharded) {
  auto& f = fixture();
  TempDir d("dp_reshard");
  const auto cfg = write_config(d / "sft.pbtxt", sft_config(f, 20));
  std::string out;
  ASSERT_EQ(launch(2, "sft --config " + cfg + " --out " + (d / "straight"), &out), 0) << out;
  ASSERT_EQ(launch(2, "sft --config " + cfg + " --out " + (d / "moved") + " --stop-after 10", &out),
            0)
      << out;
  ASSERT_EQ(launch(0, "sft --config " + cfg + " --out " + (d / "moved"), &out), 0) << out;
  EXPECT_NE(out.find("resuming from"), std::string::npos) << out;
  const auto a = json::parse(rlhf::read_file(d / "straight/manifest.json"))["metrics"];
  const auto b = json::parse(rlhf::read_file(d / "moved/manifest.json"))["metrics"];
  for (const char* k : {"final_train_loss", "final_eval_loss", "tokens_seen"})
    expect_close(a[k].get<double>(), b[k].get<double>(), k);
}

// `rlhf` under real torchrun (Debian's python3-torch, through scripts/torchrun.py): the agent
// hosts the store (TORCHELASTIC_USE_AGENT_STORE=True), rank 0 joins it as a client, and 2 ranks
// train SFT and reward to the curves of `rlhf launch --nproc-per-node 2`. Skipped without
// python3-torch unless RLHF_REQUIRE_SHARED_DATA=1 (CI; scripts/bootstrap.sh installs it).
TEST(DataParallel, TorchrunTwoRanksEqualRlhfLaunch) {
  std::string out;
  if (run_command("/usr/bin/python3 -c 'import torch.distributed.run'", &out) != 0) {
    const char* req = std::getenv("RLHF_REQUIRE_SHARED_DATA");
    if (req && std::string(req) == "1") FAIL() << "python3-torch is missing: " << out;
    GTEST_SKIP() << "python3-torch is missing (run scripts/bootstrap.sh)";
  }
  auto& f = fixture();
  TempDir d("dp_torchrun");
  auto torchrun = [&](const std::string& args) {
    return "RLHF_DIST_TIMEOUT_S=60 /usr/bin/python3 " + std::string(RLHF_SOURCE_DIR) +
           "/scripts/torchrun.py --nproc_per_node 2 --master_port " +
           std::to_string(29500 + getpid() % 90) + " --no_python " + rlhf_binary() + " " + args;
  };
  const auto sft = write_config(d / "sft.pbtxt", sft_config(f, 10));
  ASSERT_EQ(launch(2, "sft --config " + sft + " --out " + (d / "sft_launch"), &out), 0) << out;
  ASSERT_EQ(run_command(torchrun("sft --config " + sft + " --out " + (d / "sft_torchrun")), &out),
            0)
      << out;
  expect_same_curves(d / "sft_launch", d / "sft_torchrun", {"loss", "grad_norm", "eval_loss"});
  const auto reward =
      write_config(d / "reward.pbtxt",
                   "format: \"pairs\"\ntrain_file: \"" + f.pairs + "\"\ntokenizer: \"" + f.tok +
                       "\"\nmodel { dim: 32 n_layers: 2 n_heads: 2 }\nmax_prompt_tokens: 16 "
                       "max_answer_tokens: 16\nsteps: 12 batch_pairs: 16 eval_every: 6\n");
  ASSERT_EQ(launch(2, "reward train --config " + reward + " --out " + (d / "rw_launch"), &out), 0)
      << out;
  ASSERT_EQ(
      run_command(torchrun("reward train --config " + reward + " --out " + (d / "rw_torchrun")),
                  &out),
      0)
      << out;
  expect_same_curves(d / "rw_launch", d / "rw_torchrun",
                     {"train/loss", "train/accuracy", "train/grad_norm", "eval/accuracy"});
}

// A rank that does not see rank 0's output folder (here rank R writes to out<R>) would start afresh
// while rank 0 resumes: the start check stops the job at once, naming the rank and what differs.
TEST(DataParallel, RanksStartingFromDifferentStatesAreRefused) {
  auto& f = fixture();
  TempDir d("dp_start");
  const auto cfg = write_config(d / "sft.pbtxt", sft_config(f, 20));
  std::string out;
  ASSERT_EQ(launch(2, "sft --config " + cfg + " --out " + (d / "out0") + " --stop-after 10", &out),
            0)
      << out;
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = run_command(
      "RLHF_DIST_TIMEOUT_S=60 " + rlhf_binary() + " launch --nproc-per-node 2 --master-port " +
          std::to_string(29700 + getpid() % 200) + " -- sh -c 'exec " + rlhf_binary() +
          " sft --config " + cfg + " --out " + (d / "out") + "$RANK'",
      &out);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(rc, 0) << out;
  EXPECT_LT(s, 30.0) << out;
  for (const char* want : {"sft: rank 1 does not start where rank 0 does", "step 0 vs ",
                           "data position epoch 0, row 0 vs ", "weights hash ",
                           "every rank must see the same output folder"})
    EXPECT_NE(out.find(want), std::string::npos) << "missing '" << want << "' in:\n" << out;
  // Nothing was trained: rank 0's folder still resumes on its own.
  ASSERT_EQ(launch(0, "sft --config " + cfg + " --out " + (d / "out0"), &out), 0) << out;
  EXPECT_NE(out.find("resuming from"), std::string::npos) << out;
}

// The launcher's children (the ranks), from /proc.
std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> kids;
  std::ifstream in("/proc/" + std::to_string(parent) + "/task/" + std::to_string(parent) +
                   "/children");
  for (pid_t p; in >> p;) kids.push_back(p);
  return kids;
}

std::string environ_of(pid_t pid) {
  std::string env = rlhf::read_file("/proc/" + std::to_string(pid) + "/environ");
  std::replace(env.begin(), env.end(), '\0', '\n');
  return "\n" + env;
}

TEST(DataParallel, KilledRankStopsEveryRankAndIsNamed) {
  auto& f = fixture();
  TempDir d("dp_kill");
  const auto cfg = write_config(d / "sft.pbtxt", sft_config(f, 100000));
  const std::string log = d / "launch.log";
  const std::string cmd = rlhf_binary() + " launch --nproc-per-node 2 --master-port " +
                          std::to_string(29900 + getpid() % 90) + " -- rlhf sft --config " + cfg +
                          " --out " + (d / "out") + " > " + log + " 2>&1";
  rlhf::process::Options o;
  o.argv = {"/bin/sh", "-c", "exec " + cmd};
  rlhf::process::Child launcher = rlhf::process::Child::start(o);
  // Wait until both ranks train (rank 0 has written metrics).
  std::vector<pid_t> ranks;
  for (int i = 0; i < 600; ++i) {
    ranks = children_of(launcher.pid());
    if (ranks.size() == 2 && std::filesystem::exists(d / "out/metrics.jsonl")) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_EQ(ranks.size(), 2u) << rlhf::read_file(log);
  pid_t rank1 = -1;
  for (pid_t p : ranks)
    if (environ_of(p).find("\nRANK=1\n") != std::string::npos) rank1 = p;
  ASSERT_GT(rank1, 0);
  const auto t0 = std::chrono::steady_clock::now();
  ::kill(rank1, SIGKILL);
  const rlhf::process::ExitStatus status = launcher.wait();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, 30.0);
  ASSERT_TRUE(status.exited()) << status.describe();
  EXPECT_NE(status.code(), 0);
  for (pid_t p : ranks) EXPECT_NE(::kill(p, 0), 0) << "rank pid " << p << " still runs";
  const std::string text = rlhf::read_file(log);
  EXPECT_NE(text.find("rank 1"), std::string::npos) << text;
  EXPECT_NE(text.find("SIGKILL"), std::string::npos) << text;
}

TEST(DataParallel, TwoNodesOnLoopbackTrainAsOneJob) {
  auto& f = fixture();
  TempDir d("dp_nodes");
  const auto cfg = write_config(d / "sft.pbtxt", sft_config(f, 10));
  std::string out;
  ASSERT_EQ(launch(0, "sft --config " + cfg + " --out " + (d / "one"), &out), 0) << out;
  const std::string port = std::to_string(29600 + getpid() % 90);
  auto node = [&](int rank) {
    return "RLHF_DIST_TIMEOUT_S=60 " + rlhf_binary() +
           " launch --nnodes 2 --nproc-per-node 1 --node-rank " + std::to_string(rank) +
           " --master-addr 127.0.0.1 --master-port " + port + " -- rlhf sft --config " + cfg +
           " --out " + (d / "two") + " > " + (d / ("node" + std::to_string(rank) + ".log")) +
           " 2>&1";
  };
  std::string both;
  ASSERT_EQ(
      run_command("(" + node(1) + ") & " + node(0) + "; a=$?; wait $!; b=$?; exit $((a+b))", &both),
      0)
      << both << rlhf::read_file(d / "node0.log") << rlhf::read_file(d / "node1.log");
  expect_same_curves(d / "one", d / "two", {"loss", "eval_loss"});
}

// The local IPv4 addresses of the TCP sockets process `pid` holds (/proc/<pid>/fd, /proc/net/tcp).
std::set<std::string> tcp_local_addresses(pid_t pid) {
  const std::string proc = "/proc/" + std::to_string(pid);
  std::set<std::string> inodes, addresses;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(proc + "/fd", ec)) {
    const std::string link = std::filesystem::read_symlink(e.path(), ec).string();
    if (link.rfind("socket:[", 0) == 0) inodes.insert(link.substr(8, link.size() - 9));
  }
  std::ifstream tcp(proc + "/net/tcp");
  std::string line;
  std::getline(tcp, line);  // the header
  while (std::getline(tcp, line)) {
    std::istringstream in(line);
    std::string slot, local, remote, state, queues, timer, retransmits, uid, timeout, inode;
    in >> slot >> local >> remote >> state >> queues >> timer >> retransmits >> uid >> timeout >>
        inode;
    if (!inodes.count(inode) || local.size() < 8) continue;
    const unsigned long ip = std::stoul(local.substr(0, 8), nullptr, 16);  // little-endian
    addresses.insert(std::to_string(ip & 0xff) + "." + std::to_string((ip >> 8) & 0xff) + "." +
                     std::to_string((ip >> 16) & 0xff) + "." + std::to_string(ip >> 24));
  }
  return addresses;
}

// Two machines emulated on one host with loopback addresses: the store at 127.0.0.1 (MASTER_ADDR),
// node 0's rank at 127.0.0.2 and node 1's at 127.0.0.3 (RLHF_DIST_LOCAL_ADDR, docs/distributed.md).
// Gloo's connection between them is accepted by rank 0 on its own address for the whole run (rank
// 1 connects out), so rank 0's sockets show it; without the setting both would use 127.0.0.1.
TEST(DataParallel, TwoNodesOnLoopbackAddressesTrainAsOneJob) {
  auto& f = fixture();
  TempDir d("dp_two_addr");
  const auto cfg = write_config(d / "sft.pbtxt", sft_config(f, 10));
  std::string out;
  ASSERT_EQ(launch(0, "sft --config " + cfg + " --out " + (d / "one"), &out), 0) << out;
  const std::string port = std::to_string(29400 + getpid() % 90);
  auto node = [&](int rank) {
    rlhf::process::Options o;
    o.argv = {rlhf_binary(),
              "launch",
              "--nnodes",
              "2",
              "--nproc-per-node",
              "1",
              "--node-rank",
              std::to_string(rank),
              "--master-addr",
              "127.0.0.1",
              "--master-port",
              port,
              "--",
              "rlhf",
              "sft",
              "--config",
              cfg,
              "--out",
              d / "two"};
    o.env = {{"RLHF_DIST_TIMEOUT_S", "60"},
             {"RLHF_DIST_LOCAL_ADDR", rank == 0 ? "127.0.0.2" : "127.0.0.3"}};
    o.stdout_redirect = rlhf::process::Redirect::file(d / ("node" + std::to_string(rank) + ".log"));
    o.stderr_redirect = rlhf::process::Redirect::to_stdout();
    return rlhf::process::Child::start(o);
  };
  rlhf::process::Child node1 = node(1), node0 = node(0);
  std::set<std::string> rank0_addresses;
  while (node0.running()) {
    for (pid_t rank : children_of(node0.pid()))
      for (const auto& a : tcp_local_addresses(rank)) rank0_addresses.insert(a);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const auto s0 = node0.wait(), s1 = node1.wait();
  ASSERT_TRUE(s0.success() && s1.success())
      << rlhf::read_file(d / "node0.log") << rlhf::read_file(d / "node1.log");
  EXPECT_TRUE(rank0_addresses.count("127.0.0.2")) << "rank 0's sockets were on: " << [&] {
    std::string all;
    for (const auto& a : rank0_addresses) all += a + " ";
    return all;
  }();
  expect_same_curves(d / "one", d / "two", {"loss", "eval_loss"});
}

}  // namespace
