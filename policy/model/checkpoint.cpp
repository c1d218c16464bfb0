#include "policy/model/checkpoint.h"

#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>

#include "common/error.h"
#include "common/files.h"
#include "policy/model/safetensors.h"
#include "proto/model.pb.h"

namespace rlhf::policy {

namespace fs = std::filesystem;

namespace {

constexpr const char* kConfigFile = "config.json";
constexpr const char* kWeightsFile = "model.safetensors";
constexpr const char* kMetaFile = "checkpoint.pb";

// The config.json keys of the families' extras, written only where they differ from a plain LLaMA
// (so a LLaMA model's config.json is unchanged): what model_config_from_hf_json reads back.
void add_family_keys(const ModelConfig& c, nlohmann::json* out) {
  nlohmann::json& j = *out;
  if (c.explicit_head_dim > 0) j["head_dim"] = c.explicit_head_dim;
  if ((c.model_type == "llama" || c.model_type == "qwen3") && (c.qkv_bias || c.o_bias))
    j["attention_bias"] = true;
  if (c.mlp_bias) j["mlp_bias"] = true;
  if (c.rope_factor > 0)
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", c.rope_factor},
                         {"low_freq_factor", c.rope_low_freq_factor},
                         {"high_freq_factor", c.rope_high_freq_factor},
                         {"original_max_position_embeddings", c.rope_original_max_position}};
  if (c.sliding_window > 0) {
    j["sliding_window"] = c.sliding_window;
    if (c.model_type != "mistral") j["use_sliding_window"] = true;
  }
}

nlohmann::json hf_config_json(const ModelConfig& c) {
  nlohmann::json j;
  static const std::map<std::string, std::string> kArchitectures = {
      {"llama", "LlamaForCausalLM"},
      {"mistral", "MistralForCausalLM"},
      {"qwen2", "Qwen2ForCausalLM"},
      {"qwen3", "Qwen3ForCausalLM"}};
  j["architectures"] = {kArchitectures.at(c.model_type)};
  j["model_type"] = c.model_type;
  j["hidden_size"] = c.dim;
  j["intermediate_size"] = c.resolved_hidden_dim();
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_seq_len;
  j["rms_norm_eps"] = c.norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["tie_word_embeddings"] = c.tie_embeddings;
  j["hidden_act"] = "silu";
  j["bos_token_id"] = c.bos_id >= 0 ? nlohmann::json(c.bos_id) : nlohmann::json(nullptr);
  j["eos_token_id"] = c.eos_id >= 0 ? nlohmann::json(c.eos_id) : nlohmann::json(nullptr);
  j["pad_token_id"] = c.pad_id >= 0 ? nlohmann::json(c.pad_id) : nlohmann::json(nullptr);
  j["torch_dtype"] = "float32";
  add_family_keys(c, &j);
  return j;
}

// Writes a folder by filling <dir>.tmp-<pid>-<rand> and renaming it over <dir>; an existing <dir>
// is moved aside first and removed after the swap (rename cannot replace a non-empty folder).
template <typename Fill>
void write_folder_atomically(const std::string& dir, Fill fill) {
  fs::path target = fs::absolute(dir).lexically_normal();
  if (target.filename().empty()) target = target.parent_path();
  if (target.has_parent_path()) make_dirs(target.parent_path().string());
  std::string suffix = std::to_string(::getpid()) + "-" + std::to_string(std::random_device{}());
  std::string tmp = target.string() + ".tmp-" + suffix;
  std::error_code ec;
  fs::remove_all(tmp, ec);
  make_dirs(tmp);
  try {
    fill(tmp);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  if (fs::exists(target)) {
    std::string old = target.string() + ".old-" + suffix;
    rename_atomic(target.string(), old);
    rename_atomic(tmp, target.string());
    fs::remove_all(old, ec);
  } else {
    rename_atomic(tmp, target.string());
  }
}

std::map<std::string, torch::Tensor> weights_map(Transformer& model, bool with_value_head) {
  std::map<std::string, torch::Tensor> m;
  for (auto& [name, t] : model->hf_named_parameters())
    if (with_value_head || name.rfind("value_head.", 0) != 0) m[name] = t;
  return m;
}

// The projection matrices LoadOptions::matrix_dtype applies to, by Hugging Face name.
bool is_projection_matrix(const std::string& name) {
  const std::string suffix = "_proj.weight";
  return name == "lm_head.weight" ||
         (name.size() > suffix.size() &&
          name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0);
}

// Integer field of config.json: required (throws when absent) or with a default.
int json_int(const nlohmann::json& j, const std::string& path, const std::string& key,
             std::optional<int> fallback) {
  if (!j.contains(key) || j[key].is_null()) {
    if (fallback) return *fallback;
    throw Error(path + ": missing field '" + key + "' (expected an integer)");
  }
  const auto& v = j[key];
  if (v.is_array() && !v.empty() && v[0].is_number_integer()) return v[0].get<int>();  // eos lists
  if (!v.is_number_integer())
    throw Error(path + ": field '" + key + "' = " + v.dump() + ", expected an integer");
  return v.get<int>();
}

double json_number(const nlohmann::json& j, const std::string& path, const std::string& key,
                   double fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_number())
    throw Error(path + ": field '" + key + "' = " + j[key].dump() + ", expected a number");
  return j[key].get<double>();
}

bool json_bool(const nlohmann::json& j, const std::string& path, const std::string& key,
               bool fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_boolean())
    throw Error(path + ": field '" + key + "' = " + j[key].dump() + ", expected true or false");
  return j[key].get<bool>();
}

