// Rollout files: write/read round trip, exact replay of stored advantages, corrupt-file errors,
// hand-made JSON lines, and the `rlhf replay` command on the same files.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"
#include "policy/ppo/ppo_math.h"
#include "policy/ppo/ppo_replay.h"
#include "policy/ppo/rollout_file.h"
#include "tests/test_support.h"

using namespace rlhf;
using rlhf::testing::TempDir;

namespace {

// Builds records the way the trainer does: one padded float32 batch through ppo_math, then each
// row's real tokens copied into its record.
std::vector<proto::RolloutRecord> make_batch(int B, int T, double beta, double gamma, double lam,
                                             uint64_t seed) {
  torch::manual_seed(seed);
  auto logp = -torch::rand({B, T}) * 3;
  auto ref = -torch::rand({B, T}) * 3;
  auto values = torch::randn({B, T});
  auto scores = torch::randn({B});
  auto mask = torch::ones({B, T});
  for (int b = 0; b < B; ++b) {
    int len = 1 + (b * 5) % T;
    mask.index_put_({b, torch::indexing::Slice(len)}, 0);
  }
  auto kl = policy::ppo::per_token_kl(logp, ref, mask);
  auto rewards = policy::ppo::compute_rewards(kl, scores, mask, beta);
  auto gae = policy::ppo::compute_gae(rewards, values, mask, gamma, lam);
  std::vector<proto::RolloutRecord> out;
  for (int b = 0; b < B; ++b) {
    proto::RolloutRecord r;
    r.set_schema_version(1);
    r.set_iteration(7);
    r.set_index(b);
    int len = mask[b].sum().item<int>();
    for (int i = 0; i < 3; ++i) r.add_prompt_ids(1 + i + b);
    auto put = [&](const torch::Tensor& t, google::protobuf::RepeatedField<float>* f) {
      for (int i = 0; i < len; ++i) f->Add(t[b][i].item<float>());
    };
    for (int i = 0; i < len; ++i) r.add_response_ids(10 + i);
    put(logp, r.mutable_logprobs());
    put(ref, r.mutable_ref_logprobs());
    put(values, r.mutable_values());
    put(kl, r.mutable_kl());
    put(rewards, r.mutable_rewards());
    put(gae.advantages, r.mutable_advantages());
    put(gae.returns, r.mutable_returns());
    r.set_score(scores[b].item<float>());
    r.set_raw_score(r.score());
    r.set_kl_coef(beta);
    r.set_gamma(gamma);
    r.set_lam(lam);
    r.mutable_generation()->set_temperature(1.0f);
    r.mutable_generation()->set_seed(seed);
    out.push_back(r);
  }
  return out;
}

std::string run_rlhf(const std::string& args, int* rc) {
  std::string out;
  *rc = rlhf::testing::run_command(rlhf::testing::rlhf_binary() + " " + args, &out);
  return out;
}

bool have_binary() { return file_exists(rlhf::testing::rlhf_binary()); }

}  // namespace

TEST(Rollouts, RoundTripAndExactReplay) {
  TempDir dir("rollouts");
  auto records = make_batch(6, 9, 0.05, 1.0, 0.95, 3);
  write_file_atomic(dir / "x", "");  // the folder is writable
  policy::write_rollouts(dir / "iter-0007.pb", records);
  auto back = policy::read_rollouts(dir / "iter-0007.pb");
  ASSERT_EQ(back.size(), records.size());
  for (size_t i = 0; i < back.size(); ++i) {
    EXPECT_EQ(back[i].SerializeAsString(), records[i].SerializeAsString());
    auto s = policy::recompute_sample(back[i], {});
    EXPECT_TRUE(s.compared);
    EXPECT_EQ(s.mismatches, 0) << "sample " << i;
    EXPECT_EQ(s.max_abs_diff, 0.0);
    ASSERT_EQ((int)s.advantages.size(), back[i].advantages_size());
    for (int t = 0; t < back[i].advantages_size(); ++t)
      EXPECT_EQ(s.advantages[t], back[i].advantages(t));  // bit-exact
  }
  // A different beta changes rewards and advantages: mismatches are reported.
  policy::RecomputeParams p;
  p.kl_coef = 0.5;
  EXPECT_GT(policy::recompute_sample(back[2], p).mismatches, 0);
}

