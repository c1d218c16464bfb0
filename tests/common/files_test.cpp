#include <gtest/gtest.h>

#include <filesystem>

#include "common/error.h"
#include "common/files.h"

namespace fs = std::filesystem;

TEST(Files, AtomicWriteReplacesContentAndLeavesNoTemp) {
  fs::path dir = fs::temp_directory_path() / ("rlhf_files_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::string p = (dir / "a.txt").string();
  rlhf::write_file_atomic(p, "first");
  rlhf::write_file_atomic(p, "second");
  EXPECT_EQ(rlhf::read_file(p), "second");
  int n = 0;
  for (auto& e : fs::directory_iterator(dir)) (void)e, ++n;
  EXPECT_EQ(n, 1);
  fs::remove_all(dir);
}

TEST(Files, Sha256MatchesKnownVector) {
  EXPECT_EQ(rlhf::sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Files, ReadMissingFileNamesPath) {
  try {
    rlhf::read_file("/nonexistent/xyz.bin");
    FAIL();
  } catch (const rlhf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/xyz.bin"), std::string::npos);
  }
}

TEST(Files, ContextIsPrepended) {
  try {
    try {
      throw rlhf::Error("inner");
    } catch (...) {
      rlhf::rethrow_with_context("outer");
    }
  } catch (const rlhf::Error& e) {
    EXPECT_EQ(std::string(e.what()), "outer: inner");
  }
}