// config.json keys that do not change the forward pass: metadata, generation and training
// settings of transformers that this code does not use.
const std::set<std::string>& harmless_keys() {
  static const std::set<std::string> keys = {"architectures",
                                             "torch_dtype",
                                             "dtype",
                                             "transformers_version",
                                             "use_cache",
                                             "_name_or_path",
                                             "initializer_range",
                                             "output_attentions",
                                             "output_hidden_states",
                                             "return_dict",
                                             "tokenizer_class",
                                             "id2label",
                                             "label2id",
                                             "is_llama_config",
                                             "pretraining_tp",
                                             "max_window_layers",
                                             "bos_token_id",
                                             "eos_token_id",
                                             "pad_token_id"};
  return keys;
}

// The keys read (and checked) for each family, beyond harmless_keys().
const std::set<std::string>& read_keys(const std::string& model_type) {
  static const std::set<std::string> common = {"model_type",
                                               "hidden_size",
                                               "intermediate_size",
                                               "num_hidden_layers",
                                               "num_attention_heads",
                                               "num_key_value_heads",
                                               "vocab_size",
                                               "max_position_embeddings",
                                               "rms_norm_eps",
                                               "rope_theta",
                                               "rope_scaling",
                                               "rope_parameters",
                                               "tie_word_embeddings",
                                               "head_dim",
                                               "hidden_act",
                                               "attention_dropout",
                                               "partial_rotary_factor",
                                               "rope_interleaved"};
  static const std::map<std::string, std::set<std::string>> family = {
      {"llama", {"attention_bias", "mlp_bias"}},
      {"mistral", {"sliding_window"}},
      {"qwen2", {"sliding_window", "use_sliding_window", "layer_types"}},
      {"qwen3", {"attention_bias", "sliding_window", "use_sliding_window", "layer_types"}}};
  static const auto all = [] {  // built once, thread-safe (loads may run at once)
    std::map<std::string, std::set<std::string>> m;
    for (const auto& [type, extra] : family) {
      m[type] = common;
      m[type].insert(extra.begin(), extra.end());
    }
    return m;
  }();
  return all.at(model_type);
}

// Refuses any key that is neither read nor known to be harmless: it may change the forward pass.
void refuse_unknown_keys(const nlohmann::json& j, const std::string& path,
                         const std::string& model_type) {
  const auto& known = read_keys(model_type);
  for (const auto& item : j.items())
    if (!known.count(item.key()) && !harmless_keys().count(item.key()))
      throw Error(
          path + ": unsupported config key '" + item.key() + "' = " + item.value().dump() +
          " for model_type '" + model_type +
          "' (not known to leave the forward pass unchanged; docs/model_families.md lists the "
          "keys read)");
}

