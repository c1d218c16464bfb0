// rlhf launch: flag parsing, rank environments and output prefixing as pure functions, then the
// launcher itself with real child processes (needs the built rlhf executable). The environment
// merge and the wait-status description are common/process.h's (process_test.cpp).
#include "common/launch.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/files.h"
#include "common/process.h"
#include "tests/test_support.h"

namespace {

using rlhf::launch::LaunchOptions;
using rlhf::launch::RankOutputFilter;
using rlhf::testing::rlhf_binary;
using rlhf::testing::run_command;
using Clock = std::chrono::steady_clock;

std::map<std::string, std::string> env_map(const LaunchOptions& o, int local_rank) {
  std::map<std::string, std::string> m;
  for (const auto& [k, v] : rlhf::launch::rank_environment(o, local_rank)) m[k] = v;
  return m;
}

// The UsageError message parse_launch_args gives for argv, or "" when it parses.
std::string usage_error(const std::vector<std::string>& argv) {
  try {
    rlhf::launch::parse_launch_args(argv);
  } catch (const rlhf::UsageError& e) {
    return e.what();
  }
  return "";
}

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

TEST(LaunchArgs, ParsesFlagsAndKeepsTheCommandUntouched) {
  LaunchOptions o = rlhf::launch::parse_launch_args(
      {"--nproc-per-node", "2", "--nnodes=2", "--node_rank", "1", "--master-addr", "10.0.0.1",
       "--master-port", "1234", "--timeout", "2.5", "--", "rlhf", "sft", "--help", "--", "x"});
  EXPECT_EQ(o.nproc_per_node, 2);
  EXPECT_EQ(o.nnodes, 2);
  EXPECT_EQ(o.node_rank, 1);
  EXPECT_EQ(o.master_addr, "10.0.0.1");
  EXPECT_EQ(o.master_port, 1234);
  EXPECT_DOUBLE_EQ(o.timeout_s, 2.5);
  EXPECT_EQ(o.command, (std::vector<std::string>{"rlhf", "sft", "--help", "--", "x"}));
}

TEST(LaunchArgs, DefaultsMatchTorchrun) {
  LaunchOptions o = rlhf::launch::parse_launch_args({"--nproc-per-node", "1", "--", "true"});
  EXPECT_EQ(o.nnodes, 1);
  EXPECT_EQ(o.node_rank, 0);
  EXPECT_EQ(o.master_addr, "127.0.0.1");
  EXPECT_EQ(o.master_port, 29500);
  EXPECT_EQ(o.timeout_s, 0);
}

TEST(LaunchArgs, BadFlagsNameTheFlagAndValue) {
  EXPECT_NE(usage_error({"--nproc-per-node", "0", "--", "true"}).find("--nproc-per-node"),
            std::string::npos);
  EXPECT_NE(usage_error({"--nproc-per-node", "0", "--", "true"}).find("'0'"), std::string::npos);
  EXPECT_NE(usage_error({"--nproc-per-node", "two", "--", "true"}).find("'two'"),
            std::string::npos);
  std::string e =
      usage_error({"--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "2", "--", "true"});
  EXPECT_NE(e.find("--node-rank"), std::string::npos) << e;
  EXPECT_NE(e.find("--nnodes (2)"), std::string::npos) << e;
  e = usage_error({"--nproc-per-node", "1", "--master-port", "http", "--", "true"});
  EXPECT_NE(e.find("--master-port"), std::string::npos) << e;
  EXPECT_NE(e.find("'http'"), std::string::npos) << e;
  EXPECT_NE(usage_error({"--nproc-per-node", "1", "--master-port", "70000", "--", "true"})
                .find("--master-port"),
            std::string::npos);
  EXPECT_NE(
      usage_error({"--nproc-per-node", "1", "--timeout", "-1", "--", "true"}).find("--timeout"),
      std::string::npos);
  e = usage_error({"--nproc-per-node", "1", "true"});
  EXPECT_NE(e.find("missing '--' before the program, got 'true'"), std::string::npos) << e;
  EXPECT_NE(usage_error({"--nproc-per-node", "1"}).find("missing '--'"), std::string::npos);
  EXPECT_NE(usage_error({"--nproc-per-node", "1", "--"}).find("no program"), std::string::npos);
  EXPECT_NE(usage_error({"--", "true"}).find("--nproc-per-node"), std::string::npos);
  EXPECT_NE(usage_error({"--nprocs", "1", "--", "true"}).find("unknown flag --nprocs"),
            std::string::npos);
  EXPECT_NE(usage_error({"--nproc-per-node", "--", "true"}).find("needs a value"),
            std::string::npos);
}

TEST(LaunchEnvironment, SecondNodeOfTwoGetsRanksTwoAndThree) {
  LaunchOptions o;
  o.nproc_per_node = 2;
  o.nnodes = 2;
  o.node_rank = 1;
  o.master_addr = "node0";
  o.master_port = 29600;
  auto r0 = env_map(o, 0), r1 = env_map(o, 1);
  EXPECT_EQ(r0["RANK"], "2");
  EXPECT_EQ(r1["RANK"], "3");
  EXPECT_EQ(r1["LOCAL_RANK"], "1");
  EXPECT_EQ(r1["WORLD_SIZE"], "4");
  EXPECT_EQ(r1["LOCAL_WORLD_SIZE"], "2");
  EXPECT_EQ(r1["GROUP_RANK"], "1");
  EXPECT_EQ(r1["MASTER_ADDR"], "node0");
  EXPECT_EQ(r1["MASTER_PORT"], "29600");
  EXPECT_EQ(r1["RLHF_LAUNCHED"], "1");
}

TEST(LaunchProgram, ResolvesRlhfToThisExecutableAndOthersThroughPath) {
  EXPECT_EQ(rlhf::launch::resolve_program("rlhf", ""),
            std::filesystem::read_symlink("/proc/self/exe").string());
  EXPECT_EQ(rlhf::launch::resolve_program("sh", "/nonexistent:/bin:/usr/bin"), "/bin/sh");
  EXPECT_EQ(rlhf::launch::resolve_program("./x", ""), "./x");
  EXPECT_THROW(rlhf::launch::resolve_program("no-such-program-xyz", "/bin"), rlhf::Error);
}

TEST(RankOutputFilter, PrefixesLinesAndKeepsPartialLinesUntilComplete) {
  RankOutputFilter f(1, /*keep_progress=*/false);
  EXPECT_EQ(f.feed("hello\nwor"), "[rank 1] hello\n");
  EXPECT_EQ(f.feed("ld\n\n"), "[rank 1] world\n[rank 1] \n");
  EXPECT_EQ(f.feed("tail"), "");
  EXPECT_EQ(f.finish(), "[rank 1] tail\n");
  EXPECT_EQ(f.finish(), "");
}

TEST(RankOutputFilter, OtherRanksDropProgressLines) {
  RankOutputFilter f(1, /*keep_progress=*/false);
  EXPECT_EQ(f.feed("\r\033[Kstep 1/3"), "");
  EXPECT_EQ(f.feed("\r\033[Kstep 2/3\r\033[Kdone\n"), "");
  EXPECT_EQ(f.feed("loss 0.5\n"), "[rank 1] loss 0.5\n");
  EXPECT_EQ(f.feed("\rpartial bar"), "");
  EXPECT_EQ(f.finish(), "");
}

TEST(RankOutputFilter, RankZeroRedrawsArePrefixedAndWrittenAtOnce) {
  RankOutputFilter f(0, /*keep_progress=*/true);
  // The bar of common/progress.cpp: "\r\033[K" + text, a final "\n".
  EXPECT_EQ(f.feed("\r\033[Kstep 1/3"), "[rank 0] \033[Kstep 1/3");
  EXPECT_EQ(f.feed("\r\033[Kstep 2/3"), "\r[rank 0] \033[Kstep 2/3");
  EXPECT_EQ(f.feed("\r\033[Kdone\n"), "\r[rank 0] \033[Kdone\n");
  EXPECT_EQ(f.feed("next\n"), "[rank 0] next\n");
  EXPECT_EQ(f.feed("\rhalf"), "[rank 0] half");
  EXPECT_EQ(f.finish(), "\n");
}

// `rlhf launch ARGS` through the shell, stdout and stderr merged; returns the exit code.
int launch(const std::string& args, std::string* output) {
  return run_command(rlhf_binary() + " launch " + args, output);
}

class LaunchProcess : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!rlhf::file_exists(rlhf_binary())) GTEST_SKIP() << "not built: " << rlhf_binary();
  }
};

