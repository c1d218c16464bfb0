#include "policy/model/safetensors.h"

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "common/error.h"
#include "common/files.h"

namespace rlhf::policy {

namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Upper bound for the JSON header (the format's own limit is 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

// The file's layout: its size and where the tensor data starts (after the length and the header).
struct Layout {
  uint64_t file_size = 0;
  uint64_t data_start = 0;
};

// Reads the 8-byte header length and the JSON header that follows from `in` (open on `path`).
nlohmann::json read_header(std::ifstream& in, const std::string& path, Layout* layout) {
  in.seekg(0, std::ios::end);
  const uint64_t file_size = uint64_t(in.tellg());
  in.seekg(0);
  if (file_size < 8)
    throw Error(path + ": truncated safetensors file: " + std::to_string(file_size) +
                " bytes, expected at least 8 (header length)");
  unsigned char len_bytes[8];
  in.read(reinterpret_cast<char*>(len_bytes), 8);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  if (header_len > kMaxHeaderBytes || 8 + header_len > file_size)
    throw Error(path + ": truncated or corrupt safetensors file: header length " +
                std::to_string(header_len) + " but the file has " + std::to_string(file_size) +
                " bytes");
  std::string header(header_len, '\0');
  in.read(header.data(), std::streamsize(header_len));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(header);
  } catch (const std::exception& e) {
    throw Error(path + ": bad safetensors header (not JSON): " + e.what());
  }
  if (!j.is_object()) throw Error(path + ": bad safetensors header: expected a JSON object");
  layout->file_size = file_size;
  layout->data_start = 8 + header_len;
  return j;
}

// One tensor's header entry, checked against itself: a known dtype, no negative dimension, and
// data_offsets spanning exactly the bytes the dtype and shape need.
struct TensorEntry {
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets into the data section
  torch::ScalarType type = torch::kFloat;
};

TensorEntry parse_entry(const nlohmann::json& e, const std::string& where) {
  if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
    throw Error(where + ": header entry needs dtype, shape and data_offsets");
  TensorEntry t;
  try {
    t.dtype = e["dtype"].get<std::string>();
    t.shape = e["shape"].get<std::vector<int64_t>>();
    auto offs = e["data_offsets"].get<std::vector<uint64_t>>();
    if (offs.size() != 2) throw std::runtime_error("data_offsets needs 2 numbers");
    t.begin = offs[0];
    t.end = offs[1];
  } catch (const std::exception& ex) {
    throw Error(where + ": bad header entry: " + ex.what());
  }
  int64_t elem = 0;
  if (t.dtype == "F32") {
    t.type = torch::kFloat, elem = 4;
  } else if (t.dtype == "F16") {
    t.type = torch::kHalf, elem = 2;
  } else if (t.dtype == "BF16") {
    t.type = torch::kBFloat16, elem = 2;
  } else {
    throw Error(where + ": unsupported dtype '" + t.dtype + "', expected F32, F16 or BF16");
  }
  int64_t numel = 1;
  for (auto d : t.shape) {
    if (d < 0) throw Error(where + ": negative dimension in shape " + shape_text(t.shape));
    numel *= d;
  }
  if (t.end < t.begin || t.end - t.begin != uint64_t(numel * elem))
    throw Error(where + ": data_offsets [" + std::to_string(t.begin) + ", " +
                std::to_string(t.end) + "] hold " + std::to_string(t.end - t.begin) +
                " bytes, expected " + std::to_string(numel * elem) + " for " + t.dtype + " " +
                shape_text(t.shape));
  return t;
}

}  // namespace

std::map<std::string, torch::Tensor> read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error("cannot open " + path + " (safetensors weights): no such file or not readable");
  Layout layout;
  const nlohmann::json j = read_header(in, path, &layout);
  const uint64_t data_start = layout.data_start, data_size = layout.file_size - data_start;

  std::map<std::string, torch::Tensor> out;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") continue;
    auto where = path + ": tensor " + name;
    const TensorEntry e = parse_entry(it.value(), where);
    if (e.end > data_size)
      throw Error(where + ": truncated file: data ends at byte " +
                  std::to_string(data_start + e.end) + " but the file has " +
                  std::to_string(layout.file_size) + " bytes");
    auto t = torch::empty(e.shape, torch::TensorOptions().dtype(e.type));
    in.seekg(std::streamoff(data_start + e.begin));
    in.read(static_cast<char*>(t.data_ptr()), std::streamsize(e.end - e.begin));
    if (!in) throw Error(where + ": read failed");
    out[name] = e.type == torch::kFloat ? t : t.to(torch::kFloat);
  }
  return out;
}

void write_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  std::vector<torch::Tensor> data;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    auto t = tensor.detach().to(torch::kCPU, torch::kFloat).contiguous();
    uint64_t bytes = uint64_t(t.numel()) * 4;
    header[name] = {
        {"dtype", "F32"}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(t);
  }
  nlohmann::json meta = nlohmann::json::object();
  meta["format"] = "pt";
  for (const auto& [k, v] : metadata) meta[k] = v;
  header["__metadata__"] = meta;
  std::string h = header.dump();
  while (h.size() % 8 != 0) h.push_back(' ');  // data starts 8-byte aligned
  std::string buf;
  buf.reserve(8 + h.size() + offset);
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) buf.push_back(char((n >> (8 * i)) & 0xff));
  buf += h;
  for (const auto& t : data) buf.append(static_cast<const char*>(t.data_ptr()), t.numel() * 4);
  write_file_atomic(path, buf);
}

}  // namespace rlhf::policy
