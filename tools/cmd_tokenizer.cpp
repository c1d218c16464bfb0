// `rlhf tokenizer train|encode|decode`: train a SentencePiece BPE model, or apply one.
#include <cstdio>
#include <sstream>

#include "common/error.h"
#include "policy/tokenizer/tokenizer.h"
#include "tools/cli.h"

namespace {

using rlhf::cli::Args;

int train(const Args& args) {
  rlhf::policy::TokenizerTrainOptions o;
  o.input = args.get("input");
  o.out_dir = args.get("out");
  o.vocab_size = static_cast<int>(args.get_int("vocab-size"));
  o.seed = static_cast<uint64_t>(args.get_int("seed"));
  o.split_digits = args.get_bool("split-digits");
  o.character_coverage = args.get_double("character-coverage");
  const std::string model = rlhf::policy::train_tokenizer(o);
  const auto tok = rlhf::policy::Tokenizer::load(model);
  std::printf("wrote %s (vocab %d, sha256 %s)\n", model.c_str(), tok.vocab_size(),
              tok.sha256().c_str());
  return 0;
}

int encode(const Args& args) {
  const auto tok = rlhf::policy::Tokenizer::load(args.get("model"));
  std::vector<int> ids;
  if (args.get_bool("bos") && tok.bos_id() >= 0) ids.push_back(tok.bos_id());
  for (int id : tok.encode(args.get("text"))) ids.push_back(id);
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
  std::printf("%s\n", line.c_str());
  return 0;
}

int decode(const Args& args) {
  const auto tok = rlhf::policy::Tokenizer::load(args.get("model"));
  std::vector<int> ids;
  std::istringstream in(args.get("ids"));
  std::string word;
  while (in >> word) {
    try {
      size_t used = 0;
      ids.push_back(std::stoi(word, &used));
      if (used != word.size()) throw std::invalid_argument(word);
    } catch (const std::exception&) {
      throw rlhf::UsageError("--ids: '" + word + "' is not an integer id");
    }
  }
  std::printf("%s\n", tok.decode(ids).c_str());
  return 0;
}

rlhf::cli::Register reg_train(
    {"tokenizer train",
     "train a SentencePiece BPE tokenizer (byte fallback; unk=0 bos=1 eos=2 pad=3)",
     "--input FILE --vocab-size N --out DIR [--seed S] [--split-digits]",
     {{"input", "UTF-8 text file, one sentence/document per line", "", false, true},
      {"vocab-size", "number of pieces", "4096"},
      {"out", "output folder (tokenizer.model, tokenizer.vocab)", "", false, true},
      {"seed", "random seed (same input + seed = same model)", "0"},
      {"split-digits", "split numbers into single digits", "", true},
      {"character-coverage", "share of characters covered by pieces (rest: bytes)", "1.0"}},
     train});

rlhf::cli::Register reg_encode({"tokenizer encode",
                                "print the token ids of a text",
                                "--model FILE --text TEXT [--bos]",
                                {{"model", "SentencePiece .model file", "", false, true},
                                 {"text", "text to encode", "", false, true},
                                 {"bos", "prepend the BOS id", "", true}},
                                encode});

rlhf::cli::Register reg_decode({"tokenizer decode",
                                "print the text of space-separated token ids",
                                "--model FILE --ids \"1 2 3\"",
                                {{"model", "SentencePiece .model file", "", false, true},
                                 {"ids", "space-separated ids", "", false, true}},
                                decode});

}  // namespace
