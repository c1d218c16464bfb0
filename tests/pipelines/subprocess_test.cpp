// BackgroundChild (pipelines/internal/subprocess.h) with real processes: a background child does
// not outlive a parent killed with SIGKILL (so a resumed pipeline is not blocked by an orphan
// annotation server holding the socket's lock); StopOnSignals passes SIGTERM / SIGINT on to the
// children and stops them within the stop timeout.
#include "pipelines/internal/subprocess.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <utility>

#include "common/error.h"
#include "common/process.h"

namespace {

// True while `pid` exists and is not a zombie.
bool alive(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string pid_field, comm, state;
  if (!(stat >> pid_field >> comm >> state)) return false;
  return state != "Z" && state != "X";
}

// Forks a parent that starts `sleep 300` as a BackgroundChild, reports the sleeper's pid through
// a pipe and waits; returns {parent, sleeper}.
std::pair<rlhf::process::Child, pid_t> parent_with_background_sleeper() {
  int fds[2];
  if (::pipe(fds) != 0) return {rlhf::process::Child(), -1};
  rlhf::process::Child parent = rlhf::process::Child::fork_call([&] {
    ::close(fds[0]);
    rlhf::pipelines::BackgroundChild sleeper({"/bin/sleep", "300"});
    pid_t pid = sleeper.pid();
    if (::write(fds[1], &pid, sizeof(pid)) != sizeof(pid)) return 1;
    for (;;) ::pause();
  });
  ::close(fds[1]);
  pid_t sleeper = -1;
  if (::read(fds[0], &sleeper, sizeof(sleeper)) != sizeof(sleeper)) sleeper = -1;
  ::close(fds[0]);
  return {std::move(parent), sleeper};
}

}  // namespace

TEST(BackgroundChild, DiesWhenItsParentIsKilled) {
  auto [parent, sleeper] = parent_with_background_sleeper();
  ASSERT_GT(parent.pid(), 0);
  ASSERT_GT(sleeper, 0);
  EXPECT_TRUE(alive(sleeper));
  parent.signal(SIGKILL);  // no destructor runs
  parent.wait();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (alive(sleeper) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const bool orphan_left = alive(sleeper);
  if (orphan_left) ::kill(sleeper, SIGKILL);
  EXPECT_FALSE(orphan_left) << "the background child outlived its parent";
}

TEST(BackgroundChild, StopTerminatesAndReapsIt) {
  rlhf::pipelines::BackgroundChild sleeper({"/bin/sleep", "300"});
  EXPECT_TRUE(sleeper.running());
  EXPECT_EQ(sleeper.stop(), 128 + SIGTERM);
  EXPECT_FALSE(sleeper.running());
  EXPECT_FALSE(alive(sleeper.pid()));
}

// SIGINT to this process while run_child waits: passed on to the child (`sleep` dies of it), and
// run_child throws "stopped by SIGINT" with exit code 130; later children are refused.
TEST(StopOnSignals, ASignalIsPassedOnAndRunChildThrows) {
  rlhf::pipelines::StopOnSignals stop(5);
  std::thread raiser([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ::kill(::getpid(), SIGINT);
  });
  const auto t0 = std::chrono::steady_clock::now();
  try {
    rlhf::pipelines::run_child({"/bin/sleep", "30"});
    ADD_FAILURE() << "run_child returned after SIGINT";
  } catch (const rlhf::Error& e) {
    EXPECT_EQ(std::string(e.what()), "stopped by SIGINT");
    EXPECT_EQ(e.exit_code(), 128 + SIGINT);
  }
  raiser.join();
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
  EXPECT_EQ(rlhf::pipelines::stop_signal(), SIGINT);
  EXPECT_THROW(rlhf::pipelines::run_child({"/bin/true"}), rlhf::Error);
}

// A child that ignores SIGTERM gets the stop timeout, then SIGKILL; a background child is
// signalled too.
TEST(StopOnSignals, AChildIgnoringTheSignalIsKilledAfterTheStopTimeout) {
  rlhf::pipelines::StopOnSignals stop(0.5);
  rlhf::pipelines::BackgroundChild server({"/bin/sleep", "30"});
  const pid_t server_pid = server.pid();
  std::thread raiser([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ::kill(::getpid(), SIGTERM);
  });
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(rlhf::pipelines::run_child({"/bin/sh", "-c", "trap '' TERM; exec sleep 30"}),
               rlhf::Error);
  raiser.join();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GT(s, 0.7);  // 0.3 s before the signal, then the 0.5 s stop timeout
  EXPECT_LT(s, 5.0);
  EXPECT_FALSE(server.running());  // SIGTERM passed on; reaped
  EXPECT_FALSE(alive(server_pid));
}
