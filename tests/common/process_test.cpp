// common/process.h with real processes: start, exit codes, signals, deadlines, redirects, the
// environment, process groups, the one wait-status description, and no zombie or orphan left
// after a Child is destroyed.
#include "common/process.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/files.h"
#include "tests/test_support.h"

namespace {

namespace process = rlhf::process;
using Clock = std::chrono::steady_clock;
using rlhf::testing::TempDir;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

process::Options sh(const std::string& script) {
  process::Options o;
  o.argv = {"/bin/sh", "-c", script};
  return o;
}

// True while `pid` exists as anything but a zombie.
bool alive(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string pid_field, comm, state;
  if (!(stat >> pid_field >> comm >> state)) return false;
  return state != "Z" && state != "X";
}

// True while `pid` exists at all (a zombie included).
bool exists(pid_t pid) { return ::kill(pid, 0) == 0; }

// Waits up to 10 s for `path` to hold a line; returns its first one as a pid.
pid_t pid_from_file(const std::string& path) {
  for (int i = 0; i < 1000; ++i) {
    std::ifstream in(path);
    pid_t pid = 0;
    if (in >> pid && pid > 0) return pid;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return -1;
}

TEST(WaitStatus, DescribesExitsAndSignals) {
  EXPECT_EQ(process::describe_wait_status(3 << 8), "exited with status 3");
  EXPECT_EQ(process::exit_code_of(3 << 8), 3);
  EXPECT_EQ(process::describe_wait_status(SIGKILL), "was killed by signal 9 (SIGKILL)");
  EXPECT_EQ(process::exit_code_of(SIGKILL), 137);
  EXPECT_EQ(process::describe_wait_status(SIGTERM), "was killed by signal 15 (SIGTERM)");
  EXPECT_EQ(process::describe_wait_status(0x137f), "stopped with wait status 4991");
  EXPECT_EQ(process::exit_code_of(0x137f), 1);
}

TEST(Environment, MergeReplacesExistingNamesAndAppendsNewOnes) {
  auto env = process::merge_environment({"PATH=/bin", "RANK=7", "RANKS=x"},
                                        {{"RANK", "0"}, {"WORLD_SIZE", "2"}});
  EXPECT_EQ(env, (std::vector<std::string>{"PATH=/bin", "RANK=0", "RANKS=x", "WORLD_SIZE=2"}));
}

TEST(Program, FoundThroughPathOrTakenAsAPath) {
  EXPECT_EQ(process::find_in_path("sh", "/nonexistent:/bin:/usr/bin"), "/bin/sh");
  EXPECT_EQ(process::find_in_path("./x", ""), "./x");
  try {
    process::find_in_path("no-such-program-xyz", "/bin");
    FAIL() << "a missing program must throw";
  } catch (const rlhf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'no-such-program-xyz' not found"), std::string::npos);
  }
  EXPECT_EQ(process::join_command({"a", "b c", "d'e"}), "a 'b c' 'd'e'");
}

TEST(Child, ReportsTheExitCode) {
  process::ExitStatus s = process::run(sh("exit 3"));
  EXPECT_TRUE(s.exited());
  EXPECT_EQ(s.code(), 3);
  EXPECT_EQ(s.signal(), 0);
  EXPECT_FALSE(s.success());
  EXPECT_EQ(s.describe(), "exited with status 3");
  EXPECT_TRUE(process::run(sh("true")).success());
}

TEST(Child, ASignalEndsItAndIsDescribed) {
  process::Child c = process::Child::start(sh("exec sleep 60"));
  EXPECT_TRUE(c.running());
  EXPECT_TRUE(c.signal(SIGKILL));
  process::ExitStatus s = c.wait();
  EXPECT_FALSE(s.exited());
  EXPECT_EQ(s.signal(), SIGKILL);
  EXPECT_EQ(s.code(), 137);
  EXPECT_EQ(s.describe(), "was killed by signal 9 (SIGKILL)");
  EXPECT_FALSE(c.running());
  EXPECT_FALSE(c.signal(SIGTERM)) << "a reaped child is not signalled";
  ASSERT_TRUE(c.status().has_value());
  EXPECT_EQ(c.status()->wait_status, s.wait_status);
}

TEST(Child, WaitForReturnsAtTheDeadlineAndStopEscalates) {
  process::Options ignores_term = sh("trap '' TERM; sleep 60 & wait; wait");
  ignores_term.own_process_group = true;  // SIGTERM and SIGKILL reach the sleep too
  process::Child c = process::Child::start(ignores_term);
  auto start = Clock::now();
  EXPECT_FALSE(c.wait_for(0.3).has_value());
  const double waited = seconds_since(start);
  EXPECT_GE(waited, 0.3);
  EXPECT_LT(waited, 5.0);
  start = Clock::now();
  process::ExitStatus s = c.stop(0.5);  // SIGTERM is ignored: SIGKILL after 0.5 s
  EXPECT_EQ(s.signal(), SIGKILL);
  EXPECT_GE(seconds_since(start), 0.5);
  EXPECT_LT(seconds_since(start), 10.0);

  process::Child quick = process::Child::start(sh("exit 4"));
  auto done = quick.wait_for(10);
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->code(), 4);
}

TEST(Child, DestroyedWhileRunningLeavesNoZombie) {
  pid_t pid = -1;
  {
    process::Child c = process::Child::start(sh("exec sleep 60"));
    pid = c.pid();
    ASSERT_GT(pid, 0);
    EXPECT_TRUE(alive(pid));
  }
  EXPECT_FALSE(exists(pid)) << "pid " << pid << " is still there (a zombie or running)";
}

TEST(Child, EndedButNeverWaitedForIsReapedOnDestruction) {
  pid_t pid = -1;
  {
    process::Child c = process::Child::start(sh("exit 0"));
    pid = c.pid();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // a zombie now
  }
  EXPECT_FALSE(exists(pid));
}

TEST(Child, OwnProcessGroupTakesItsDescendantsAlongOnDestruction) {
  TempDir dir("proc");
  pid_t grandchild = -1;
  {
    process::Options o = sh("sleep 60 & echo $! > " + (dir / "pid") + "; wait");
    o.own_process_group = true;
    process::Child c = process::Child::start(o);
    EXPECT_EQ(::getpgid(c.pid()), c.pid());
    grandchild = pid_from_file(dir / "pid");
    ASSERT_GT(grandchild, 0);
    EXPECT_EQ(::getpgid(grandchild), c.pid());
    EXPECT_TRUE(alive(grandchild));
  }
  auto start = Clock::now();  // the grandchild is reaped by init, not by us: give it a moment
  while (alive(grandchild) && seconds_since(start) < 10)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_FALSE(alive(grandchild)) << "the grandchild outlived its group's Child";
}

TEST(Child, SignalReachesTheWholeGroup) {
  TempDir dir("proc");
  process::Options o =
      sh("trap 'echo term > " + (dir / "parent") + "; exit 0' TERM; " +
         "sh -c 'trap \"echo term > " + (dir / "child") + "; exit 0\" TERM; echo ready > " +
         (dir / "ready") + "; sleep 60 & wait' & wait");
  o.own_process_group = true;
  process::Child c = process::Child::start(o);
  for (int i = 0; i < 1000 && !rlhf::file_exists(dir / "ready"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_TRUE(rlhf::file_exists(dir / "ready"));
  EXPECT_TRUE(c.signal(SIGTERM));
  auto s = c.wait_for(10);
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->code(), 0);
  for (int i = 0; i < 1000 && !rlhf::file_exists(dir / "child"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(rlhf::file_exists(dir / "parent"));
  EXPECT_TRUE(rlhf::file_exists(dir / "child"));
}

TEST(Child, EnvironmentOverridesAndAnEmptyBase) {
  ::setenv("RLHF_PROCESS_TEST_KEEP", "kept", 1);
  ::setenv("RLHF_PROCESS_TEST_SET", "old", 1);
  process::Options o = sh("echo $RLHF_PROCESS_TEST_KEEP $RLHF_PROCESS_TEST_SET $NEW_ONE");
  o.env = {{"RLHF_PROCESS_TEST_SET", "new"}, {"NEW_ONE", "x"}};
  EXPECT_EQ(process::run_capture(o).out, "kept new x\n");
  o.argv = {"/usr/bin/env"};
  o.clear_env = true;
  EXPECT_EQ(process::run_capture(o).out, "RLHF_PROCESS_TEST_SET=new\nNEW_ONE=x\n");
  ::unsetenv("RLHF_PROCESS_TEST_KEEP");
  ::unsetenv("RLHF_PROCESS_TEST_SET");
}

TEST(Child, WorkingDirectoryAndProgramSeparateFromArgvZero) {
  TempDir dir("proc");
  process::Options o = sh("pwd; echo $0");
  o.working_dir = dir.path();
  o.argv[0] = "my-shell";
  o.program = "sh";  // looked up in PATH
  process::Captured c = process::run_capture(o);
  EXPECT_TRUE(c.status.success());
  EXPECT_EQ(c.out, std::filesystem::canonical(dir.path()).string() + "\nmy-shell\n");
}

TEST(Child, RedirectsToFilesPipesAndNull) {
  TempDir dir("proc");
  process::Options o = sh("echo out; echo err >&2");
  o.stdout_redirect = process::Redirect::file(dir / "log");
  o.stderr_redirect = process::Redirect::to_stdout();
  EXPECT_TRUE(process::run(o).success());
  EXPECT_EQ(rlhf::read_file(dir / "log"), "out\nerr\n");
  o.stdout_redirect = process::Redirect::append(dir / "log");
  o.stderr_redirect = process::Redirect::null();
  EXPECT_TRUE(process::run(o).success());
  EXPECT_EQ(rlhf::read_file(dir / "log"), "out\nerr\nout\n");

  o.stdout_redirect = process::Redirect::pipe();
  o.stderr_redirect = process::Redirect::pipe();
  process::Child c = process::Child::start(o);
  EXPECT_GE(c.stdout_fd(), 0);
  EXPECT_GE(c.stderr_fd(), 0);
  std::string err;
  EXPECT_EQ(c.read_stdout(&err), "out\n");
  EXPECT_EQ(err, "err\n");
  EXPECT_EQ(c.stdout_fd(), -1);
  EXPECT_TRUE(c.wait().success());

  rlhf::write_file_atomic(dir / "in", "from a file\n");
  process::Options cat;
  cat.argv = {"cat"};
  cat.stdin_redirect = process::Redirect::file(dir / "in");
  EXPECT_EQ(process::run_capture(cat).out, "from a file\n");
  cat.stdin_redirect = process::Redirect::null();
  EXPECT_EQ(process::run_capture(cat).out, "");
}

TEST(Child, StartFailuresThrowNamingTheProgramAndLeaveNothingRunning) {
  process::Options o;
  o.argv = {"no-such-program-xyz"};
  EXPECT_THROW(process::Child::start(o), rlhf::Error);
  TempDir dir("proc");
  rlhf::write_file_atomic(dir / "not-executable", "#!/bin/sh\n");
  o.argv = {dir / "not-executable"};
  try {
    process::Child::start(o);
    FAIL() << "a file without execute permission must not start";
  } catch (const rlhf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("not-executable"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("Permission denied"), std::string::npos) << e.what();
  }
  o = sh("true");
  o.working_dir = dir / "missing";
  try {
    process::Child::start(o);
    FAIL() << "a missing working directory must not start";
  } catch (const rlhf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("working directory"), std::string::npos) << e.what();
  }
  o = sh("true");
  o.stdout_redirect = process::Redirect::file(dir / "missing/log");
  EXPECT_THROW(process::Child::start(o), rlhf::Error);
  EXPECT_THROW(process::Child::start(process::Options{}), rlhf::Error);
  EXPECT_EQ(::waitpid(-1, nullptr, WNOHANG), -1) << "a failed start left a child behind";
}

TEST(Child, OpenFileLimitAndDefaultSignalDispositions) {
  process::Options o = sh("ulimit -n");
  o.max_open_files = 64;
  EXPECT_EQ(process::run_capture(o).out, "64\n");

  // This process ignores SIGPIPE (as the annotation client does); the child does not.
  struct sigaction ignore = {}, old = {};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ignore, &old);
  const std::string mask = process::run_capture(sh("grep SigIgn /proc/self/status")).out;
  ::sigaction(SIGPIPE, &old, nullptr);
  const unsigned long long ignored = std::stoull(mask.substr(mask.find(':') + 1), nullptr, 16);
  EXPECT_EQ(ignored & (1ull << (SIGPIPE - 1)), 0u) << mask;
}

TEST(Child, ForkCallRunsAFunctionInAChild) {
  TempDir dir("proc");
  process::Child c = process::Child::fork_call([&] {
    std::ofstream(dir / "ran") << ::getpid();
    return 7;
  });
  EXPECT_EQ(c.wait().code(), 7);
  EXPECT_EQ(rlhf::read_file(dir / "ran"), std::to_string(c.pid()));
  EXPECT_EQ(process::Child::fork_call([]() -> int { throw std::runtime_error("x"); }).wait().code(),
            125);
  EXPECT_EQ(rlhf::testing::run_in_child([] { return 5; }), 5);
  process::Options o;
  o.argv = {"x"};
  EXPECT_THROW(process::Child::fork_call([] { return 0; }, o), rlhf::Error);
}

TEST(Child, DieWithParentEndsTheChildWhenItsParentIsKilled) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  process::Child parent = process::Child::fork_call([&] {
    process::Options o;
    o.argv = {"/bin/sleep", "300"};
    o.die_with_parent = true;
    process::Child sleeper = process::Child::start(o);
    const pid_t pid = sleeper.pid();
    if (::write(fds[1], &pid, sizeof pid) != sizeof pid) return 1;
    for (;;) ::pause();
  });
  pid_t sleeper = -1;
  ASSERT_EQ(::read(fds[0], &sleeper, sizeof sleeper), static_cast<ssize_t>(sizeof sleeper));
  ::close(fds[0]);
  ::close(fds[1]);
  EXPECT_TRUE(alive(sleeper));
  parent.signal(SIGKILL);  // no destructor runs in the parent
  parent.wait();
  auto start = Clock::now();
  while (alive(sleeper) && seconds_since(start) < 30)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const bool orphan_left = alive(sleeper);
  if (orphan_left) ::kill(sleeper, SIGKILL);
  EXPECT_FALSE(orphan_left) << "the child outlived its parent";
}

TEST(Child, MoveTransfersOwnershipAndAssignmentReapsTheOldOne) {
  process::Child a = process::Child::start(sh("exec sleep 60"));
  const pid_t first = a.pid();
  process::Child b = std::move(a);
  EXPECT_EQ(a.pid(), -1);  // NOLINT(bugprone-use-after-move): moved-from is empty by contract
  EXPECT_EQ(b.pid(), first);
  b = process::Child::start(sh("exit 2"));
  EXPECT_FALSE(exists(first)) << "the replaced child was not killed and reaped";
  EXPECT_EQ(b.wait().code(), 2);
  EXPECT_THROW(a.poll(), rlhf::Error);
}

TEST(RunCommand, CapturesLikePopenDid) {
  std::string out;
  EXPECT_EQ(rlhf::testing::run_command("(echo a; echo b >&2; exit 3)", &out), 3);
  EXPECT_EQ(out, "a\nb\n");
  EXPECT_EQ(rlhf::testing::run_command("echo a; echo b >&2", &out, /*merge_stderr=*/false), 0);
  EXPECT_EQ(out, "a\n");
  EXPECT_EQ(rlhf::testing::run_command("kill -9 $$", &out), -1);
}

}  // namespace