// rope_scaling (or transformers 5's rope_parameters): null, type "default", or type "llama3".
void read_rope_scaling(const nlohmann::json& j, const std::string& path, ModelConfig* c) {
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    const auto& r = j[key];
    const std::string where = std::string(key);
    if (!r.is_object())
      throw Error(path + ": field '" + where + "' = " + r.dump() + ", expected an object or null");
    std::string type = "default";
    for (const char* type_key : {"rope_type", "type"})
      if (r.contains(type_key)) {
        if (!r[type_key].is_string())
          throw Error(path + ": field '" + where + "." + type_key + "' = " + r[type_key].dump() +
                      ", expected a string");
        type = r[type_key].get<std::string>();
      }
    if (r.contains("rope_theta")) c->rope_theta = float(json_number(r, path, "rope_theta", 0));
    if (r.contains("partial_rotary_factor") &&
        json_number(r, path, "partial_rotary_factor", 1) != 1)
      throw Error(path + ": unsupported " + where +
                  ".partial_rotary_factor = " + r["partial_rotary_factor"].dump() + ", expected 1");
    if (type == "default") continue;
    if (type != "llama3")
      throw Error(path + ": unsupported " + where + " type '" + type +
                  "', expected \"llama3\" or \"default\" (or null)");
    for (const auto& item : r.items())
      if (item.key() != "rope_type" && item.key() != "type" && item.key() != "factor" &&
          item.key() != "low_freq_factor" && item.key() != "high_freq_factor" &&
          item.key() != "original_max_position_embeddings" && item.key() != "rope_theta" &&
          item.key() != "partial_rotary_factor")
        throw Error(path + ": unsupported key '" + where + "." + item.key() +
                    "' = " + item.value().dump() + " for llama3 rope scaling");
    const std::string p = path + " (" + where + ")";
    c->rope_factor = float(json_number(r, p, "factor", -1));
    c->rope_low_freq_factor = float(json_number(r, p, "low_freq_factor", -1));
    c->rope_high_freq_factor = float(json_number(r, p, "high_freq_factor", -1));
    c->rope_original_max_position =
        json_int(r, p, "original_max_position_embeddings", std::nullopt);
    if (!(c->rope_factor > 0) || !(c->rope_low_freq_factor > 0) || !(c->rope_high_freq_factor > 0))
      throw Error(p +
                  ": llama3 rope scaling needs factor, low_freq_factor and high_freq_factor > 0");
  }
}

// Biases, q/k norms and the sliding window of each family (HF LlamaConfig, MistralConfig,
// Qwen2Config, Qwen3Config). A sliding window caps max_seq_len (see ModelConfig::sliding_window).
void read_family(const nlohmann::json& j, const std::string& path, ModelConfig* c) {
  const std::string& type = c->model_type;
  if (type == "llama" || type == "qwen3")
    c->qkv_bias = c->o_bias = json_bool(j, path, "attention_bias", false);
  if (type == "llama") c->mlp_bias = json_bool(j, path, "mlp_bias", false);
  if (type == "qwen2") c->qkv_bias = true;
  if (type == "qwen3") c->qk_norm = true;
  bool sliding = type == "mistral";
  if (type == "qwen2" || type == "qwen3") {
    sliding = json_bool(j, path, "use_sliding_window", false);
    if (j.contains("layer_types") && !j["layer_types"].is_null()) {
      if (!j["layer_types"].is_array())
        throw Error(path + ": field 'layer_types' = " + j["layer_types"].dump() +
                    ", expected a list of \"full_attention\" / \"sliding_attention\"");
      for (const auto& t : j["layer_types"]) {
        if (t == "sliding_attention")
          sliding = true;
        else if (t != "full_attention")
          throw Error(path + ": field 'layer_types' holds " + t.dump() +
                      ", expected \"full_attention\" or \"sliding_attention\"");
      }
    }
  }
  if (sliding) c->sliding_window = json_int(j, path, "sliding_window", 0);
  if (c->sliding_window > 0) c->max_seq_len = std::min(c->max_seq_len, c->sliding_window);
}

// The keys whose only accepted value is the one this code runs: hidden_act silu, no attention
// dropout, no partial or interleaved rotary embedding.
void check_fixed_keys(const nlohmann::json& j, const std::string& path) {
  if (j.contains("hidden_act") && j["hidden_act"] != "silu")
    throw Error(path + ": unsupported hidden_act " + j["hidden_act"].dump() +
                ", expected \"silu\"");
  if (json_number(j, path, "attention_dropout", 0.0) != 0.0)
    throw Error(path + ": unsupported attention_dropout = " + j["attention_dropout"].dump() +
                ", expected 0");
  if (json_number(j, path, "partial_rotary_factor", 1.0) != 1.0)
    throw Error(path + ": unsupported partial_rotary_factor = " +
                j["partial_rotary_factor"].dump() + ", expected 1");
  if (json_bool(j, path, "rope_interleaved", false))
    throw Error(path + ": unsupported rope_interleaved = true, expected false (rotate-half)");
}

