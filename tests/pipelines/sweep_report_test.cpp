// The seed sweep's report (pipelines/sweep_report.h) on hand-made seed folders, the --seeds
// syntax, and `rlhf pipeline sweep`'s refusals through the binary.
#include "pipelines/sweep_report.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "common/error.h"
#include "common/files.h"
#include "tests/fixtures/child_process.h"
#include "tests/test_support.h"

namespace rlhf::pipelines {
namespace {

using json = nlohmann::json;
using testing::TempDir;

TEST(SweepSeeds, RangesListsAndMixes) {
  EXPECT_EQ(parse_seeds("0-4"), (std::vector<uint64_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(parse_seeds("3"), (std::vector<uint64_t>{3}));
  EXPECT_EQ(parse_seeds("0,2,7"), (std::vector<uint64_t>{0, 2, 7}));
  EXPECT_EQ(parse_seeds("5-6,1"), (std::vector<uint64_t>{5, 6, 1}));
}

TEST(SweepSeeds, BadTextIsAUsageErrorNamingIt) {
  for (const char* bad : {"", "a", "1-", "-3", "4-2", "0,,1", "1,1", "0-2,2", "0-5000", "1.5"}) {
    try {
      parse_seeds(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("--seeds '") + bad + "'"), std::string::npos)
          << e.what();
    }
  }
}

// A finished seed folder: summary.json and a PPO metrics file of `iters` iterations.
void fake_seed(const std::string& sweep, uint64_t seed, double ppo_gold, double sft_gold,
               int iters) {
  const std::string dir = seed_run_dir(sweep, seed);
  make_dirs(dir + "/ppo");
  const json summary = {{"seed", seed},
                        {"ppo_gold_accuracy", ppo_gold},
                        {"sft_gold_accuracy", sft_gold},
                        {"run_dir", dir},
                        {"stage_seconds", {{"ppo_seconds", 10.0 * (seed + 1)}}},
                        {"machine",
                         {{"cpu", seed == 2 ? "Other <CPU>" : "Test CPU"},
                          {"cores", 2},
                          {"openblas_core", "SkylakeX"}}},
                        {"finished_at", "2026-12-07T10:0" + std::to_string(seed) + ":00Z"}};
  write_file_atomic(dir + "/summary.json", summary.dump());
  std::string metrics;
  for (int i = 1; i <= iters; ++i)
    metrics +=
        json{{"step", i}, {"score/mean", 0.1 * i}, {"gold/accuracy", ppo_gold * i / iters}}.dump() +
        "\n";
  write_file_atomic(dir + "/ppo/metrics.jsonl", metrics);
}

TEST(SweepReport, StatsOverSeedsAndAMissingSeed) {
  TempDir dir("sweep");
  fake_seed(dir.path(), 0, 0.80, 0.30, 3);
  fake_seed(dir.path(), 1, 0.70, 0.40, 3);
  fake_seed(dir.path(), 2, 0.90, 0.35, 4);
  const json sweep = write_sweep_report(dir.path(), {0, 1, 2, 3});
  EXPECT_EQ(sweep["missing"], json::array({3}));
  EXPECT_EQ(sweep["runs"].size(), 3u);
  const json& gold = sweep["stats"]["ppo_gold_accuracy"];
  EXPECT_NEAR(gold["mean"].get<double>(), 0.8, 1e-12);
  EXPECT_EQ(gold["min"].get<double>(), 0.70);
  EXPECT_EQ(gold["max"].get<double>(), 0.90);
  EXPECT_EQ(gold["n"].get<int>(), 3);
  EXPECT_NEAR(sweep["stats"]["stage_seconds.ppo_seconds"]["mean"].get<double>(), 20.0, 1e-12);
  EXPECT_FALSE(sweep["stats"].contains("seed"));     // an identity, not a figure
  EXPECT_FALSE(sweep["stats"].contains("run_dir"));  // not a number
  // Where and when: the distinct machines (seeds 0 and 1 share one) and the first and last finish.
  ASSERT_EQ(sweep["machines"].size(), 2u) << sweep["machines"].dump();
  EXPECT_EQ(sweep["machines"][0]["cpu"], "Test CPU");
  EXPECT_EQ(sweep["machines"][1]["cpu"], "Other <CPU>");
  EXPECT_EQ(sweep["finished"], json::array({"2026-12-07T10:00:00Z", "2026-12-07T10:02:00Z"}));
  // The files: sweep.json is what was returned; the page has a row per seed, the stat rows and
  // two curves (score, gold) per seed with metrics.
  EXPECT_EQ(json::parse(read_file(dir / "sweep.json")), sweep);
  const std::string html = read_file(dir / "sweep.html");
  for (const char* text :
       {"<td>0</td>", "<td>2</td>", "<td>3</td>", ">mean<", ">min<", ">max<", "80.0%",
        "seed 2 gold", "Not finished yet: [3]", "Machine: Test CPU, 2 cores, OpenBLAS SkylakeX",
        "Other &lt;CPU&gt;", "Finished 2026-12-07T10:00:00Z to 2026-12-07T10:02:00Z"})
    EXPECT_NE(html.find(text), std::string::npos) << text;
  size_t lines = 0;
  for (size_t p = html.find("<polyline"); p != std::string::npos; p = html.find("<polyline", p + 1))
    ++lines;
  EXPECT_EQ(lines, 6u);
}

TEST(SweepReport, ASummaryThatIsNotAnObjectIsNamed) {
  TempDir dir("sweep");
  make_dirs(seed_run_dir(dir.path(), 4));
  write_file_atomic(seed_run_dir(dir.path(), 4) + "/summary.json", "[1, 2]");
  try {
    write_sweep_report(dir.path(), {4});
    FAIL() << "accepted a summary that is not an object";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("seed-4/summary.json"), std::string::npos) << e.what();
  }
}

TEST(SweepCommand, RefusesBadSeedsAndAMissingConfig) {
  TempDir dir("sweep");
  std::string out;
  EXPECT_EQ(
      testing::run_command(testing::rlhf_binary() + " pipeline sweep x.pbtxt --seeds 4-2", &out), 2)
      << out;
  EXPECT_NE(out.find("--seeds '4-2'"), std::string::npos) << out;
  EXPECT_NE(testing::run_command(testing::rlhf_binary() + " pipeline sweep " + dir.path() +
                                     "/missing.pbtxt --seeds 0-1 --run-dir " + dir.path() + "/s",
                                 &out),
            0);
  EXPECT_NE(out.find("missing.pbtxt"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir / "s")) << "a refused sweep made its folder";
  ASSERT_EQ(testing::run_command(testing::rlhf_binary() + " pipeline sweep --help", &out), 0);
  EXPECT_NE(out.find("--seeds"), std::string::npos) << out;
}

}  // namespace
}  // namespace rlhf::pipelines