TEST(Rollouts, CorruptFileNamesRecord) {
  TempDir dir("rollouts");
  auto records = make_batch(4, 6, 0.1, 1.0, 0.95, 5);
  policy::write_rollouts(dir / "a.pb", records);
  std::string data = read_file(dir / "a.pb");
  // Truncate inside the third record (index 2).
  std::string one, two;
  {
    std::vector<proto::RolloutRecord> first2(records.begin(), records.begin() + 2);
    policy::write_rollouts(dir / "b.pb", first2);
    two = read_file(dir / "b.pb");
  }
  write_file_atomic(dir / "trunc.pb", data.substr(0, two.size() + 7));
  try {
    policy::read_rollouts(dir / "trunc.pb");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("record 2"), std::string::npos) << m;
    EXPECT_NE(m.find("trunc.pb"), std::string::npos) << m;
  }
  // Garbage bytes in the middle of record 1's payload.
  std::string bad = data;
  size_t first_len = records[0].ByteSizeLong() + 1;  // varint(size) is 1 byte here (< 128)
  ASSERT_LT(records[0].ByteSizeLong(), 128u);
  bad[first_len + 1] = '\xff';
  bad[first_len + 2] = '\xff';
  write_file_atomic(dir / "bad.pb", bad);
  try {
    policy::read_rollouts(dir / "bad.pb");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("record 1"), std::string::npos) << e.what();
  }
  // Inconsistent per-token lengths are caught too.
  auto r = records;
  r[3].add_values(1.0f);
  policy::write_rollouts(dir / "len.pb", r);
  try {
    policy::read_rollouts(dir / "len.pb");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("record 3"), std::string::npos) << m;
    EXPECT_NE(m.find("values"), std::string::npos) << m;
  }
}

TEST(Rollouts, HandMadeJsonLines) {
  TempDir dir("rollouts");
  // Two tokens, beta 0.5, gamma 1, lam 1:
  // kl = [0.5, -0.25]; rewards = [-0.25, 0.125 + 1.0]; A1 = 1.125 - 0.2 = 0.925;
  // A0 = -0.25 + 0.2 - 0.1 + 0.925 = 0.775; returns = [0.875, 1.125]
  std::ofstream(dir / "hand.jsonl")
      << R"({"prompt_ids": [1, 5], "response_ids": [7, 2], "logprobs": [-1.0, -2.0],)"
      << R"( "ref_logprobs": [-1.5, -1.75], "values": [0.1, 0.2], "score": 1.0})"
      << "\n"
      << R"({"prompt_ids": [1], "response_ids": [3], "logprobs": [-1], "ref_logprobs": [-1],)"
      << R"( "values": [0.5], "score": -2})"
      << "\n";
  auto recs = policy::read_rollouts(dir / "hand.jsonl");
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[1].index(), 1);
  policy::RecomputeParams p;
  p.gamma = 1.0;
  p.lam = 1.0;
  p.kl_coef = 0.5;
  auto s = policy::recompute_sample(recs[0], p);
  EXPECT_FALSE(s.compared);
  ASSERT_EQ(s.advantages.size(), 2u);
  EXPECT_NEAR(s.kl[0], 0.5, 1e-6);
  EXPECT_NEAR(s.rewards[1], 1.125, 1e-6);
  EXPECT_NEAR(s.advantages[0], 0.775, 1e-6);
  EXPECT_NEAR(s.advantages[1], 0.925, 1e-6);
  EXPECT_NEAR(s.returns[0], 0.875, 1e-6);
  // Missing field and wrong length give errors naming the record.
  std::ofstream(dir / "bad.jsonl") << R"({"prompt_ids": [1], "response_ids": [3]})"
                                   << "\n";
  try {
    policy::read_rollouts(dir / "bad.jsonl");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("record 0"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("logprobs"), std::string::npos) << e.what();
  }
  // JSON view round-trips.
  auto recs2 = make_batch(2, 4, 0.05, 1.0, 0.95, 9);
  auto j = policy::rollout_to_json(recs2[1]);
  auto again = policy::rollout_from_json(j, "x");
  EXPECT_EQ(again.SerializeAsString(), recs2[1].SerializeAsString());
}

TEST(Rollouts, ReplayCommand) {
  if (!have_binary()) GTEST_SKIP() << "rlhf binary not built: " << rlhf::testing::rlhf_binary();
  TempDir dir("rollouts");
  auto records = make_batch(5, 8, 0.05, 1.0, 0.95, 11);
  policy::write_rollouts(dir / "iter-0003.pb", records);
  int rc = 0;
  // Recompute with the stored parameters: all samples match, JSON has one line per sample.
  std::string out = run_rlhf("replay " + (dir / "iter-0003.pb") +
                                 " --recompute --gamma 1 --lam 0.95 --kl-coef 0.05 --json",
                             &rc);
  ASSERT_EQ(rc, 0) << out;
  std::istringstream in(out);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    int idx = j["index"].get<int>();
    ASSERT_EQ(j["advantages"].size(), (size_t)records[idx].advantages_size());
    for (int t = 0; t < records[idx].advantages_size(); ++t)
      EXPECT_EQ(j["advantages"][t].get<float>(), records[idx].advantages(t));
    ++n;
  }
  EXPECT_EQ(n, 5);
  // Text form reports the match; a different lambda reports mismatches with exit code 3.
  out = run_rlhf("replay " + (dir / "iter-0003.pb") + " --recompute", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("0 of 5 compared samples differ"), std::string::npos) << out;
  out = run_rlhf("replay " + (dir / "iter-0003.pb") + " --recompute --lam 0.5", &rc);
  EXPECT_EQ(rc, 3) << out;
  // Showing one sample prints its per-token table.
  out = run_rlhf("replay " + (dir / "iter-0003.pb") + " --sample 2", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("== sample 2"), std::string::npos) << out;
  EXPECT_NE(out.find("advantage"), std::string::npos) << out;
  // Corrupt file: one stderr line with the record number, non-zero exit.
  std::string data = read_file(dir / "iter-0003.pb");
  write_file_atomic(dir / "cut.pb", data.substr(0, data.size() - 5));
  out = run_rlhf("replay " + (dir / "cut.pb"), &rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("record 4"), std::string::npos) << out;
}

