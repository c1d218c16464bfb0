// Helpers shared by test suites: locating ../shared/data, temp folders, running the rlhf binary.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace rlhf::testing {

// Absolute path of <source>/../shared/data/<rel>, or "" when missing. When it is missing, the test
// is skipped, unless RLHF_REQUIRE_SHARED_DATA=1 (CI), where it fails loudly.
inline std::string shared_data(const std::string& rel) {
  std::string p = std::string(RLHF_SHARED_DATA_DIR) + "/" + rel;
  if (std::filesystem::exists(p)) return p;
  return "";
}

#define RLHF_REQUIRE_DATA(var, rel)                                                        \
  std::string var = ::rlhf::testing::shared_data(rel);                                     \
  if (var.empty()) {                                                                       \
    const char* req = std::getenv("RLHF_REQUIRE_SHARED_DATA");                             \
    if (req && std::string(req) == "1") {                                                  \
      FAIL() << "shared data missing: " << RLHF_SHARED_DATA_DIR << "/" << rel              \
             << " (RLHF_REQUIRE_SHARED_DATA=1)";                                           \
    }                                                                                      \
    GTEST_SKIP() << "shared data missing: " << RLHF_SHARED_DATA_DIR << "/" << rel;         \
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

}  // namespace rlhf::testing
