// Tokenizer: SentencePiece reached through librlhf_spm.so (see tokenizer.h for why), or a
// tokenizer.json through HfTokenizer; each member dispatches on which one was loaded.
#include "policy/tokenizer/tokenizer.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <utility>

#include "common/error.h"
#include "common/files.h"
#include "policy/tokenizer/hf_tokenizer.h"
#include "policy/tokenizer/spm_shim/spm_shim.h"

#ifndef RLHF_SPM_SHIM_BUILD_DIR
#define RLHF_SPM_SHIM_BUILD_DIR ""
#endif

namespace rlhf::policy {

namespace {

constexpr const char* kShimName = "librlhf_spm.so";

// Function table of the dlopen()ed shim; loaded once per process and never unloaded.
struct ShimApi {
  int (*api_version)();
  const char* (*last_error)();
  rlhf_spm* (*load)(const char*);
  void (*free)(rlhf_spm*);
  long (*encode)(const rlhf_spm*, const char*, size_t, int*, size_t);
  long (*decode)(const rlhf_spm*, const int*, size_t, char*, size_t);
  long (*id_to_piece)(const rlhf_spm*, int, char*, size_t);
  int (*vocab_size)(const rlhf_spm*);
  int (*bos_id)(const rlhf_spm*);
  int (*eos_id)(const rlhf_spm*);
  int (*pad_id)(const rlhf_spm*);
  int (*unk_id)(const rlhf_spm*);
  float (*score)(const rlhf_spm*, int);
  long (*train)(const char*, const char* const*, const char* const*, size_t, unsigned int, char**);
  void (*free_buffer)(char*);
};

std::vector<std::string> shim_candidates() {
  std::vector<std::string> out;
  if (const char* env = std::getenv("RLHF_SPM_SHIM"); env && *env) {
    std::string p = env;
    out.push_back(std::filesystem::is_directory(p) ? p + "/" + kShimName : p);
  }
  try {
    const std::filesystem::path exe_dir = executable_dir();
    out.push_back((exe_dir / kShimName).string());
    out.push_back((exe_dir.parent_path() / kShimName).string());
  } catch (const std::exception&) {
    // No /proc/self/exe: rely on the other candidates.
  }
  if (std::string(RLHF_SPM_SHIM_BUILD_DIR).size() > 0)
    out.push_back(std::string(RLHF_SPM_SHIM_BUILD_DIR) + "/" + kShimName);
  return out;
}

template <typename Fn>
void bind(void* lib, const char* name, Fn*& fn, const std::string& path) {
  void* sym = ::dlsym(lib, name);
  if (!sym) throw Error(path + ": missing symbol " + name + " (stale " + kShimName + "?)");
  fn = reinterpret_cast<Fn*>(sym);
}

ShimApi open_shim() {
  std::string tried;
  for (const auto& path : shim_candidates()) {
    if (!std::filesystem::exists(path)) {
      tried += " " + path + " (absent)";
      continue;
    }
    // RTLD_DEEPBIND: SentencePiece's protobuf 3.14 symbols bind inside the shim's own scope.
    void* lib = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!lib) {
      const char* why = ::dlerror();
      tried += " " + path + " (" + (why ? why : "dlopen failed") + ")";
      continue;
    }
    ShimApi api{};
    bind(lib, "rlhf_spm_api_version", api.api_version, path);
    bind(lib, "rlhf_spm_last_error", api.last_error, path);
    bind(lib, "rlhf_spm_load", api.load, path);
    bind(lib, "rlhf_spm_free", api.free, path);
    bind(lib, "rlhf_spm_encode", api.encode, path);
    bind(lib, "rlhf_spm_decode", api.decode, path);
    bind(lib, "rlhf_spm_id_to_piece", api.id_to_piece, path);
    bind(lib, "rlhf_spm_vocab_size", api.vocab_size, path);
    bind(lib, "rlhf_spm_bos_id", api.bos_id, path);
    bind(lib, "rlhf_spm_eos_id", api.eos_id, path);
    bind(lib, "rlhf_spm_pad_id", api.pad_id, path);
    bind(lib, "rlhf_spm_unk_id", api.unk_id, path);
    bind(lib, "rlhf_spm_score", api.score, path);
    bind(lib, "rlhf_spm_train", api.train, path);
    bind(lib, "rlhf_spm_free_buffer", api.free_buffer, path);
    if (api.api_version() != RLHF_SPM_API_VERSION)
      throw Error(path + ": API version " + std::to_string(api.api_version()) + ", expected " +
                  std::to_string(RLHF_SPM_API_VERSION) + " (stale build?)");
    return api;
  }
  throw Error(std::string("cannot load the SentencePiece shim ") + kShimName +
              " (set RLHF_SPM_SHIM or install it next to the rlhf executable); tried:" + tried);
}

const ShimApi& shim() {
  // Function-local static: initialised once, thread-safe; a failed load throws and is retried
  // on the next call.
  static const ShimApi api = open_shim();
  return api;
}

}  // namespace

