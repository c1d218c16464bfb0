// Per-step metrics: one JSON object per line in `metrics.jsonl`, and the same scalars as a
// TensorBoard event file (`events.out.tfevents.<time>.rlhf`) in the same folder.
//
// Errors: the constructor throws rlhf::Error naming the folder or file it cannot create or open;
// write() does not check for write errors (a full disk loses metrics, not the run).
// Thread safety: a MetricsWriter is used from one thread at a time; crc32c is pure.
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <string>

namespace rlhf {

class MetricsWriter {
 public:
  // Opens (appends to) <dir>/metrics.jsonl and starts a new TensorBoard event file in <dir>.
  // With append=false an existing metrics.jsonl is truncated.
  explicit MetricsWriter(const std::string& dir, bool append = true);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  // Writes one record: {"step": step, "<name>": value, ...}; flushed at once.
  void write(int64_t step, const std::map<std::string, double>& scalars);

  const std::string& jsonl_path() const { return jsonl_path_; }
  const std::string& events_path() const { return events_path_; }

 private:
  void write_event(const std::string& serialized);

  std::string jsonl_path_, events_path_;
  std::ofstream jsonl_, events_;
};

// CRC32C (Castagnoli), as TFRecord framing needs; exposed for tests.
uint32_t crc32c(const void* data, size_t n);

}  // namespace rlhf
