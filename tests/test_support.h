// Helpers shared by test suites: locating ../shared/data, temp folders, running the rlhf binary.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace rlhf::testing {

// Absolute path of <source>/../shared/data/<rel>, or "" when missing. When it is missing, the test
// is skipped, unless RLHF_REQUIRE_SHARED_DATA=1 (CI), where it fails loudly.
inline std::string shared_data(const std::string& rel) {
  std::string p = std::string(RLHF_SHARED_DATA_DIR) + "/" + rel;
  if (std::filesystem::exists(p)) return p;
  return "";
}

#define RLHF_REQUIRE_DATA(var, rel)                                                \
  std::string var = ::rlhf::testing::shared_data(rel);                             \
  if (var.empty()) {                                                               \
    const char* req = std::getenv("RLHF_REQUIRE_SHARED_DATA");                     \
    if (req && std::string(req) == "1") {                                          \
      FAIL() << "shared data missing: " << RLHF_SHARED_DATA_DIR << "/" << rel      \
             << " (RLHF_REQUIRE_SHARED_DATA=1)";                                   \
    }                                                                              \
    GTEST_SKIP() << "shared data missing: " << RLHF_SHARED_DATA_DIR << "/" << rel; \
  }

// The device the tests that train or generate run on: $RLHF_TEST_DEVICE ("cpu", "cuda", "cuda:N"),
// "cpu" when unset. scripts/device/check.sh sets RLHF_TEST_DEVICE=cuda on a GPU machine; the
// tests pass it as a config's `device` or to policy::resolve_device.
inline std::string test_device_name() {
  const char* v = std::getenv("RLHF_TEST_DEVICE");
  return v && *v ? v : "cpu";
}

// A fresh temporary folder removed when the object goes away.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "t") {
    static int counter = 0;
    path_ = (std::filesystem::temp_directory_path() /
             ("rlhf_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++)))
                .string();
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

// Path of the built rlhf executable.
inline std::string rlhf_binary() { return std::string(RLHF_BINARY_DIR) + "/rlhf"; }

// Runs a shell command, capturing stdout (and stderr when merge_stderr); returns the exit code.
inline int run_command(const std::string& cmd, std::string* output, bool merge_stderr = true) {
  std::string full = cmd + (merge_stderr ? " 2>&1" : "");
  FILE* p = ::popen(full.c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  size_t n;
  if (output) output->clear();
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0)
    if (output) output->append(buf, n);
  int status = ::pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// `rlhf annotate serve --db DB --socket SOCKET` as a child process; waits (up to 10 s) for the
// socket to appear. stop() sends SIGTERM and returns the exit code (128 + signal when killed); the
// destructor stops a server that is still running.
struct ServeProcess {
  ServeProcess(const std::string& db, const std::string& socket) : socket(socket) {
    std::vector<std::string> args = {rlhf_binary(), "annotate", "serve", "--db", db,
                                     "--socket",    socket};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    EXPECT_EQ(posix_spawn(&pid, args[0].c_str(), nullptr, nullptr, argv.data(), environ), 0);
    for (int i = 0; i < 1000 && !std::filesystem::exists(socket); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_TRUE(std::filesystem::exists(socket)) << "server did not start";
  }
  ServeProcess(const ServeProcess&) = delete;
  ServeProcess& operator=(const ServeProcess&) = delete;
  int stop() {
    if (pid <= 0) return -1;
    ::kill(pid, SIGTERM);
    int status = 0;
    ::waitpid(pid, &status, 0);
    pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  ~ServeProcess() {
    if (pid > 0) stop();
  }
  pid_t pid = -1;
  std::string socket;
};

}  // namespace rlhf::testing
