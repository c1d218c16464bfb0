// Helpers shared by test suites: locating ../shared/data, temp folders, the rlhf binary, and
// running child processes (tests/fixtures/child_process.h, included here). The other fixtures
// are in tests/fixtures/: the tiny model (tiny_model.h), the annotation server
// (annotation_server.h), SFT data (sft_data.h) and preference data (preference_data.h).
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "tests/fixtures/child_process.h"

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

}  // namespace rlhf::testing
