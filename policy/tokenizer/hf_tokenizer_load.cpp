// Reading tokenizer.json into an HfTokenizer::Impl: every component and option is checked, and
// what tokenizers would do differently from this implementation is refused by name.
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"
#include "policy/tokenizer/hf_tokenizer.h"
#include "policy/tokenizer/internal/hf_json.h"
#include "policy/tokenizer/internal/hf_pipeline.h"

namespace rlhf::policy {

namespace {

using hf::JsonNode;
using hf::PostProcessorStep;
using hf::PreTokenizerStep;
using hf::SplitBehavior;
using hf::TemplatePiece;

[[noreturn]] void unsupported(const JsonNode& type, const std::string& what,
                              const std::string& supported) {
  type.fail("unsupported " + what + " type '" + type.str() + "' (supported: " + supported + ")");
}

hf::SplitRegex load_pattern(const JsonNode& pattern) {
  pattern.object();
  const JsonNode regex = pattern["Regex"], literal = pattern["String"];
  if (regex.present() == literal.present()) {
    pattern.fail("expected an object with one of \"Regex\" or \"String\"");
  }
  const JsonNode& which = regex.present() ? regex : literal;
  const std::string text = which.str();
  try {
    return regex.present() ? hf::SplitRegex(text) : hf::SplitRegex::literal(text);
  } catch (const Error& e) {
    which.fail(e.what());
  }
}

void load_normalizer(const JsonNode& n, std::vector<hf::NormalizerStep>& out) {
  if (n.is_null()) return;
  const JsonNode type = n["type"];
  const std::string t = type.str();
  using Kind = hf::NormalizerStep::Kind;
  hf::NormalizerStep step;
  if (t == "Sequence") {
    const JsonNode list = n["normalizers"];
    for (size_t i = 0; i < list.array().size(); ++i) load_normalizer(list[i], out);
    return;
  } else if (t == "NFC" || t == "NFD" || t == "NFKC" || t == "NFKD") {
    step.form = t == "NFC"    ? hf::NormalForm::kNFC
                : t == "NFD"  ? hf::NormalForm::kNFD
                : t == "NFKC" ? hf::NormalForm::kNFKC
                              : hf::NormalForm::kNFKD;
  } else if (t == "Prepend") {
    step.kind = Kind::kPrepend;
    step.content = n["prepend"].str();
  } else if (t == "Replace") {
    step.kind = Kind::kReplace;
    step.pattern = load_pattern(n["pattern"]);
    step.content = n["content"].str();
  } else if (t == "Strip") {
    step.kind = Kind::kStrip;
    step.strip_left = n["strip_left"].boolean();
    step.strip_right = n["strip_right"].boolean();
  } else if (t == "Lowercase") {
    step.kind = Kind::kLowercase;
  } else {
    unsupported(type, "normalizer",
                "NFC, NFD, NFKC, NFKD, Prepend, Replace, Strip, Lowercase, Sequence");
  }
  out.push_back(std::move(step));
}

SplitBehavior load_behavior(const JsonNode& n) {
  const std::string b = n.str();
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  n.fail("unsupported split behavior '" + b +
         "' (supported: Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous)");
}

// A JSON string of exactly one character (Strip's content, Metaspace's replacement).
char32_t load_char(const JsonNode& n) {
  const std::string s = n.str();
  size_t i = 0;
  const char32_t c = s.empty() ? 0 : hf::next_code_point(s, i);
  if (s.empty() || i != s.size()) n.fail("expected one character, got '" + s + "'");
  return c;
}

hf::PrependScheme load_prepend_scheme(const JsonNode& n) {
  const JsonNode scheme = n["prepend_scheme"], add = n["add_prefix_space"];
  if (scheme.is_null()) {
    return add.boolean_or(true) ? hf::PrependScheme::kAlways : hf::PrependScheme::kNever;
  }
  const std::string s = scheme.str();
  hf::PrependScheme out = hf::PrependScheme::kAlways;
  if (s == "first") {
    out = hf::PrependScheme::kFirst;
  } else if (s == "never") {
    out = hf::PrependScheme::kNever;
  } else if (s != "always") {
    scheme.fail("unsupported prepend_scheme '" + s + "' (supported: first, always, never)");
  }
  if (!add.boolean_or(true) && out != hf::PrependScheme::kNever) {
    add.fail("add_prefix_space false contradicts prepend_scheme '" + s + "'");
  }
  return out;
}

hf::MetaspaceOptions load_metaspace(const JsonNode& n) {
  hf::MetaspaceOptions m;
  load_char(n["replacement"]);
  m.replacement = n["replacement"].str();
  m.prepend_scheme = load_prepend_scheme(n);
  m.split = n["split"].boolean_or(true);
  return m;
}

void load_pre_tokenizer(const JsonNode& n, std::vector<PreTokenizerStep>& out) {
  if (n.is_null()) return;
  const JsonNode type = n["type"];
  const std::string t = type.str();
  if (t == "Sequence") {
    const JsonNode list = n["pretokenizers"];
    for (size_t i = 0; i < list.array().size(); ++i) load_pre_tokenizer(list[i], out);
    return;
  }
  PreTokenizerStep step;
  if (t == "Split") {
    step.regex = load_pattern(n["pattern"]);
    step.behavior = load_behavior(n["behavior"]);
    step.invert = n["invert"].boolean_or(false);
  } else if (t == "ByteLevel") {
    step.byte_level = true;
    step.add_prefix_space = n["add_prefix_space"].boolean_or(true);
    n["trim_offsets"].boolean_or(true);  // offsets only: checked for its type
    if (n["use_regex"].boolean_or(true)) step.regex = hf::SplitRegex(hf::kByteLevelRegex);
  } else if (t == "Metaspace") {
    step.metaspace = load_metaspace(n);
    step.regex = hf::SplitRegex::literal(step.metaspace->replacement);
    step.behavior = SplitBehavior::kMergedWithNext;
  } else if (t == "Digits") {
    // char::is_numeric (Nd, Nl, No), each digit alone or runs of them.
    step.regex = hf::SplitRegex("\\p{N}");
    step.behavior = n["individual_digits"].boolean_or(false) ? SplitBehavior::kIsolated
                                                             : SplitBehavior::kContiguous;
  } else if (t == "WhitespaceSplit") {
    step.regex = hf::SplitRegex("\\s");  // White_Space, as char::is_whitespace
    step.behavior = SplitBehavior::kRemoved;
  } else {
    unsupported(type, "pre_tokenizer",
                "Split, ByteLevel, Metaspace, Digits, WhitespaceSplit, Sequence");
  }
  out.push_back(std::move(step));
}

std::vector<std::pair<std::string, std::string>> load_merges(const JsonNode& merges) {
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.array().size());
  for (size_t i = 0; i < merges.array().size(); ++i) {
    const JsonNode m = merges[i];
    if (m.value().is_string()) {
      const std::string s = m.str();
      const size_t space = s.find(' ');
      if (space == std::string::npos)
        m.fail("expected \"a b\" (two tokens and a space), got '" + s + "'");
      out.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else {
      if (!m.value().is_array() || m.value().size() != 2) {
        m.fail("expected \"a b\" or [\"a\", \"b\"], got " + m.value().dump().substr(0, 60));
      }
      out.emplace_back(m[size_t{0}].str(), m[size_t{1}].str());
    }
  }
  return out;
}

std::unique_ptr<hf::BpeModel> load_model(const JsonNode& model) {
  model.object();
  const JsonNode type = model["type"];
  if (type.str() != "BPE") unsupported(type, "model", "BPE");
  if (!model["dropout"].is_null()) model["dropout"].fail("BPE dropout is not supported (use null)");
  hf::BpeOptions options;
  options.unk_token = model["unk_token"].optional_str();
  options.continuing_subword_prefix = model["continuing_subword_prefix"].optional_str();
  options.end_of_word_suffix = model["end_of_word_suffix"].optional_str();
  options.fuse_unk = model["fuse_unk"].boolean_or(false);
  options.byte_fallback = model["byte_fallback"].boolean_or(false);
  options.ignore_merges = model["ignore_merges"].boolean_or(false);
  const JsonNode vocab_node = model["vocab"];
  std::unordered_map<std::string, int> vocab;
  vocab.reserve(vocab_node.object().size());
  for (const auto& [token, id] : vocab_node.object().items()) {
    if (!id.is_number_integer() || id.get<long long>() < 0 || id.get<long long>() > INT32_MAX) {
      vocab_node.fail("token '" + token + "': expected an id (a non-negative integer), got " +
                      id.dump());
    }
    vocab.emplace(token, static_cast<int>(id.get<long long>()));
  }
  const auto merges = load_merges(model["merges"]);
  try {
    return std::make_unique<hf::BpeModel>(std::move(vocab), merges, std::move(options));
  } catch (const Error& e) {
    model.fail(e.what());
  }
}

}  // namespace

namespace {

HfAddedToken load_added_token(const JsonNode& n) {
  n.object();
  HfAddedToken t;
  const long long id = n["id"].integer();
  if (id < 0 || id > INT32_MAX) n["id"].fail("expected a non-negative 32-bit id");
  t.id = static_cast<int>(id);
  t.content = n["content"].str();
  if (t.content.empty()) n["content"].fail("an added token cannot be empty");
  t.special = n["special"].boolean_or(false);
  t.single_word = n["single_word"].boolean_or(false);
  t.lstrip = n["lstrip"].boolean_or(false);
  t.rstrip = n["rstrip"].boolean_or(false);
  t.normalized = n["normalized"].boolean_or(!t.special);
  return t;
}

// tokenizers gives an added token its vocab id when the model has it, else the next id after the
// largest added one (at least the model's vocab size); files that say otherwise are refused.
void load_added_tokens(const JsonNode& list, HfTokenizer::Impl& im) {
  if (list.is_null()) return;
  const int model_size = static_cast<int>(im.model->vocab_size());
  int max_added = -1;
  for (size_t i = 0; i < list.array().size(); ++i) {
    const JsonNode n = list[i];
    HfAddedToken t = load_added_token(n);
    if (im.added_by_content.count(t.content)) {
      n["content"].fail("token '" + t.content + "' is listed twice");
    }
    int expected = im.model->token_to_id(t.content);
    if (expected < 0) {
      expected = max_added < 0                                  ? model_size
                 : (max_added >= model_size || model_size == 0) ? max_added + 1
                                                                : model_size;
    }
    if (t.id != expected) {
      n["id"].fail("token '" + t.content + "' has id " + std::to_string(t.id) +
                   " but tokenizers would give it id " + std::to_string(expected) +
                   " (ids must follow the model's vocab in order)");
    }
    max_added = std::max(max_added, t.id);
    const size_t index = im.added.size();
    im.added_by_content.emplace(t.content, index);
    im.added_by_id.emplace(t.id, index);
    if (t.normalized) {
      const std::string normalized = im.normalize(t.content);
      if (!normalized.empty()) im.normalized_trie.insert(normalized, static_cast<int>(index));
    } else {
      im.raw_trie.insert(t.content, static_cast<int>(index));
    }
    im.added.push_back(std::move(t));
  }
}

std::vector<TemplatePiece> load_template(const JsonNode& n) {
  const JsonNode single = n["single"], specials = n["special_tokens"];
  std::vector<TemplatePiece> out;
  for (size_t i = 0; i < single.array().size(); ++i) {
    const JsonNode item = single[i];
    const JsonNode seq = item["Sequence"], special = item["SpecialToken"];
    if (item.object().size() != 1 || (!seq.present() && !special.present())) {
      item.fail("expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
    TemplatePiece piece;
    if (seq.present()) {
      if (seq["id"].str() != "A") seq["id"].fail("a single-sequence template can only use A");
      piece.sequence = true;
    } else {
      const std::string name = special["id"].str();
      const JsonNode entry = specials[name.c_str()];
      if (entry.is_null()) special["id"].fail("'" + name + "' is not in special_tokens");
      const JsonNode ids = entry["ids"];
      for (size_t k = 0; k < ids.array().size(); ++k) {
        const long long id = ids[k].integer();
        if (id < 0 || id > INT32_MAX) ids[k].fail("expected a non-negative 32-bit id");
        piece.ids.push_back(static_cast<int>(id));
      }
    }
    out.push_back(std::move(piece));
  }
  return out;
}

void load_post_processor(const JsonNode& n, std::vector<PostProcessorStep>& out) {
  if (n.is_null()) return;
  const JsonNode type = n["type"];
  const std::string t = type.str();
  if (t == "Sequence") {
    const JsonNode list = n["processors"];
    for (size_t i = 0; i < list.array().size(); ++i) load_post_processor(list[i], out);
  } else if (t == "ByteLevel") {
    n["trim_offsets"].boolean_or(true);  // offsets only: checked for its type
    out.push_back(PostProcessorStep{true, {}});
  } else if (t == "TemplateProcessing") {
    out.push_back(PostProcessorStep{false, load_template(n)});
  } else {
    unsupported(type, "post_processor", "TemplateProcessing, ByteLevel, Sequence");
  }
}

size_t load_count(const JsonNode& n) {
  const long long v = n.integer();
  if (v < 0 || v > INT32_MAX) n.fail("expected a non-negative count");
  return static_cast<size_t>(v);
}

void load_decoder(const JsonNode& n, HfTokenizer::Impl& im) {
  if (n.is_null()) return;
  const JsonNode type = n["type"];
  const std::string t = type.str();
  using Kind = hf::DecoderStep::Kind;
  im.has_decoder = true;
  hf::DecoderStep step;
  if (t == "Sequence") {
    const JsonNode list = n["decoders"];
    for (size_t i = 0; i < list.array().size(); ++i) load_decoder(list[i], im);
    return;
  } else if (t == "ByteLevel") {
    step.kind = Kind::kByteLevel;
  } else if (t == "ByteFallback") {
    step.kind = Kind::kByteFallback;
  } else if (t == "Fuse") {
    step.kind = Kind::kFuse;
  } else if (t == "Replace") {
    step.kind = Kind::kReplace;
    step.pattern = load_pattern(n["pattern"]);
    step.content = n["content"].str();
  } else if (t == "Strip") {
    step.kind = Kind::kStrip;
    step.strip_char = load_char(n["content"]);
    step.start = load_count(n["start"]);
    step.stop = load_count(n["stop"]);
  } else if (t == "Metaspace") {
    step.kind = Kind::kMetaspace;
    const hf::MetaspaceOptions m = load_metaspace(n);
    step.replacement = m.replacement;
    step.prepend_scheme = m.prepend_scheme;
  } else {
    unsupported(type, "decoder",
                "ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace, Sequence");
  }
  im.decoders.push_back(std::move(step));
}

}  // namespace

HfTokenizer HfTokenizer::from_json_text(const std::string& json_text, const std::string& name) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(name + ": not a valid tokenizer.json (JSON parse error): " + e.what());
  }
  const JsonNode root(&j, "", &name);
  root.object();
  for (const char* key : {"truncation", "padding"}) {
    if (!root[key].is_null()) root[key].fail("is not supported (must be null)");
  }
  auto im = std::make_shared<Impl>();
  im->path = name;
  load_normalizer(root["normalizer"], im->normalizers);
  load_pre_tokenizer(root["pre_tokenizer"], im->pre_tokenizers);
  im->model = load_model(root["model"]);
  load_added_tokens(root["added_tokens"], *im);
  load_post_processor(root["post_processor"], im->post_processors);
  load_decoder(root["decoder"], *im);
  im->vocab_size = im->model->max_id() + 1;
  for (const HfAddedToken& t : im->added) im->vocab_size = std::max(im->vocab_size, t.id + 1);
  HfTokenizer tok;
  tok.impl_ = std::move(im);
  return tok;
}

HfTokenizer HfTokenizer::load(const std::string& tokenizer_json_path) {
  return from_json_text(read_file(tokenizer_json_path), tokenizer_json_path);
}

}  // namespace rlhf::policy