TEST_F(LaunchProcess, EveryRankGetsItsEnvironmentAndPrefixedOutput) {
  std::string out;
  int rc = launch("--nproc-per-node 2 -- sh -c 'echo hi $RANK $WORLD_SIZE $LOCAL_RANK'", &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("[rank 0] hi 0 2 0\n"), std::string::npos) << out;
  EXPECT_NE(out.find("[rank 1] hi 1 2 1\n"), std::string::npos) << out;
}

TEST_F(LaunchProcess, RlhfIsThisExecutableAndHelpAfterTheSeparatorIsTheProgramsOwn) {
  std::string out;
  EXPECT_EQ(launch("--nproc-per-node 1 -- rlhf launch --help", &out), 0) << out;
  EXPECT_NE(out.find("[rank 0] usage: rlhf launch"), std::string::npos) << out;
  EXPECT_EQ(launch("--nproc-per-node 1 -- sh -c 'echo \"$1\"' sh --help", &out), 0) << out;
  EXPECT_NE(out.find("[rank 0] --help\n"), std::string::npos) << out;
}

TEST_F(LaunchProcess, StderrAndPartialLastLinesArePrefixed) {
  std::string out;
  int rc = run_command(
      rlhf_binary() + " launch --nproc-per-node 1 -- sh -c 'echo err >&2; printf no-newline' " +
          "2>/dev/null",
      &out, /*merge_stderr=*/false);
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(out, "[rank 0] no-newline\n");
}

