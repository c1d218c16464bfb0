#include "common/metrics.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/files.h"
#include "proto/tensorboard.pb.h"

namespace fs = std::filesystem;

TEST(Metrics, Crc32cKnownVector) {
  // RFC 3720 test vector: 32 bytes of zeros.
  std::string zeros(32, '\0');
  EXPECT_EQ(rlhf::crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(rlhf::crc32c("123456789", 9), 0xE3069283u);
}

TEST(Metrics, WritesJsonLinesAndReadableEvents) {
  fs::path dir = fs::temp_directory_path() / ("rlhf_metrics_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  std::string events;
  {
    rlhf::MetricsWriter w(dir.string(), false);
    w.write(1, {{"loss", 2.5}, {"lr", 0.001}});
    w.write(2, {{"loss", 2.0}});
    events = w.events_path();
  }
  std::ifstream in(dir / "metrics.jsonl");
  std::string line;
  std::getline(in, line);
  auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["step"], 1);
  EXPECT_DOUBLE_EQ(j["loss"].get<double>(), 2.5);
  // Parse the TFRecord framing back: 3 events (file_version + 2 summaries).
  std::string data = rlhf::read_file(events);
  size_t off = 0;
  int count = 0;
  tensorboard::Event last;
  while (off < data.size()) {
    ASSERT_LE(off + 12, data.size());
    uint64_t len = 0;
    for (int i = 0; i < 8; ++i)
      len |= uint64_t(static_cast<unsigned char>(data[off + i])) << (8 * i);
    off += 12;
    ASSERT_TRUE(last.ParseFromArray(data.data() + off, static_cast<int>(len)));
    off += len + 4;
    ++count;
  }
  EXPECT_EQ(count, 3);
  EXPECT_EQ(last.step(), 2);
  ASSERT_EQ(last.summary().value_size(), 1);
  EXPECT_EQ(last.summary().value(0).tag(), "loss");
  EXPECT_FLOAT_EQ(last.summary().value(0).simple_value(), 2.0f);
  fs::remove_all(dir);
}
