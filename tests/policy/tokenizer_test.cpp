// Tokenizer tests: the real Llama 2 model, UTF-8 round trips, the protobuf-version trap (torch +
// our messages + SentencePiece in one process), error messages, deterministic training, the CLI.
#include "policy/tokenizer/tokenizer.h"

#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "common/files.h"
#include "proto/model.pb.h"
#include "tests/test_support.h"

namespace rlhf::policy {
namespace {

using rlhf::testing::TempDir;

const std::vector<std::string> kSamples = {
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "你好，世界！今天天气很好。",
    "Mixed: café, naïve, Ünïcödé, 日本語のテキスト, emoji 🙂🚀",
    "Line one\nLine two\ttabbed",
    "numbers 1234567890 and symbols <>[]{}#@!",
};

// A small deterministic English-ish corpus for training tests.
std::string write_corpus(const std::string& path, int lines) {
  const char* words[] = {"the",    "cat",    "sat",  "on",   "a",      "mat",  "dog",
                         "ran",    "to",     "park", "and",  "played", "with", "ball",
                         "happy",  "little", "girl", "boy",  "tree",   "sun",  "was",
                         "bright", "they",   "went", "home", "story"};
  std::ostringstream os;
  uint32_t state = 12345;
  for (int i = 0; i < lines; ++i) {
    const int n = 5 + static_cast<int>(i % 9);
    for (int j = 0; j < n; ++j) {
      state = state * 1664525u + 1013904223u;
      os << (j ? " " : "") << words[(state >> 16) % 26];
    }
    os << " " << i % 100 << ".\n";
  }
  std::ofstream(path) << os.str();
  return path;
}

TEST(TokenizerTest, Llama2HelloWorld) {
  RLHF_REQUIRE_DATA(model, "llama2-tokenizer/tokenizer.model");
  const Tokenizer tok = Tokenizer::load(model);
  EXPECT_EQ(tok.encode("Hello world"), (std::vector<int>{15043, 3186}));
  EXPECT_EQ(tok.vocab_size(), 32000);
  EXPECT_EQ(tok.unk_id(), 0);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.pad_id(), -1);
  EXPECT_EQ(tok.id_to_piece(15043), "▁Hello");
  EXPECT_EQ(tok.sha256(), sha256_file(model));
  EXPECT_EQ(tok.sha256().size(), 64u);
}

TEST(TokenizerTest, Llama2ByFolderAndTheNewMembers) {
  RLHF_REQUIRE_DATA(model, "llama2-tokenizer/tokenizer.model");
  const std::string folder = std::filesystem::path(model).parent_path().string();
  const Tokenizer tok = Tokenizer::load(folder);
  EXPECT_EQ(tok.format(), Tokenizer::Format::kSentencePiece);
  EXPECT_EQ(tok.path(), model);
  EXPECT_EQ(tok.sha256(), sha256_file(model));
  EXPECT_EQ(tok.encode("Hello world"), (std::vector<int>{15043, 3186}));
  EXPECT_EQ(tok.encode("Hello world", true), (std::vector<int>{1, 15043, 3186}));
  EXPECT_EQ(tok.piece_to_id("▁Hello"), 15043);
  EXPECT_EQ(tok.piece_to_id("<s>"), 1);
  EXPECT_EQ(tok.piece_to_id("no such piece"), -1);
  EXPECT_EQ(tok.files(), std::vector<std::string>{model});
}

TEST(TokenizerTest, Llama2RoundTripUtf8) {
  RLHF_REQUIRE_DATA(model, "llama2-tokenizer/tokenizer.model");
  const Tokenizer tok = Tokenizer::load(model);
  for (const auto& s : kSamples) {
    const auto ids = tok.encode(s);
    EXPECT_FALSE(ids.empty());
    EXPECT_EQ(tok.decode(ids), s) << "ids: " << ids.size();
  }
  // BOS/EOS are control symbols: decoding skips them.
  auto ids = tok.encode("Hello world");
  ids.insert(ids.begin(), tok.bos_id());
  ids.push_back(tok.eos_id());
  EXPECT_EQ(tok.decode(ids), "Hello world");
  // A long input (forces the buffer-regrow path).
  std::string long_text;
  for (int i = 0; i < 500; ++i) long_text += "长文本 long text " + std::to_string(i) + " ";
  EXPECT_EQ(tok.decode(tok.encode(long_text)), long_text);
}

TEST(TokenizerTest, SameProcessAsTorchAndOurProtobuf) {
  // The trap: libsentencepiece embeds protobuf 3.14; linked directly next to libtorch and our
  // 3.21 messages, Load() aborts. Through the dlopen()ed shim all three coexist.
  RLHF_REQUIRE_DATA(model, "llama2-tokenizer/tokenizer.model");
  proto::ModelConfig config;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(
      "schema_version: 1 vocab_size: 32000 dim: 64 n_layers: 2", &config));
  const std::string bytes = config.SerializeAsString();
  const torch::Tensor x = torch::randn({8, 8});
  const torch::Tensor y = torch::matmul(x, x.t());

