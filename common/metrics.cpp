#include "common/metrics.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"
#include "proto/tensorboard.pb.h"

namespace rlhf {

uint32_t crc32c(const void* data, size_t n) {
  static uint32_t table[256];
  static bool init = [] {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      table[i] = c;
    }
    return true;
  }();
  (void)init;
  uint32_t crc = 0xFFFFFFFFu;
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

namespace {
uint32_t masked_crc(const void* data, size_t n) {
  uint32_t crc = crc32c(data, n);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}
double wall_time() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
}  // namespace

MetricsWriter::MetricsWriter(const std::string& dir, bool append) {
  make_dirs(dir);
  jsonl_path_ = dir + "/metrics.jsonl";
  jsonl_.open(jsonl_path_, append ? std::ios::app : std::ios::trunc);
  if (!jsonl_) throw Error("cannot open " + jsonl_path_ + " for writing");
  char host[64] = "rlhf";
  events_path_ = dir + "/events.out.tfevents." +
                 std::to_string(static_cast<long long>(wall_time())) + "." + host + "." +
                 std::to_string(::getpid());
  events_.open(events_path_, std::ios::binary | std::ios::trunc);
  if (!events_) throw Error("cannot open " + events_path_ + " for writing");
  tensorboard::Event ev;
  ev.set_wall_time(wall_time());
  ev.set_file_version("brain.Event:2");
  write_event(ev.SerializeAsString());
}

MetricsWriter::~MetricsWriter() = default;

void MetricsWriter::write(int64_t step, const std::map<std::string, double>& scalars) {
  nlohmann::json j;
  j["step"] = step;
  tensorboard::Event ev;
  ev.set_wall_time(wall_time());
  ev.set_step(step);
  auto* summary = ev.mutable_summary();
  for (const auto& [name, value] : scalars) {
    if (std::isfinite(value))
      j[name] = value;
    else
      j[name] = nullptr;
    auto* v = summary->add_value();
    v->set_tag(name);
    v->set_simple_value(static_cast<float>(value));
  }
  jsonl_ << j.dump() << '\n';
  jsonl_.flush();
  write_event(ev.SerializeAsString());
}

void MetricsWriter::write_event(const std::string& data) {
  uint64_t len = data.size();
  char header[8];
  for (int i = 0; i < 8; ++i) header[i] = static_cast<char>((len >> (8 * i)) & 0xFF);
  uint32_t len_crc = masked_crc(header, 8);
  uint32_t data_crc = masked_crc(data.data(), data.size());
  auto put32 = [&](uint32_t v) {
    char b[4];
    for (int i = 0; i < 4; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
    events_.write(b, 4);
  };
  events_.write(header, 8);
  put32(len_crc);
  events_.write(data.data(), static_cast<std::streamsize>(data.size()));
  put32(data_crc);
  events_.flush();
}

}  // namespace rlhf
