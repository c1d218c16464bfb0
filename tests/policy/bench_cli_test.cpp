// `rlhf bench --quick` through the binary: the data-parallel training figure (two worker ranks
// over Gloo on loopback) is reported next to the single-process one, and a failing worker is a
// named error, not a hang.
#include <gtest/gtest.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/test_support.h"

namespace {

using rlhf::testing::rlhf_binary;
using rlhf::testing::run_command;

// The last non-empty line of text.
std::string last_line(const std::string& text) {
  const size_t end = text.find_last_not_of('\n');
  if (end == std::string::npos) return "";
  const size_t nl = text.rfind('\n', end);
  return text.substr(nl == std::string::npos ? 0 : nl + 1,
                     end - (nl == std::string::npos ? 0 : nl + 1) + 1);
}

TEST(BenchCli, QuickTrainReportsTwoRankThroughput) {
  std::string out;
  ASSERT_EQ(run_command(rlhf_binary() + " bench --quick --only train --json", &out, false), 0)
      << out;
  const auto j = nlohmann::json::parse(last_line(out));
  EXPECT_GT(j.at("train_tokens_per_s").get<double>(), 0.0) << j.dump();
  EXPECT_GT(j.at("train_dp2_tokens_per_s").get<double>(), 0.0) << j.dump();
  EXPECT_GT(j.at("train_dp2_speedup").get<double>(), 0.0) << j.dump();
  EXPECT_GT(j.at("train_dp2_allreduce_s").get<double>(), 0.0) << j.dump();
}

TEST(BenchCli, QuickTrainDp2Alone) {
  std::string out;
  ASSERT_EQ(run_command(rlhf_binary() + " bench --quick --only train_dp2 --json", &out, false), 0)
      << out;
  const auto j = nlohmann::json::parse(last_line(out));
  EXPECT_GT(j.at("train_dp2_tokens_per_s").get<double>(), 0.0) << j.dump();
  EXPECT_FALSE(j.contains("train_tokens_per_s")) << j.dump();
}

TEST(BenchCli, FailingWorkerNamesItsRank) {
  // Every worker rejects the malformed timeout while joining; the parent must say so and stop.
  std::string out;
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = run_command(
      "RLHF_DIST_TIMEOUT_S=never " + rlhf_binary() + " bench --quick --only train_dp2 --json",
      &out);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("data-parallel training worker rank"), std::string::npos) << out;
  EXPECT_NE(out.find("exited with status"), std::string::npos) << out;
  EXPECT_LT(s, 60.0);
}

}  // namespace
