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

}  // namespace

std::map<std::string, torch::Tensor> read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error("cannot open " + path + " (safetensors weights): no such file or not readable");
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
  const uint64_t data_start = 8 + header_len, data_size = file_size - data_start;

  std::map<std::string, torch::Tensor> out;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") continue;
    const auto& e = it.value();
    auto where = path + ": tensor " + name;
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") ||
        !e.contains("data_offsets"))
      throw Error(where + ": header entry needs dtype, shape and data_offsets");
    std::string dtype;
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;
    try {
      dtype = e["dtype"].get<std::string>();
      shape = e["shape"].get<std::vector<int64_t>>();
      auto offs = e["data_offsets"].get<std::vector<uint64_t>>();
      if (offs.size() != 2) throw std::runtime_error("data_offsets needs 2 numbers");
      begin = offs[0];
      end = offs[1];
    } catch (const std::exception& ex) {
      throw Error(where + ": bad header entry: " + ex.what());
    }
    torch::ScalarType st;
    int64_t elem = 0;
    if (dtype == "F32") {
      st = torch::kFloat, elem = 4;
    } else if (dtype == "F16") {
      st = torch::kHalf, elem = 2;
    } else if (dtype == "BF16") {
      st = torch::kBFloat16, elem = 2;
    } else {
      throw Error(where + ": unsupported dtype '" + dtype + "', expected F32, F16 or BF16");
    }
    int64_t numel = 1;
    for (auto d : shape) {
      if (d < 0) throw Error(where + ": negative dimension in shape " + shape_text(shape));
      numel *= d;
    }
    if (end < begin || end - begin != uint64_t(numel * elem))
      throw Error(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                  "] hold " + std::to_string(end - begin) + " bytes, expected " +
                  std::to_string(numel * elem) + " for " + dtype + " " + shape_text(shape));
    if (end > data_size)
      throw Error(where + ": truncated file: data ends at byte " +
                  std::to_string(data_start + end) + " but the file has " +
                  std::to_string(file_size) + " bytes");
    auto t = torch::empty(shape, torch::TensorOptions().dtype(st));
    in.seekg(std::streamoff(data_start + begin));
    in.read(static_cast<char*>(t.data_ptr()), std::streamsize(end - begin));
    if (!in) throw Error(where + ": read failed");
    out[name] = st == torch::kFloat ? t : t.to(torch::kFloat);
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
