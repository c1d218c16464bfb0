#include "common/files.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>

#include "common/error.h"

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

TEST(Files, ReadMaybeGzipReadsPlainAndGzipAndNamesThePathOnErrors) {
  fs::path dir = fs::temp_directory_path() / ("rlhf_gz_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::string text = "line one\nline two\n";
  for (int i = 0; i < 2000; ++i) text += "more text " + std::to_string(i) + "\n";  // > one buffer
  std::string plain = (dir / "a.jsonl").string();
  rlhf::write_file_atomic(plain, text);
  EXPECT_EQ(rlhf::read_file_maybe_gzip(plain), text);
  // Gzip content is detected from the magic bytes, not the name.
  std::string packed = (dir / "packed.jsonl").string();
  gzFile g = gzopen(packed.c_str(), "wb");
  ASSERT_NE(g, nullptr);
  ASSERT_EQ(gzwrite(g, text.data(), static_cast<unsigned>(text.size())),
            static_cast<int>(text.size()));
  gzclose(g);
  EXPECT_NE(rlhf::read_file(packed), text);
  EXPECT_EQ(rlhf::read_file_maybe_gzip(packed), text);
  // A truncated gzip stream is an error naming the file, not a silently short text.
  std::string whole = rlhf::read_file(packed);
  std::string cut = (dir / "cut.gz").string();
  rlhf::write_file_atomic(cut, whole.substr(0, whole.size() / 2));
  try {
    rlhf::read_file_maybe_gzip(cut);
    FAIL() << "expected an error for a truncated gzip file";
  } catch (const rlhf::Error& e) {
    EXPECT_NE(std::string(e.what()).find(cut), std::string::npos) << e.what();
  }
  try {
    rlhf::read_file_maybe_gzip((dir / "missing.gz").string());
    FAIL() << "expected an error for a missing file";
  } catch (const rlhf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.gz"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
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
