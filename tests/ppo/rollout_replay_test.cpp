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
