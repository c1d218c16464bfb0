#include "policy/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <vector>

#include "common/error.h"
#include "common/files.h"

namespace rlhf::policy {

namespace {

namespace fs = std::filesystem;

std::string shape_text(torch::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Upper bound for the JSON header (the format's own limit is 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

// Parses the 8-byte header length and the JSON header of a mapped file of `size` bytes.
nlohmann::json parse_header(const unsigned char* map, uint64_t size, const std::string& path,
                            uint64_t* data_start) {
  if (size < 8)
    throw Error(path + ": truncated safetensors file: " + std::to_string(size) +
                " bytes, expected at least 8 (header length)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | map[i];
  if (header_len > kMaxHeaderBytes || 8 + header_len > size)
    throw Error(path + ": truncated or corrupt safetensors file: header length " +
                std::to_string(header_len) + " but the file has " + std::to_string(size) +
                " bytes");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(map + 8, map + 8 + header_len);
  } catch (const std::exception& e) {
    throw Error(path + ": bad safetensors header (not JSON): " + e.what());
  }
  if (!j.is_object()) throw Error(path + ": bad safetensors header: expected a JSON object");
  *data_start = 8 + header_len;
  return j;
}

// One tensor's header entry, checked against itself: a known dtype, no negative dimension, and
// data_offsets spanning exactly the bytes the dtype and shape need.
SafetensorsEntry parse_entry(const nlohmann::json& e, const std::string& where) {
  if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
    throw Error(where + ": header entry needs dtype, shape and data_offsets");
  SafetensorsEntry t;
  try {
    t.dtype_name = e["dtype"].get<std::string>();
    t.shape = e["shape"].get<std::vector<int64_t>>();
    auto offs = e["data_offsets"].get<std::vector<uint64_t>>();
    if (offs.size() != 2) throw std::runtime_error("data_offsets needs 2 numbers");
    t.begin = offs[0];
    t.end = offs[1];
  } catch (const std::exception& ex) {
    throw Error(where + ": bad header entry: " + ex.what());
  }
  int64_t elem = 0;
  if (t.dtype_name == "F32") {
    t.dtype = torch::kFloat, elem = 4;
  } else if (t.dtype_name == "F16") {
    t.dtype = torch::kHalf, elem = 2;
  } else if (t.dtype_name == "BF16") {
    t.dtype = torch::kBFloat16, elem = 2;
  } else {
    throw Error(where + ": unsupported dtype '" + t.dtype_name + "', expected F32, F16 or BF16");
  }
  int64_t numel = 1;
  for (auto d : t.shape) {
    if (d < 0) throw Error(where + ": negative dimension in shape " + shape_text(t.shape));
    numel *= d;
  }
  if (t.end < t.begin || t.end - t.begin != uint64_t(numel * elem))
    throw Error(where + ": data_offsets [" + std::to_string(t.begin) + ", " +
                std::to_string(t.end) + "] hold " + std::to_string(t.end - t.begin) +
                " bytes, expected " + std::to_string(numel * elem) + " for " + t.dtype_name + " " +
                shape_text(t.shape));
  return t;
}

// Opens and maps `path` read-only; returns the mapping and sets *size. Throws naming the path.
const unsigned char* map_file(const std::string& path, uint64_t* size) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    throw Error("cannot open " + path + " (safetensors weights): no such file or not readable");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw Error("cannot stat " + path + ": " + std::strerror(errno));
  }
  *size = uint64_t(st.st_size);
  if (*size < 8) {
    ::close(fd);
    throw Error(path + ": truncated safetensors file: " + std::to_string(*size) +
                " bytes, expected at least 8 (header length)");
  }
  void* p = ::mmap(nullptr, size_t(*size), PROT_READ, MAP_PRIVATE, fd, 0);
  const int mmap_errno = errno;
  ::close(fd);  // the mapping keeps the file open
  if (p == MAP_FAILED) throw Error("cannot map " + path + ": " + std::strerror(mmap_errno));
  return static_cast<const unsigned char*>(p);
}

const char* file_dtype_name(torch::ScalarType t) {
  return t == torch::kHalf ? "F16" : t == torch::kBFloat16 ? "BF16" : "F32";
}

// Writes all of `data` to `fd` (retrying short writes); throws naming `path`.
void write_all(int fd, const char* data, size_t size, const std::string& path) {
  size_t off = 0;
  while (off < size) {
    ssize_t n = ::write(fd, data + off, size - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error("cannot write " + path + ": " + std::strerror(errno));
    }
    off += size_t(n);
  }
}

// Streams `header` then each tensor's bytes into a new file `tmp` and fsyncs it. Throws naming tmp.
void write_streaming(const std::string& tmp, const std::string& header,
                     const std::vector<torch::Tensor>& data) {
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error("cannot create " + tmp + ": " + std::strerror(errno));
  std::unique_ptr<int, void (*)(int*)> closer(&fd, [](int* f) { ::close(*f); });
  write_all(fd, header.data(), header.size(), tmp);
  for (const auto& t : data)
    write_all(fd, static_cast<const char*>(t.data_ptr()), size_t(t.numel() * t.element_size()),
              tmp);
  if (::fsync(fd) != 0) throw Error("cannot fsync " + tmp + ": " + std::strerror(errno));
}

}  // namespace

// ---- SafetensorsFile ----------------------------------------------------------------------------

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  map_ = map_file(path, &map_size_);
  try {
    const nlohmann::json j = parse_header(map_, map_size_, path, &data_start_);
    const uint64_t data_size = map_size_ - data_start_;
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (it.key() == "__metadata__") continue;
      const std::string where = path + ": tensor " + it.key();
      SafetensorsEntry e = parse_entry(it.value(), where);
      if (e.end > data_size)
        throw Error(where + ": truncated file: data ends at byte " +
                    std::to_string(data_start_ + e.end) + " but the file has " +
                    std::to_string(map_size_) + " bytes");
      entries_.emplace(it.key(), std::move(e));
    }
  } catch (...) {
    ::munmap(const_cast<unsigned char*>(map_), size_t(map_size_));
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(const_cast<unsigned char*>(map_), size_t(map_size_));
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw Error(path_ + ": no tensor " + name);
  return it->second;
}