nlohmann::json parse_config_file(const std::string& path) {
  if (!fs::exists(path))
    throw Error(path + ": not found (a checkpoint folder needs config.json + model.safetensors)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(path + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) throw Error(path + ": expected a JSON object");
  return j;
}

}  // namespace

ModelConfig model_config_from_hf_json(const std::string& path) {
  const nlohmann::json j = parse_config_file(path);
  if (!j.contains("model_type") || !j["model_type"].is_string())
    throw Error(path +
                ": missing field 'model_type' (expected a string: llama, mistral, qwen2 or "
                "qwen3)");
  ModelConfig c;
  c.model_type = j["model_type"].get<std::string>();
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2" &&
      c.model_type != "qwen3")
    throw Error(path + ": unsupported model_type '" + c.model_type +
                "', expected one of llama, mistral, qwen2, qwen3");
  refuse_unknown_keys(j, path, c.model_type);
  check_fixed_keys(j, path);
  c.dim = json_int(j, path, "hidden_size", std::nullopt);
  c.n_layers = json_int(j, path, "num_hidden_layers", std::nullopt);
  c.n_heads = json_int(j, path, "num_attention_heads", std::nullopt);
  c.n_kv_heads = json_int(j, path, "num_key_value_heads", c.n_heads);
  c.hidden_dim = json_int(j, path, "intermediate_size", std::nullopt);
  c.vocab_size = json_int(j, path, "vocab_size", std::nullopt);
  c.max_seq_len = json_int(j, path, "max_position_embeddings", 2048);
  c.norm_eps = float(json_number(j, path, "rms_norm_eps", 1e-6));
  c.rope_theta = float(json_number(j, path, "rope_theta", 10000.0));
  c.bos_id = json_int(j, path, "bos_token_id", -1);
  c.eos_id = json_int(j, path, "eos_token_id", -1);
  c.pad_id = json_int(j, path, "pad_token_id", -1);
  c.tie_embeddings = json_bool(j, path, "tie_word_embeddings", false);
  if (c.n_heads > 0) {
    int hd = json_int(j, path, "head_dim", 0);
    if (hd != 0 && (c.dim % c.n_heads != 0 || hd != c.dim / c.n_heads)) c.explicit_head_dim = hd;
  }
  read_rope_scaling(j, path, &c);
  read_family(j, path, &c);
  try {
    c.validate();
  } catch (...) {
    rethrow_with_context(path);
  }
  return c;
}

void save_checkpoint(Transformer& model, const std::string& dir, const CheckpointInfo& info) {
  proto::CheckpointMeta meta;
  meta.set_schema_version(1);
  model->config().to_proto(meta.mutable_config());
  meta.set_tokenizer_sha256(info.tokenizer_sha256);
  meta.set_weights_file(kWeightsFile);
  meta.set_created_by(info.created_by);
  meta.set_step(info.step);
  meta.set_kind(info.kind);
  std::string meta_bytes;
  meta.SerializeToString(&meta_bytes);
  auto weights = weights_map(model, /*with_value_head=*/true);
  auto config = hf_config_json(model->config()).dump(2);
  write_folder_atomically(dir, [&](const std::string& tmp) {
    write_file_atomic(tmp + "/" + kConfigFile, config + "\n");
    write_safetensors(tmp + "/" + kWeightsFile, weights, {{"producer", "rlhf"}});
    write_file_atomic(tmp + "/" + kMetaFile, meta_bytes);
  });
}

const std::vector<std::string> kHfCopiedFiles = {"tokenizer.json",     "tokenizer_config.json",
                                                 "tokenizer.model",    "special_tokens_map.json",
                                                 "added_tokens.json",  "vocab.json",
                                                 "merges.txt",         "chat_template.jinja",
                                                 "chat_template.json", "generation_config.json"};

