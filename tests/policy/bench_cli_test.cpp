// `rlhf bench --quick` through the binary: the data-parallel training figure (two worker ranks
// over Gloo on loopback) is reported next to the single-process one, and a failing worker is a
// named error, not a hang.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/files.h"
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
  // The scaling baseline: the same worker alone, and the ratio computed from the two figures.
  const double dp1 = j.at("train_dp1_tokens_per_s").get<double>();
  ASSERT_GT(dp1, 0.0) << j.dump();
  EXPECT_NEAR(j.at("train_dp2_scaling").get<double>(),
              j.at("train_dp2_tokens_per_s").get<double>() / dp1, 1e-9)
      << j.dump();
  // A step's parts (forward + backward, all-reduce with waiting, optimizer) fit in the step.
  const double parts = j.at("train_dp2_compute_s").get<double>() +
                       j.at("train_dp2_reduce_wait_s").get<double>() +
                       j.at("train_dp2_optimizer_s").get<double>();
  EXPECT_GT(j.at("train_dp2_compute_s").get<double>(), 0.0) << j.dump();
  EXPECT_LE(parts, j.at("train_dp2_step_s").get<double>() * 1.0001) << j.dump();
  EXPECT_GT(j.at("train_dp2_cpu_s").get<double>(), 0.0) << j.dump();
  EXPECT_GE(j.at("train_dp2_minor_faults").get<double>(), 0.0) << j.dump();
}

TEST(BenchCli, QuickTrainDp2Alone) {
  std::string out;
  ASSERT_EQ(run_command(rlhf_binary() + " bench --quick --only train_dp2 --json", &out, false), 0)
      << out;
  const auto j = nlohmann::json::parse(last_line(out));
  EXPECT_GT(j.at("train_dp2_tokens_per_s").get<double>(), 0.0) << j.dump();
  EXPECT_FALSE(j.contains("train_tokens_per_s")) << j.dump();
}

// bf16 training and generation on $RLHF_TEST_DEVICE (cpu when unset); the JSON names both.
TEST(BenchCli, Bf16OnTheTestDevice) {
  const std::string device = rlhf::testing::test_device_name();
  std::string out;
  ASSERT_EQ(run_command(rlhf_binary() + " bench --quick --only train --dtype bf16 --device " +
                            device + " --json",
                        &out, false),
            0)
      << out;
  const auto j = nlohmann::json::parse(last_line(out));
  EXPECT_EQ(j.at("dtype"), "bf16") << j.dump();
  EXPECT_EQ(j.at("device"), device) << j.dump();
  EXPECT_GT(j.at("train_tokens_per_s").get<double>(), 0.0) << j.dump();
  ASSERT_EQ(
      run_command(rlhf_binary() + " bench --quick --only gen_b1_cache --dtype bf16 --device " +
                      device + " --json",
                  &out, false),
      0)
      << out;
  EXPECT_GT(nlohmann::json::parse(last_line(out)).at("gen_b1_cache").get<double>(), 0.0);
}

// Bad values and a GPU that is not there are one-line errors naming the flag and the value.
TEST(BenchCli, DeviceAndDtypeErrorsAreNamed) {
  std::string out;
  EXPECT_NE(run_command(rlhf_binary() + " bench --quick --only gemm --dtype fp16", &out), 0);
  EXPECT_NE(out.find("--dtype = \"fp16\": expected \"fp32\" or \"bf16\""), std::string::npos)
      << out;
  EXPECT_NE(run_command(rlhf_binary() + " bench --quick --only gemm --device gpu", &out), 0);
  EXPECT_NE(out.find("bench --device = \"gpu\": expected \"cpu\", \"cuda\" or \"cuda:N\""),
            std::string::npos)
      << out;
  // CPU-only libtorch (Debian's): "... was built without CUDA"; CUDA: "GPU 4096 does not exist".
  EXPECT_NE(run_command(rlhf_binary() + " bench --quick --only gemm --device cuda:4096", &out), 0);
  EXPECT_NE(out.find("bench --device = \"cuda:4096\": "), std::string::npos) << out;
  EXPECT_TRUE(out.find("was built without CUDA") != std::string::npos ||
              out.find("GPU 4096 does not exist") != std::string::npos)
      << out;
}

// The llama2.c peer's files (bench/peer/compare_llama2c.sh): the bench shape in run.c's header,
// and a one-line error naming the path it cannot write (contents: llama2c_export_test).
TEST(BenchCli, ExportLlama2cWritesTheBenchShape) {
  rlhf::testing::TempDir dir("l2c");
  std::string out;
  ASSERT_EQ(run_command(rlhf_binary() + " bench --export-llama2c " + dir / "peer", &out), 0) << out;
  const std::string model = rlhf::read_file(dir / "peer/model.bin");
  ASSERT_GE(model.size(), 28u);
  std::vector<int32_t> header(7);
  std::memcpy(header.data(), model.data(), 28);
  EXPECT_EQ(header, (std::vector<int32_t>{256, 704, 4, 8, 8, -4096, 264}));
  EXPECT_TRUE(rlhf::file_exists(dir / "peer/tokenizer.bin"));

  rlhf::write_file_atomic(dir / "file", "x");
  EXPECT_NE(run_command(rlhf_binary() + " bench --export-llama2c " + dir / "file/peer", &out), 0);
  EXPECT_NE(out.find(dir / "file/peer"), std::string::npos) << out;
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