void SafetensorsFile::read_into(const std::string& name, const torch::Tensor& dst) const {
  const SafetensorsEntry& e = entry(name);
  if (dst.sizes() != torch::IntArrayRef(e.shape))
    throw Error(path_ + ": tensor " + name + ": expected shape " + shape_text(dst.sizes()) +
                ", found " + shape_text(e.shape));
  const unsigned char* p = map_ + data_start_ + e.begin;
  const auto elem = int64_t(torch::elementSize(e.dtype));
  torch::NoGradGuard no_grad;
  if (reinterpret_cast<uintptr_t>(p) % uintptr_t(elem) == 0) {
    auto src = torch::from_blob(const_cast<unsigned char*>(p), e.shape,
                                torch::TensorOptions().dtype(e.dtype));
    dst.copy_(src);
  } else {  // data not aligned to its element size: copy the bytes out first
    auto src = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype));
    std::memcpy(src.data_ptr(), p, size_t(e.end - e.begin));
    dst.copy_(src);
  }
}

torch::Tensor SafetensorsFile::read(const std::string& name, torch::ScalarType dtype) const {
  auto out = torch::empty(entry(name).shape, torch::TensorOptions().dtype(dtype));
  read_into(name, out);
  return out;
}

// ---- SafetensorsWeights -------------------------------------------------------------------------

namespace {

// The weight_map of an index file: tensor name -> shard file name (checked: an object of strings,
// each a plain file name).
std::map<std::string, std::string> read_weight_map(const std::string& index_path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(index_path));
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(index_path + ": not valid JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    throw Error(index_path + ": missing field 'weight_map' (expected an object: tensor name -> " +
                "shard file)");
  std::map<std::string, std::string> out;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (!it.value().is_string())
      throw Error(index_path + ": weight_map['" + it.key() + "'] = " + it.value().dump() +
                  ", expected a shard file name");
    const std::string file = it.value().get<std::string>();
    if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..")
      throw Error(index_path + ": weight_map['" + it.key() + "'] = \"" + file +
                  "\", expected a file name in the same folder");
    out[it.key()] = file;
  }
  return out;
}

}  // namespace