uint64_t parse_shard_size(const std::string& value, const std::string& what) {
  const std::string bad = what + " = \"" + value +
                          "\": expected a positive size such as \"5GB\", \"500MB\", \"2GiB\" " +
                          "or a byte count";
  struct Unit {
    const char* suffix;
    uint64_t factor;
  };
  static const Unit kUnits[] = {{"GIB", 1ull << 30},
                                {"MIB", 1ull << 20},
                                {"KIB", 1ull << 10},
                                {"GB", 1000000000ull},
                                {"MB", 1000000ull},
                                {"KB", 1000ull},
                                {"", 1}};
  std::string upper = value;
  for (auto& ch : upper) ch = char(std::toupper(static_cast<unsigned char>(ch)));
  for (const Unit& u : kUnits) {
    const size_t n = std::strlen(u.suffix);
    if (upper.size() <= n || upper.compare(upper.size() - n, n, u.suffix) != 0) continue;
    const std::string digits = value.substr(0, value.size() - n);
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos ||
        digits.size() > 15)
      throw Error(bad);
    const uint64_t number = std::stoull(digits);
    if (number > (uint64_t(1) << 62) / u.factor) throw Error(bad);  // absurd, would overflow
    uint64_t size = number * u.factor;
    if (n == 2 && value.back() == 'b') size /= 8;  // "5Gb": bits, as transformers reads it
    if (size == 0) throw Error(bad);
    return size;
  }
  throw Error(bad);
}

namespace {

using NamedTensorList = std::vector<std::pair<std::string, torch::Tensor>>;

// Shards as transformers packs them (huggingface_hub split_state_dict_into_shards): in order, a
// tensor larger than `max_bytes` on its own gets a shard of its own; otherwise a new shard starts
// when the tensor would push the current one over `max_bytes`. Returns index lists.
std::vector<std::vector<size_t>> plan_shards(const NamedTensorList& tensors, uint64_t max_bytes) {
  std::vector<std::vector<size_t>> shards;
  std::vector<size_t> current;
  uint64_t current_bytes = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t bytes = uint64_t(tensors[i].second.numel()) * 4;  // written as F32
    if (bytes > max_bytes) {
      shards.push_back({i});
      continue;
    }
    if (current_bytes + bytes > max_bytes && !current.empty()) {
      shards.push_back(std::move(current));
      current.clear();
      current_bytes = 0;
    }
    current.push_back(i);
    current_bytes += bytes;
  }
  if (!current.empty() || shards.empty()) shards.push_back(std::move(current));
  return shards;
}

// "model-00002-of-00003.safetensors" (1-based), transformers' shard names.
std::string shard_name(size_t index, size_t count) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", index + 1, count);
  return buf;
}

// Writes the weights into `tmp`: model.safetensors when one shard, else the shards and the index
// {"metadata": {"total_size": bytes}, "weight_map": {name: shard}} (keys sorted, indent 2).
void write_hf_weights(const std::string& tmp, const NamedTensorList& tensors, uint64_t max_bytes) {
  const auto shards = plan_shards(tensors, max_bytes);
  nlohmann::json weight_map = nlohmann::json::object();
  uint64_t total = 0;
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file = shards.size() == 1 ? kWeightsFile : shard_name(s, shards.size());
    std::map<std::string, torch::Tensor> part;
    for (size_t i : shards[s]) {
      // F32 (config.json says float32), converted shard by shard from bfloat16 matrices.
      part[tensors[i].first] = tensors[i].second.to(torch::kFloat);
      weight_map[tensors[i].first] = file;
      total += uint64_t(tensors[i].second.numel()) * 4;
    }
    write_safetensors(tmp + "/" + file, part, {{"producer", "rlhf"}});
  }
  if (shards.size() == 1) return;
  nlohmann::json index;
  index["metadata"] = {{"total_size", total}};
  index["weight_map"] = weight_map;
  write_file_atomic(tmp + "/" + SafetensorsWeights::kIndexFile, index.dump(2) + "\n");
}

// config.json of an export: the source's config.json keys (when it has one), then every key the
// model's config defines (hf_config_json) written over them; torch_dtype (and dtype, the name
// newer transformers use, when the source has it) say float32, the dtype of the written weights.
nlohmann::json export_config(const ModelConfig& c, const std::string& source_dir) {
  nlohmann::json j = nlohmann::json::object();
  const std::string source = source_dir.empty() ? "" : source_dir + "/" + kConfigFile;
  if (!source.empty() && fs::exists(source)) {
    try {
      j = nlohmann::json::parse(read_file(source));
    } catch (const std::exception& e) {
      throw Error(source + ": not valid JSON: " + e.what());
    }
    if (!j.is_object()) throw Error(source + ": expected a JSON object");
  }
  const nlohmann::json own = hf_config_json(c);
  for (auto it = own.begin(); it != own.end(); ++it) j[it.key()] = it.value();
  if (j.contains("dtype")) j["dtype"] = j["torch_dtype"];
  return j;
}

