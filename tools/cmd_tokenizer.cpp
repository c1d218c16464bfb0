// `rlhf tokenizer train|encode|decode`: train a SentencePiece BPE model, or apply a tokenizer
// (SentencePiece .model, tokenizer.json or a folder holding one: policy/tokenizer/tokenizer.h) to
// one text / id list or to a JSON-lines file.
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"
#include "policy/tokenizer/tokenizer.h"
#include "tools/cli.h"

namespace {

using rlhf::cli::Args;
using rlhf::policy::Tokenizer;

int train(const Args& args) {
  rlhf::policy::TokenizerTrainOptions o;
  o.input = args.get("input");
  o.out_dir = args.get("out");
  o.vocab_size = static_cast<int>(args.get_int("vocab-size"));
  o.seed = static_cast<uint64_t>(args.get_int("seed"));
  o.split_digits = args.get_bool("split-digits");
  o.character_coverage = args.get_double("character-coverage");
  const std::string model = rlhf::policy::train_tokenizer(o);
  const auto tok = Tokenizer::load(model);
  std::printf("wrote %s (vocab %d, sha256 %s)\n", model.c_str(), tok.vocab_size(),
              tok.sha256().c_str());
  return 0;
}

// Exactly one of the two flags; returns true for `file_flag`.
bool one_of(const Args& args, const char* inline_flag, const char* file_flag) {
  if (args.has(inline_flag) == args.has(file_flag))
    throw rlhf::UsageError(std::string("give exactly one of --") + inline_flag + " and --" +
                           file_flag);
  return args.has(file_flag);
}

// The byte offset of the first invalid UTF-8 sequence in `s` (overlong forms, surrogates and code
// points past U+10FFFF included), or npos.
size_t invalid_utf8_offset(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto b = static_cast<unsigned char>(s[i]);
    const size_t n = b < 0x80           ? 1
                     : (b >> 5) == 0x6  ? 2
                     : (b >> 4) == 0xE  ? 3
                     : (b >> 3) == 0x1E ? 4
                                        : 0;
    if (n == 0 || i + n > s.size()) return i;
    uint32_t cp = n == 1 ? b : b & (0x7F >> n);
    for (size_t k = 1; k < n; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      if ((c & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (c & 0x3F);
    }
    const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += n;
  }
  return std::string::npos;
}

// Calls fn(json) for every line of a JSON-lines file ("-" = stdin); a line that is
// not a JSON object is an rlhf::Error naming FILE:LINE; errors fn throws get that context.
template <typename Fn>
void for_each_json_line(const std::string& path, const std::string& expected, Fn fn) {
  std::ifstream file;
  if (path != "-") {
    file.open(path, std::ios::binary);
    if (!file) throw rlhf::Error(path + ": cannot open");
  }
  std::istream& in = path == "-" ? std::cin : file;
  std::string line;
  for (size_t n = 1; std::getline(in, line); ++n) {
    const std::string where = path + ":" + std::to_string(n);
    if (const size_t bad = invalid_utf8_offset(line); bad != std::string::npos)
      throw rlhf::Error(where + ": invalid UTF-8 at byte " + std::to_string(bad) + " (expected " +
                        expected + " in UTF-8)");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw rlhf::Error(where + ": expected " + expected + " (not valid JSON: " + e.what() + ")");
    }
    if (!j.is_object()) throw rlhf::Error(where + ": expected " + expected);
    try {
      fn(j);
    } catch (const std::exception&) {
      rlhf::rethrow_with_context(where);
    }
  }
  if (in.bad()) throw rlhf::Error(path + ": read error");
}

std::string ids_line(const std::vector<int>& ids) {
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
  return line;
}

int encode(const Args& args) {
  const bool from_file = one_of(args, "text", "input");
  const bool special = args.get_bool("add-special-tokens");
  if (special && args.get_bool("bos"))
    throw rlhf::UsageError("give one of --bos and --add-special-tokens");
  const auto tok = Tokenizer::load(args.get("model"));
  if (!from_file) {
    std::vector<int> ids = tok.encode(args.get("text"), special);
    if (args.get_bool("bos") && tok.bos_id() >= 0) ids.insert(ids.begin(), tok.bos_id());
    std::printf("%s\n", ids_line(ids).c_str());
    return 0;
  }
  if (args.get_bool("bos")) throw rlhf::UsageError("--bos applies to --text only");
  const char* expected = "a JSON object with a string \"text\"";
  for_each_json_line(args.get("input"), expected, [&](const nlohmann::json& j) {
    const auto it = j.find("text");
    if (it == j.end() || !it->is_string()) throw rlhf::Error(std::string("expected ") + expected);
    const nlohmann::json out = {{"ids", tok.encode(it->get<std::string>(), special)}};
    std::printf("%s\n", out.dump().c_str());
  });
  return 0;
}

// `what` prefixes the message ("--ids: ").
void check_range(const Tokenizer& tok, int64_t id, const std::string& what) {
  if (id < 0 || id >= tok.vocab_size())
    throw rlhf::Error(what + "id " + std::to_string(id) + " is out of range [0, " +
                      std::to_string(tok.vocab_size()) + ")");
}

std::vector<int> ids_of_flag(const Tokenizer& tok, const std::string& text) {
  std::vector<int> ids;
  std::istringstream in(text);
  std::string word;
  while (in >> word) {
    try {
      size_t used = 0;
      ids.push_back(std::stoi(word, &used));
      if (used != word.size()) throw std::invalid_argument(word);
    } catch (const std::exception&) {
      throw rlhf::UsageError("--ids: '" + word + "' is not an integer id");
    }
    check_range(tok, ids.back(), "--ids: ");
  }
  return ids;
}

std::vector<int> ids_of_json(const Tokenizer& tok, const nlohmann::json& j) {
  const char* expected = "expected a JSON object with an array of integers \"ids\"";
  const auto it = j.find("ids");
  if (it == j.end() || !it->is_array()) throw rlhf::Error(expected);
  std::vector<int> ids;
  for (size_t k = 0; k < it->size(); ++k) {
    const nlohmann::json& v = (*it)[k];
    if (!v.is_number_integer())
      throw rlhf::Error(std::string(expected) + " (\"ids\"[" + std::to_string(k) + "] is " +
                        v.dump() + ")");
    const int64_t id = v.get<int64_t>();
    check_range(tok, id, "");
    ids.push_back(static_cast<int>(id));
  }
  return ids;
}

int decode(const Args& args) {
  const bool from_file = one_of(args, "ids", "input");
  const auto tok = Tokenizer::load(args.get("model"));
  const bool skip = args.get_bool("skip-special-tokens");
  if (!from_file) {
    std::printf("%s\n", tok.decode(ids_of_flag(tok, args.get("ids")), skip).c_str());
    return 0;
  }
  const char* expected = "a JSON object with an array of integers \"ids\"";
  for_each_json_line(args.get("input"), expected, [&](const nlohmann::json& j) {
    const nlohmann::json out = {{"text", tok.decode(ids_of_json(tok, j), skip)}};
    // Text that is not UTF-8 (a cut byte-fallback sequence) shows as U+FFFD.
    std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  });
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

rlhf::cli::Register reg_encode(
    {"tokenizer encode",
     "print the token ids of a text (space-separated), or of each {\"text\": ...} line of a JSONL "
     "file (one {\"ids\": [...]} line each)",
     "--model PATH (--text TEXT | --input FILE.jsonl) [--add-special-tokens | --bos]",
     {{"model", ".model, tokenizer.json or a folder holding one", "", false, true},
      {"text", "text to encode", ""},
      {"input", "JSON lines {\"text\": ...} to encode (\"-\" = stdin)", ""},
      {"add-special-tokens",
       "as Hugging Face's add_special_tokens=True (tokenizer.json: its post-processor; "
       "SentencePiece: BOS first)",
       "", true},
      {"bos", "with --text: prepend the BOS id", "", true}},
     encode});

rlhf::cli::Register reg_decode(
    {"tokenizer decode",
     "print the text of space-separated token ids, or of each {\"ids\": [...]} line of a JSONL "
     "file (one {\"text\": ...} line each), as Hugging Face's decode(ids, "
     "skip_special_tokens=False) for a tokenizer.json (special tokens kept); a SentencePiece "
     ".model drops its control pieces",
     "--model PATH (--ids \"1 2 3\" | --input FILE.jsonl) [--skip-special-tokens]",
     {{"model", ".model, tokenizer.json or a folder holding one", "", false, true},
      {"ids", "space-separated ids", ""},
      {"input", "JSON lines {\"ids\": [...]} to decode (\"-\" = stdin)", ""},
      {"skip-special-tokens", "drop special tokens (Hugging Face's skip_special_tokens=True)", "",
       true}},
     decode});

}  // namespace