SafetensorsWeights::SafetensorsWeights(const std::string& dir, const std::string& single_file) {
  // As transformers: the single file when present, else the index.
  const std::string index_path = dir + "/" + kIndexFile;
  const bool single = fs::exists(dir + "/" + single_file);
  if (!single && !fs::exists(index_path))
    throw Error("cannot open " + dir + "/" + single_file + " (safetensors weights): no such " +
                "file, and no " + kIndexFile + " for sharded weights");
  if (single) {
    files_.push_back(std::make_unique<SafetensorsFile>(dir + "/" + single_file));
    for (const auto& [name, e] : files_.front()->entries()) where_[name] = files_.front().get();
    return;
  }
  index_path_ = index_path;
  const auto weight_map = read_weight_map(index_path);
  std::map<std::string, const SafetensorsFile*> by_file;
  for (const auto& [name, file] : weight_map) {
    auto it = by_file.find(file);
    if (it == by_file.end()) {
      const std::string shard = dir + "/" + file;
      if (!fs::exists(shard))
        throw Error(index_path + ": shard " + file + " (holding tensor " + name +
                    ") not found: " + shard);
      try {
        files_.push_back(std::make_unique<SafetensorsFile>(shard));
      } catch (...) {
        rethrow_with_context(index_path + ": shard " + file);
      }
      it = by_file.emplace(file, files_.back().get()).first;
    }
    if (!it->second->contains(name))
      throw Error(it->second->path() + ": tensor " + name + " named by " + index_path +
                  " is not in this shard");
    where_[name] = it->second;
  }
}

std::vector<std::string> SafetensorsWeights::files_in(const std::string& dir,
                                                      const std::string& single_file) {
  const std::string single = dir + "/" + single_file, index = dir + "/" + kIndexFile;
  if (fs::exists(single)) return {single};
  if (!fs::exists(index)) return {};
  std::vector<std::string> out{index};
  std::set<std::string> shards;
  for (const auto& [name, file] : read_weight_map(index)) shards.insert(file);
  for (const auto& file : shards) out.push_back(dir + "/" + file);
  return out;
}

const SafetensorsFile& SafetensorsWeights::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw Error(source() + ": missing tensor " + name);
  return *it->second;
}

void SafetensorsWeights::read_into(const std::string& name, const torch::Tensor& dst) const {
  if (!contains(name))
    throw Error(source() + ": missing tensor " + name + " (expected shape " +
                shape_text(dst.sizes()) + ")");
  file_of(name).read_into(name, dst);
}

// ---- free functions -----------------------------------------------------------------------------

std::map<std::string, torch::Tensor> read_safetensors(const std::string& path) {
  const SafetensorsFile file(path);
  std::map<std::string, torch::Tensor> out;
  for (const auto& [name, e] : file.entries()) out[name] = file.read(name, torch::kFloat);
  return out;
}

uint64_t safetensors_bytes(const torch::Tensor& t) {
  const auto type = t.scalar_type();
  const uint64_t elem = (type == torch::kHalf || type == torch::kBFloat16) ? 2 : 4;
  return uint64_t(t.numel()) * elem;
}

void write_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  std::vector<torch::Tensor> data;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    const auto type = tensor.scalar_type();
    const auto keep = (type == torch::kHalf || type == torch::kBFloat16) ? type : torch::kFloat;
    auto t = tensor.detach().to(torch::kCPU, keep).contiguous();
    const uint64_t bytes = safetensors_bytes(t);
    header[name] = {{"dtype", file_dtype_name(keep)},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(t);
  }
  nlohmann::json meta = nlohmann::json::object();
  meta["format"] = "pt";
  for (const auto& [k, v] : metadata) meta[k] = v;
  header["__metadata__"] = meta;
  std::string h = header.dump();
  while (h.size() % 8 != 0) h.push_back(' ');  // data starts 8-byte aligned
  std::string prefix;
  const uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) prefix.push_back(char((n >> (8 * i)) & 0xff));
  prefix += h;
  const std::string tmp =
      path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(std::random_device{}());
  try {
    write_streaming(tmp, prefix, data);
    rename_atomic(tmp, path);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
}

}  // namespace rlhf::policy