TEST_F(LaunchProcess, BadUsageExitsTwoNamingTheFlag) {
  std::string out;
  EXPECT_EQ(launch("--nproc-per-node 0 -- true", &out), 2);
  EXPECT_NE(out.find("--nproc-per-node"), std::string::npos) << out;
  EXPECT_NE(launch("--nproc-per-node 1 -- no-such-program-xyz", &out), 0);
  EXPECT_NE(out.find("no-such-program-xyz"), std::string::npos) << out;
}

TEST_F(LaunchProcess, AFailedRankStopsTheOthersAndGivesItsExitCode) {
  std::string out;
  auto start = Clock::now();
  int rc =
      launch("--nproc-per-node 2 -- sh -c 'if [ $RANK = 1 ]; then exit 3; fi; sleep 60'", &out);
  EXPECT_EQ(rc, 3) << out;
  EXPECT_LT(seconds_since(start), 10.0);  // the ranks would sleep 60 s
  EXPECT_NE(out.find("rank 1 (pid "), std::string::npos) << out;
  EXPECT_NE(out.find("exited with status 3; stopping the other ranks"), std::string::npos) << out;
}

TEST_F(LaunchProcess, AKilledRankGives128PlusTheSignal) {
  std::string out;
  auto start = Clock::now();
  int rc =
      launch("--nproc-per-node 2 -- sh -c 'if [ $RANK = 1 ]; then kill -9 $$; fi; sleep 60'", &out);
  EXPECT_EQ(rc, 137) << out;
  EXPECT_LT(seconds_since(start), 30.0);
  EXPECT_NE(out.find("rank 1 (pid "), std::string::npos) << out;
  EXPECT_NE(out.find("killed by signal 9 (SIGKILL)"), std::string::npos) << out;
}

TEST_F(LaunchProcess, RanksIgnoringSigtermAreKilledAfterTheGracePeriod) {
  std::string out;
  auto start = Clock::now();
  // Rank 1 fails only once rank 0 ignores SIGTERM (a marker file), so the SIGTERM cannot arrive
  // before the trap is set on a loaded machine.
  const std::string ready =
      (std::filesystem::temp_directory_path() / ("rlhf_launch_ready_" + std::to_string(::getpid())))
          .string();
  std::filesystem::remove(ready);
  int rc = launch(
      "--nproc-per-node 2 --stop-grace 0.5 -- "
      "sh -c 'if [ $RANK = 1 ]; then while [ ! -f " +
          ready + " ]; do sleep 0.05; done; exit 4; fi; trap \"\" TERM; touch " + ready +
          "; sleep 60 & wait; wait'",
      &out);
  std::filesystem::remove(ready);
  EXPECT_EQ(rc, 4) << out;
  EXPECT_LT(seconds_since(start), 10.0);  // the ranks would sleep 60 s
  EXPECT_NE(out.find("sending SIGKILL"), std::string::npos) << out;
}

TEST_F(LaunchProcess, TimeoutStopsTheRanksWith124) {
  std::string out;
  auto start = Clock::now();
  EXPECT_EQ(launch("--nproc-per-node 1 --timeout 0.5 -- sleep 60", &out), 124) << out;
  EXPECT_LT(seconds_since(start), 10.0);  // the ranks would sleep 60 s
  EXPECT_NE(out.find("--timeout of 0.5 s reached"), std::string::npos) << out;
}

TEST_F(LaunchProcess, SigtermIsForwardedToEveryRank) {
  rlhf::testing::TempDir dir("launch");
  const std::string script = "trap 'echo $RANK > " + dir.path() + "/term_$RANK; exit 0' TERM; " +
                             "echo > " + dir.path() + "/ready_$RANK; sleep 60 & wait";
  rlhf::process::Options o;
  o.argv = {rlhf_binary(), "launch", "--nproc-per-node", "2", "--", "sh", "-c", script};
  rlhf::process::Child launcher = rlhf::process::Child::start(o);
  auto ready = [&] {
    return rlhf::file_exists(dir / "ready_0") && rlhf::file_exists(dir / "ready_1");
  };
  for (int i = 0; i < 2000 && !ready(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(ready()) << "the ranks did not start within 20 s";
  launcher.signal(SIGTERM);
  std::optional<rlhf::process::ExitStatus> status = launcher.wait_for(10);
  ASSERT_TRUE(status.has_value()) << "the launcher still ran 10 s after SIGTERM";
  ASSERT_TRUE(status->exited()) << status->describe();
  EXPECT_EQ(status->code(), 128 + SIGTERM);
  EXPECT_TRUE(rlhf::file_exists(dir / "term_0"));
  EXPECT_TRUE(rlhf::file_exists(dir / "term_1"));
}

}  // namespace