// A critic-free group (rloo, K = 2) by hand: scores 1 and 3 give leave-one-out advantages
// 1 - 3 = -2 and 3 - 1 = 2. Record 0: kl = [-1 - (-1.5), -1 - (-0.5)] = [0.5, -0.5], beta 0.1:
// rewards [-0.05, 0.05 - 2 = -1.95], advantages (sums to the end) [-2.0, -1.95] = returns.
// With kl_in_loss the rewards hold no KL: advantages [-2, -2].
TEST(Rollouts, CriticFreeGroupReplaysByHand) {
  TempDir dir("rollouts_rloo");
  auto write = [&](const std::string& name, float stored_adv0, bool kl_in_loss) {
    const std::string common =
        std::string(R"("advantage_estimator": "rloo", "samples_per_prompt": 2, "group": 0,)") +
        R"( "kl_coef": 0.1, "gamma": 1.0, "lam": 1.0, "kl_in_loss": )" +
        (kl_in_loss ? "true" : "false") + ", ";
    std::ofstream(dir / name) << "{" << common << R"("index": 0, "prompt_ids": [1, 5],)"
                              << R"( "response_ids": [7, 2], "logprobs": [-1.0, -1.0],)"
                              << R"( "ref_logprobs": [-1.5, -0.5], "values": [0, 0],)"
                              << R"( "score": 1.0, "sequence_advantage": )" << stored_adv0 << "}\n{"
                              << common << R"("index": 1, "prompt_ids": [1, 5],)"
                              << R"( "response_ids": [4], "logprobs": [-2.0],)"
                              << R"( "ref_logprobs": [-2.0], "values": [0], "score": 3.0,)"
                              << R"( "sequence_advantage": 2.0})"
                              << "\n";
    return policy::read_rollouts(dir / name);
  };
  auto recs = write("rloo.jsonl", -2.0f, false);
  const auto seq = policy::group_sequence_advantages(recs);
  ASSERT_EQ(seq.size(), 2u);
  EXPECT_EQ(seq.at(0), -2.0f);
  EXPECT_EQ(seq.at(1), 2.0f);
  auto s = policy::recompute_sample(recs[0], {}, seq.at(0));
  EXPECT_EQ(s.mismatches, 0);
  ASSERT_EQ(s.advantages.size(), 2u);
  EXPECT_NEAR(s.rewards[0], -0.05, 1e-6);
  EXPECT_NEAR(s.rewards[1], -1.95, 1e-6);
  EXPECT_NEAR(s.advantages[0], -2.0, 1e-6);
  EXPECT_NEAR(s.advantages[1], -1.95, 1e-6);
  EXPECT_EQ(s.returns, s.advantages);
  // Without its group's advantage a critic-free record cannot be recomputed.
  EXPECT_THROW(policy::recompute_sample(recs[0], {}), Error);
  // A stored sequence advantage that is not the group's counts as a mismatch.
  auto wrong = write("wrong.jsonl", -1.5f, false);
  EXPECT_GT(policy::recompute_sample(wrong[0], {}, seq.at(0)).mismatches, 0);
  // kl_in_loss: every token carries the sequence advantage.
  auto in_loss = write("in_loss.jsonl", -2.0f, true);
  auto s2 = policy::recompute_sample(in_loss[0], {}, seq.at(0));
  EXPECT_NEAR(s2.advantages[0], -2.0, 1e-6);
  EXPECT_NEAR(s2.advantages[1], -2.0, 1e-6);
  // The command: exit 0 on the right file, 3 when the stored group advantage is off.
  if (!have_binary()) GTEST_SKIP() << "rlhf binary not built";
  std::string out;
  EXPECT_EQ(rlhf::testing::run_command(rlhf::testing::rlhf_binary() + " replay " +
                                           (dir / "rloo.jsonl") + " --recompute --json",
                                       &out, false),
            0)
      << out;
  EXPECT_NE(out.find("\"sequence_advantage\":-2.0"), std::string::npos) << out;
  EXPECT_EQ(
      rlhf::testing::run_command(
          rlhf::testing::rlhf_binary() + " replay " + (dir / "wrong.jsonl") + " --recompute", &out),
      3)
      << out;
}