  const Tokenizer tok = Tokenizer::load(model);
  const auto ids = tok.encode("Hello world");
  EXPECT_EQ(ids, (std::vector<int>{15043, 3186}));

  // Everything still works after the tokenizer is loaded.
  proto::ModelConfig again;
  ASSERT_TRUE(again.ParseFromString(bytes));
  EXPECT_EQ(again.vocab_size(), tok.vocab_size());
  const torch::Tensor t = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()));
  EXPECT_EQ(t.sum().item<int64_t>(), 15043 + 3186);
  EXPECT_TRUE(torch::allclose(y, y.t()));
}

TEST(TokenizerTest, BadModelPathNamesTheFile) {
  TempDir dir("tok");
  const std::string missing = dir / "no_such_tokenizer.model";
  try {
    Tokenizer::load(missing);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
  }
  const std::string garbage = dir / "garbage.model";
  std::ofstream(garbage) << "this is not a sentencepiece model";
  try {
    Tokenizer::load(garbage);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(garbage), std::string::npos) << e.what();
  }
}

TEST(TokenizerTest, OutOfRangeIdIsAnError) {
  RLHF_REQUIRE_DATA(model, "llama2-tokenizer/tokenizer.model");
  const Tokenizer tok = Tokenizer::load(model);
  EXPECT_THROW(tok.decode({15043, 32000}), Error);
  EXPECT_THROW(tok.id_to_piece(-1), Error);
}

TEST(TokenizerTest, TrainingIsDeterministicWithFixedIds) {
  TempDir dir("toktrain");
  TokenizerTrainOptions o;
  o.input = write_corpus(dir / "corpus.txt", 2000);
  o.vocab_size = 400;
  o.seed = 7;
  o.out_dir = dir / "a";
  const std::string a = train_tokenizer(o);
  o.out_dir = dir / "b";
  const std::string b = train_tokenizer(o);
  EXPECT_EQ(a, dir / "a/tokenizer.model");
  EXPECT_TRUE(file_exists(dir / "a/tokenizer.vocab"));
  EXPECT_EQ(sha256_file(a), sha256_file(b));

  const Tokenizer tok = Tokenizer::load(a);
  EXPECT_EQ(tok.vocab_size(), 400);
  EXPECT_EQ(tok.unk_id(), 0);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.pad_id(), 3);
  // Merges learned: a frequent word is one piece.
  EXPECT_EQ(tok.encode("the").size(), 1u);
  // Byte fallback: text never seen in training round-trips exactly, without unk.
  for (const auto& s : kSamples) {
    const auto ids = tok.encode(s);
    for (int id : ids) EXPECT_NE(id, tok.unk_id()) << s;
    EXPECT_EQ(tok.decode(ids), s);
  }
}

TEST(TokenizerTest, TrainingErrorsNameTheInput) {
  TempDir dir("tokerr");
  TokenizerTrainOptions o;
  o.input = dir / "missing.txt";
  o.out_dir = dir / "out";
  try {
    train_tokenizer(o);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(o.input), std::string::npos) << e.what();
  }
  // Vocabulary larger than the corpus supports: SentencePiece's reason comes through.
  o.input = write_corpus(dir / "tiny.txt", 3);
  o.vocab_size = 5000;
  EXPECT_THROW(train_tokenizer(o), Error);
}

TEST(TokenizerTest, CommandLine) {
  const std::string rlhf = rlhf::testing::rlhf_binary();
  if (!file_exists(rlhf)) GTEST_SKIP() << "rlhf executable not built: " << rlhf;
  TempDir dir("tokcli");
  const std::string corpus = write_corpus(dir / "corpus.txt", 1000);
  std::string out;
  ASSERT_EQ(rlhf::testing::run_command(rlhf + " tokenizer train --input " + corpus +
                                           " --vocab-size 320 --seed 3 --out " + (dir / "tok"),
                                       &out),
            0)
      << out;
  const std::string model = dir / "tok/tokenizer.model";
  ASSERT_TRUE(file_exists(model)) << out;
  const Tokenizer tok = Tokenizer::load(model);
  const auto ids = tok.encode("the little cat");
  std::string expected_ids;
  for (int id : ids) expected_ids += (expected_ids.empty() ? "" : " ") + std::to_string(id);

  ASSERT_EQ(
      rlhf::testing::run_command(
          rlhf + " tokenizer encode --model " + model + " --text 'the little cat'", &out, false),
      0);
  EXPECT_EQ(out, expected_ids + "\n");
  ASSERT_EQ(rlhf::testing::run_command(
                rlhf + " tokenizer decode --model " + model + " --ids '" + expected_ids + "'", &out,
                false),
            0);
  EXPECT_EQ(out, "the little cat\n");

  // A missing model: non-zero exit, one line naming the file.
  const std::string missing = dir / "nope.model";
  EXPECT_NE(rlhf::testing::run_command(rlhf + " tokenizer encode --model " + missing + " --text hi",
                                       &out),
            0);
  EXPECT_NE(out.find(missing), std::string::npos) << out;
}

}  // namespace
}  // namespace rlhf::policy