struct SpmHandle {
  rlhf_spm* sp = nullptr;
  std::once_flag index_once;  // piece_to_id's index, built on first use
  std::unordered_map<std::string, int> id_of_piece;
  ~SpmHandle() {
    if (sp) shim().free(sp);
  }
};

struct HfState {
  HfTokenizer tok;
  int bos = -1, eos = -1, pad = -1, unk = -1;
  std::string config_path;  // the tokenizer_config.json read, "" when none
};

namespace {

constexpr const char* kJsonName = "tokenizer.json";
constexpr const char* kModelName = "tokenizer.model";
constexpr const char* kConfigName = "tokenizer_config.json";

const rlhf_spm* get(const std::shared_ptr<SpmHandle>& h) {
  if (!h || !h->sp) throw Error("tokenizer used before Tokenizer::load()");
  return h->sp;
}

bool is_json_file(const std::string& path) {
  return std::filesystem::path(path).extension() == ".json";
}

// The id of tokenizer_config.json's `field` (a string, {"content": string} or null), or
// `fallback` when the field is absent.
int config_token_id(const nlohmann::json& cfg, const char* field, const HfTokenizer& tok,
                    const std::string& cfg_path, int fallback) {
  const auto it = cfg.find(field);
  if (it == cfg.end()) return fallback;
  if (it->is_null()) return -1;
  const nlohmann::json* v = &*it;
  if (v->is_object() && v->contains("content")) v = &(*v)["content"];
  if (!v->is_string())
    throw Error(cfg_path + ": field '" + field +
                "': expected a token string, an object with a string \"content\", or null");
  const std::string token = v->get<std::string>();
  const int id = tok.token_to_id(token);
  if (id < 0)
    throw Error(cfg_path + ": field '" + field + "': '" + token + "' is not a token of " +
                tok.path());
  return id;
}

// The first id the post-processor puts before / after the text (-1 when none).
std::pair<int, int> template_bos_eos(const HfTokenizer& tok) {
  const std::vector<int> bare = tok.encode("a", false), full = tok.encode("a", true);
  const auto at = std::search(full.begin(), full.end(), bare.begin(), bare.end());
  if (bare.empty() || at == full.end()) return {-1, -1};
  const auto after = at + static_cast<std::ptrdiff_t>(bare.size());
  return {at != full.begin() ? full.front() : -1, after != full.end() ? *after : -1};
}

std::shared_ptr<const HfState> load_hf_state(const std::string& json_path) {
  auto st = std::make_shared<HfState>();
  st->tok = HfTokenizer::load(json_path);
  std::tie(st->bos, st->eos) = template_bos_eos(st->tok);
  const std::string cfg_path =
      (std::filesystem::path(json_path).parent_path() / kConfigName).string();
  if (!std::filesystem::is_regular_file(cfg_path)) return st;
  nlohmann::json cfg;
  try {
    cfg = nlohmann::json::parse(read_file(cfg_path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(cfg_path + ": not valid JSON (" + e.what() + ")");
  }
  if (!cfg.is_object()) throw Error(cfg_path + ": expected a JSON object");
  st->bos = config_token_id(cfg, "bos_token", st->tok, cfg_path, st->bos);
  st->eos = config_token_id(cfg, "eos_token", st->tok, cfg_path, st->eos);
  st->pad = config_token_id(cfg, "pad_token", st->tok, cfg_path, -1);
  st->unk = config_token_id(cfg, "unk_token", st->tok, cfg_path, -1);
  st->config_path = cfg_path;
  return st;
}

}  // namespace

std::string Tokenizer::file_in_folder(const std::string& dir) {
  for (const char* name : {kModelName, kJsonName}) {
    const std::filesystem::path p = std::filesystem::path(dir) / name;
    if (std::filesystem::is_regular_file(p)) return p.string();
  }
  return "";
}

std::string Tokenizer::resolve_path(const std::string& path) {
  if (!std::filesystem::is_directory(path)) return path;
  const std::string file = file_in_folder(path);
  if (file.empty())
    throw Error("tokenizer folder " + path + ": holds neither " + kModelName + " nor " + kJsonName +
                " (expected one of them, or the path of a .model / tokenizer.json)");
  return file;
}

Tokenizer Tokenizer::load(const std::string& path) {
  const std::string model_path = resolve_path(path);
  if (!std::filesystem::exists(model_path))
    throw Error("tokenizer model " + model_path + ": no such file");
  Tokenizer t;
  t.path_ = model_path;
  if (is_json_file(model_path)) {
    t.hf_ = load_hf_state(model_path);
    t.sha256_ = sha256_file(model_path);
    return t;
  }
  const ShimApi& api = shim();
  t.handle_ = std::make_shared<SpmHandle>();
  t.handle_->sp = api.load(model_path.c_str());
  if (!t.handle_->sp)
    throw Error("tokenizer model " + model_path + ": not a SentencePiece model (" +
                api.last_error() + ")");
  t.sha256_ = sha256_file(model_path);
  return t;
}

std::vector<int> Tokenizer::encode(const std::string& text, bool add_special_tokens) const {
  if (hf_) return hf_->tok.encode(text, add_special_tokens);
  std::vector<int> ids = encode(text);
  if (add_special_tokens && bos_id() >= 0) ids.insert(ids.begin(), bos_id());
  return ids;
}

std::vector<int> Tokenizer::encode(const std::string& text) const {
  if (hf_) return hf_->tok.encode(text, false);
  const rlhf_spm* sp = get(handle_);
  std::vector<int> ids(text.size() + 8);
  for (int attempt = 0; attempt < 2; ++attempt) {
    const long n = shim().encode(sp, text.data(), text.size(), ids.data(), ids.size());
    if (n < 0) throw Error("tokenizer " + path_ + ": encode failed: " + shim().last_error());
    if (static_cast<size_t>(n) <= ids.size()) {
      ids.resize(n);
      return ids;
    }
    ids.resize(n);
  }
  throw Error("tokenizer " + path_ + ": encode output size changed between calls");
}

namespace {

// keep(id): whether the id is decoded (the others are dropped).
template <typename Keep>
std::string hf_decode(const HfState& st, const std::vector<int>& ids, const std::string& path,
                      Keep keep) {
  std::vector<int> kept;
  kept.reserve(ids.size());
  const int size = st.tok.vocab_size();
  for (size_t i = 0; i < ids.size(); ++i) {
    const int id = ids[i];
    if (id < 0 || id >= size)
      throw Error("tokenizer " + path + ": decode failed: id " + std::to_string(id) +
                  " at position " + std::to_string(i) + " is out of range [0, " +
                  std::to_string(size) + ")");
    if (keep(id)) kept.push_back(id);
  }
  return st.tok.decode(kept);
}

}  // namespace

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  if (hf_) {
    const HfState& st = *hf_;
    return hf_decode(st, ids, path_,
                     [&](int id) { return id != st.bos && id != st.eos && id != st.pad; });
  }
  const rlhf_spm* sp = get(handle_);
  std::string text(ids.size() * 8 + 16, '\0');
  for (int attempt = 0; attempt < 2; ++attempt) {
    const long n = shim().decode(sp, ids.data(), ids.size(), text.data(), text.size());
    if (n < 0) throw Error("tokenizer " + path_ + ": decode failed: " + shim().last_error());
    if (static_cast<size_t>(n) <= text.size()) {
      text.resize(n);
      return text;
    }
    text.resize(n);
  }
  throw Error("tokenizer " + path_ + ": decode output size changed between calls");
}

std::string Tokenizer::decode(const std::vector<int>& ids, bool skip_special_tokens) const {
  if (!hf_) return decode(ids);
  return hf_decode(*hf_, ids, path_,
                   [&](int id) { return !skip_special_tokens || !hf_->tok.is_special(id); });
}

std::string Tokenizer::id_to_piece(int id) const {
  if (hf_) {
    if (auto token = hf_->tok.id_to_token(id)) return *token;
    throw Error("tokenizer " + path_ + ": id " + std::to_string(id) + " names no token (ids 0.." +
                std::to_string(hf_->tok.vocab_size() - 1) + ")");
  }
  const rlhf_spm* sp = get(handle_);
  std::string piece(64, '\0');
  long n = shim().id_to_piece(sp, id, piece.data(), piece.size());
  if (n < 0) throw Error("tokenizer " + path_ + ": " + shim().last_error());
  if (static_cast<size_t>(n) > piece.size()) {
    piece.resize(n);
    n = shim().id_to_piece(sp, id, piece.data(), piece.size());
  }
  piece.resize(n);
  return piece;
}

int Tokenizer::piece_to_id(const std::string& piece) const {
  if (hf_) return hf_->tok.token_to_id(piece);
  get(handle_);
  SpmHandle& h = *handle_;
  std::call_once(h.index_once, [&] {
    const int n = vocab_size();
    for (int id = 0; id < n; ++id) h.id_of_piece.emplace(id_to_piece(id), id);
  });
  const auto it = h.id_of_piece.find(piece);
  return it == h.id_of_piece.end() ? -1 : it->second;
}

int Tokenizer::vocab_size() const {
  return hf_ ? hf_->tok.vocab_size() : shim().vocab_size(get(handle_));
}
int Tokenizer::bos_id() const { return hf_ ? hf_->bos : shim().bos_id(get(handle_)); }
int Tokenizer::eos_id() const { return hf_ ? hf_->eos : shim().eos_id(get(handle_)); }
int Tokenizer::pad_id() const { return hf_ ? hf_->pad : shim().pad_id(get(handle_)); }
int Tokenizer::unk_id() const { return hf_ ? hf_->unk : shim().unk_id(get(handle_)); }
bool Tokenizer::is_special(int id) const {
  if (id < 0 || id >= vocab_size()) return false;
  if (hf_) return hf_->tok.is_special(id);
  return id == bos_id() || id == eos_id() || id == pad_id();
}
float Tokenizer::score(int id) const { return hf_ ? 0.0f : shim().score(get(handle_), id); }

Tokenizer::Format Tokenizer::format() const {
  if (hf_) return Format::kHuggingFace;
  get(handle_);
  return Format::kSentencePiece;
}

std::vector<std::string> Tokenizer::files() const {
  format();  // throws when not loaded
  std::vector<std::string> out{path_};
  if (hf_ && !hf_->config_path.empty()) out.push_back(hf_->config_path);
  return out;
}

std::string Tokenizer::save(const std::string& dir) const {
  const bool json = format() == Format::kHuggingFace;
  const std::filesystem::path d(dir);
  make_dirs(dir);
  // Files of the other format (or a stale config) would change what loading `dir` gives.
  for (const char* stale : {kJsonName, kConfigName, kModelName}) {
    const bool ours = json ? std::string(stale) != kModelName : std::string(stale) == kModelName;
    if (!ours) std::filesystem::remove(d / stale);
  }
  const std::string name = json ? kJsonName : kModelName;
  write_file_atomic((d / name).string(), read_file(path_));
  if (json) {
    if (hf_->config_path.empty()) {
      std::filesystem::remove(d / kConfigName);
    } else {
      write_file_atomic((d / kConfigName).string(), read_file(hf_->config_path));
    }
  }
  return name;
}

std::string train_tokenizer(const TokenizerTrainOptions& o) {
  if (!std::filesystem::is_regular_file(o.input))
    throw Error("tokenizer training input " + o.input + ": no such file");
  if (std::filesystem::file_size(o.input) == 0)
    throw Error("tokenizer training input " + o.input + ": file is empty");
  if (o.vocab_size < 8)
    throw Error("vocab-size " + std::to_string(o.vocab_size) + ": expected at least 8");
  if (o.out_dir.empty()) throw Error("tokenizer training: no output folder given");
  std::string symbols;
  for (const auto& s : o.user_defined_symbols) symbols += (symbols.empty() ? "" : ",") + s;
  std::vector<std::pair<std::string, std::string>> flags = {
      {"model_type", o.model_type},
      {"vocab_size", std::to_string(o.vocab_size)},
      {"byte_fallback", o.byte_fallback ? "true" : "false"},
      {"split_digits", o.split_digits ? "true" : "false"},
      {"character_coverage", std::to_string(o.character_coverage)},
      {"max_sentence_length", std::to_string(o.max_sentence_length)},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "3"},
      // Lossless like Llama's tokenizer: no NFKC folding, whitespace kept, so
      // decode(encode(s)) == s for any UTF-8 text (unseen characters go through byte fallback).
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"allow_whitespace_only_pieces", "true"},
      // Use every line, no random sampling, one thread: training is deterministic.
      {"input_sentence_size", "0"},
      {"shuffle_input_sentence", "false"},
      {"num_threads", "1"},
      {"minloglevel", "2"},
  };
  if (!symbols.empty()) flags.emplace_back("user_defined_symbols", symbols);
  std::vector<const char*> keys, values;
  for (const auto& [k, v] : flags) {
    keys.push_back(k.c_str());
    values.push_back(v.c_str());
  }
  const ShimApi& api = shim();
  char* buffer = nullptr;
  const long size = api.train(o.input.c_str(), keys.data(), values.data(), keys.size(),
                              static_cast<unsigned int>(o.seed), &buffer);
  if (size < 0) throw Error("training tokenizer on " + o.input + ": " + api.last_error());
  const std::string bytes(buffer, static_cast<size_t>(size));
  api.free_buffer(buffer);

  make_dirs(o.out_dir);
  const std::string model = o.out_dir + "/tokenizer.model";
  write_file_atomic(model, bytes);
  // tokenizer.vocab: "piece<TAB>score" per line, like spm_train writes (for people to read).
  const Tokenizer tok = Tokenizer::load(model);
  std::string vocab;
  for (int id = 0; id < tok.vocab_size(); ++id) {
    char score[32];
    std::snprintf(score, sizeof score, "%g", tok.score(id));
    vocab += tok.id_to_piece(id) + "\t" + score + "\n";
  }
  write_file_atomic(o.out_dir + "/tokenizer.vocab", vocab);
  return model;
}

}  // namespace rlhf::policy