// Copies the kHfCopiedFiles that `source_dir` holds into `tmp`.
void copy_side_files(const std::string& source_dir, const std::string& tmp) {
  if (source_dir.empty()) return;
  for (const auto& name : kHfCopiedFiles) {
    const fs::path from = fs::path(source_dir) / name;
    if (!fs::is_regular_file(from)) continue;
    std::error_code ec;
    fs::copy_file(from, fs::path(tmp) / name, fs::copy_options::overwrite_existing, ec);
    if (ec) throw Error("cannot copy " + from.string() + " to " + tmp + ": " + ec.message());
  }
}

}  // namespace

void export_hf(Transformer& model, const std::string& dir, const HfExportOptions& options) {
  if (options.max_shard_size == 0) throw Error("export " + dir + ": max_shard_size must be > 0");
  NamedTensorList tensors;
  for (auto& [name, t] : model->hf_named_parameters())
    if (name.rfind("value_head.", 0) != 0) tensors.emplace_back(name, t);
  const auto config = export_config(model->config(), options.source_dir).dump(2);
  write_folder_atomically(dir, [&](const std::string& tmp) {
    write_file_atomic(tmp + "/" + kConfigFile, config + "\n");
    write_hf_weights(tmp, tensors, options.max_shard_size);
    copy_side_files(options.source_dir, tmp);
  });
}

void store_matrices_as(Transformer& model, torch::ScalarType dtype, StoredWeights which) {
  if (dtype != torch::kFloat && dtype != torch::kBFloat16)
    throw Error("store_matrices_as: dtype must be float32 or bfloat16");
  const bool embeddings = which == StoredWeights::kMatricesAndEmbeddings || dtype == torch::kFloat;
  torch::NoGradGuard no_grad;
  for (auto& [name, param] : model->hf_named_parameters())
    if ((is_projection_matrix(name) || (embeddings && name == "model.embed_tokens.weight")) &&
        param.scalar_type() != dtype)
      param.set_data(param.to(dtype));
}

LoadOptions frozen_base_load_options(bool bf16, bool frozen_base) {
  LoadOptions o;
  if (bf16 && frozen_base) o.matrix_dtype = o.embedding_dtype = torch::kBFloat16;
  return o;
}

LoadedModel load_checkpoint(const std::string& dir, const LoadOptions& options) {
  for (auto t : {options.matrix_dtype, options.embedding_dtype})
    if (t != torch::kFloat && t != torch::kBFloat16)
      throw Error("load_checkpoint " + dir + ": matrix_dtype and embedding_dtype must be float32 " +
                  "or bfloat16");
  if (!fs::is_directory(dir))
    throw Error("checkpoint folder not found: " + dir +
                " (expected a folder with config.json + model.safetensors)");
  LoadedModel out;
  ModelConfig config;
  std::string weights_file = kWeightsFile;
  std::string meta_path = dir + "/" + kMetaFile;
  if (fs::exists(meta_path)) {
    proto::CheckpointMeta meta;
    if (!meta.ParseFromString(read_file(meta_path)))
      throw Error(meta_path + ": not a CheckpointMeta protobuf message");
    if (meta.schema_version() != 1)
      throw Error(meta_path + ": schema_version " + std::to_string(meta.schema_version()) +
                  " not supported (expected 1)");
    try {
      config = ModelConfig::from_proto(meta.config());
    } catch (...) {
      rethrow_with_context(meta_path);
    }
    if (!meta.weights_file().empty()) weights_file = meta.weights_file();
    out.info.tokenizer_sha256 = meta.tokenizer_sha256();
    out.info.kind = meta.kind();
    out.info.created_by = meta.created_by();
    out.info.step = meta.step();
  } else {
    config = model_config_from_hf_json(dir + "/" + kConfigFile);
    out.from_hf = true;
    out.info.created_by = "huggingface import";
  }
  const SafetensorsWeights weights(dir, weights_file);
  if (out.from_hf && weights.contains("value_head.weight")) config.value_head = true;

  // Built in the stored dtypes (no float32 copy of narrowed weights), then read into in place.
  out.model = Transformer(config, WeightDtypes{options.matrix_dtype, options.embedding_dtype});
  torch::NoGradGuard no_grad;
  for (auto& [name, param] : out.model->hf_named_parameters()) weights.read_into(name, param);
  return out;
}

}  // namespace rlhf::policy
