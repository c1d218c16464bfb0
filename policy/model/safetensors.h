// Safetensors reader/writer (https://github.com/huggingface/safetensors format): 8-byte
// little-endian header length, JSON header {name: {dtype, shape, data_offsets}}, raw data. Reads
// are memory-mapped (the file is never read whole); F32, F16 and BF16 tensors are accepted and
// converted to the dtype the caller asks for. Sharded folders (model.safetensors.index.json, as
// transformers writes them) are read through SafetensorsWeights.
//
// Thread safety: the free functions keep no state; reads may run at once, a write races with
// anything else on the same path. A SafetensorsFile / SafetensorsWeights is immutable after
// construction: several threads may read tensors from one at once.
// Ownership: a SafetensorsFile owns its mapping (unmapped on destruction); every tensor returned
// is a new tensor owned by the caller, never a view of the mapping.
// Errors: rlhf::Error naming the file (and the index file for shards) and the tensor, and what was
// expected: truncation, bad header, unsupported dtype, out-of-range offsets, missing shard, a
// tensor the index names but its shard lacks, a wrong shape.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace rlhf::policy {

// One tensor's header entry: dtype (kFloat, kHalf or kBFloat16), shape, byte range in the data.
struct SafetensorsEntry {
  std::string dtype_name;  // "F32", "F16", "BF16"
  torch::ScalarType dtype = torch::kFloat;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets into the data section
};

// One safetensors file, memory-mapped read-only; the header is parsed and every entry checked
// (dtype, shape, offsets within the file) on construction.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }
  bool contains(const std::string& name) const { return entries_.count(name) > 0; }
  // Throws naming the file and tensor when absent.
  const SafetensorsEntry& entry(const std::string& name) const;

  // A new CPU tensor holding tensor `name` converted to `dtype` (one copy from the mapping).
  torch::Tensor read(const std::string& name, torch::ScalarType dtype = torch::kFloat) const;
  // Copies tensor `name` into `dst` (any dtype and device; converted). Throws naming the file and
  // tensor when the shapes differ: "<file>: tensor <name>: expected shape [..], found [..]".
  void read_into(const std::string& name, const torch::Tensor& dst) const;

 private:
  std::string path_;
  const unsigned char* map_ = nullptr;  // the whole file
  uint64_t map_size_ = 0;
  uint64_t data_start_ = 0;
  std::map<std::string, SafetensorsEntry> entries_;
};

// The weights of a model folder, found as transformers finds them: the single file
// <dir>/<single_file> when present, else <dir>/model.safetensors.index.json (its weight_map names,
// for each tensor, the shard file that holds it).
// Every shard is opened and every tensor the index names is checked to be in its shard on
// construction, so a missing shard or tensor is refused before any weight is read.
class SafetensorsWeights {
 public:
  static constexpr const char* kIndexFile = "model.safetensors.index.json";

  SafetensorsWeights(const std::string& dir, const std::string& single_file);

  // The weight files of `dir` as the constructor finds them, without opening the shards: the single
  // file when present, else the index followed by the shards it names (sorted), else none. For
  // fingerprints and manifests. Throws rlhf::Error naming the index when it is not valid.
  static std::vector<std::string> files_in(const std::string& dir, const std::string& single_file);

  bool sharded() const { return !index_path_.empty(); }
  // The file that names the tensors: the index when sharded, else the single file.
  const std::string& source() const { return sharded() ? index_path_ : files_.front()->path(); }
  bool contains(const std::string& name) const { return where_.count(name) > 0; }
  // The shard holding `name`; throws naming source() when absent.
  const SafetensorsFile& file_of(const std::string& name) const;
  // file_of(name).read_into(name, dst); a missing tensor is refused naming source() and the
  // expected shape.
  void read_into(const std::string& name, const torch::Tensor& dst) const;

 private:
  std::string index_path_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*> where_;
};

// Reads every tensor as float32 (F32, F16, BF16 accepted). Throws rlhf::Error naming the file and
// tensor on truncation, bad header, unknown dtype or out-of-range offsets.
std::map<std::string, torch::Tensor> read_safetensors(const std::string& path);

// Writes the tensors (contiguous CPU copies; F16 and BF16 tensors keep their dtype, any other is
// written as F32), names sorted, atomically (a temp file in the same folder, fsync, rename),
// streaming tensor by tensor (no whole-file buffer). Throws rlhf::Error naming the path when it
// cannot be written.
void write_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Bytes a tensor takes in a safetensors file written by write_safetensors.
uint64_t safetensors_bytes(const torch::Tensor& t);

}  // namespace rlhf::policy
