// Tokenizer: one interface over the two tokenizer formats the project reads.
//
// Formats and the load rule. Tokenizer::load(path) accepts
//   - a SentencePiece .model file (any file that is not named *.json),
//   - a Hugging Face tokenizer.json (any file named *.json; read by HfTokenizer, hf_tokenizer.h),
//   - a model folder holding tokenizer.model or tokenizer.json. When it holds both, tokenizer.model
//     wins: every folder that loaded before tokenizer.json was read keeps loading the same
//     tokenizer (the sha256 its checkpoints record; a tokenizer.json shipped beside a .model is
//     another file, with another hash). Pass the tokenizer.json's own path to use it instead. A
//     folder holding neither is an error naming the folder and the two file names expected.
// The SentencePiece path behaves exactly as before this interface covered tokenizer.json.
//
// Special ids of a tokenizer.json (bos_id, eos_id, pad_id, unk_id), in this order:
//   1. tokenizer_config.json in the same folder, when present: its bos_token / eos_token /
//      pad_token / unk_token, each a string or a {"content": ...} object naming a token of
//      tokenizer.json (an error when it names none), or null for "none" (-1).
//   2. A field absent from tokenizer_config.json, or no tokenizer_config.json: bos_id is the first
//      id the post-processor puts before the text when add_special_tokens is on (Llama 3's
//      TemplateProcessing: <|begin_of_text|>), eos_id the first it puts after it; -1 when it puts
//      none. pad_id and unk_id are -1.
// Identity: sha256() is the hash of the one tokenizer file's content (.model or tokenizer.json);
// tokenizer_config.json does not enter it. files() lists every file read; save() copies them.
//
// SentencePiece: Debian's libsentencepiece embeds protobuf 3.14 while libtorch and our messages
// use 3.21; linked into one process, SentencePiece's Load() aborts. So SentencePiece lives in our
// own shared library (librlhf_spm.so, policy/tokenizer/spm_shim/) with a plain C API, opened with
// dlopen(RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND). It is searched in $RLHF_SPM_SHIM, next to the
// executable, its parent folder, and in the build tree.
// A second trap of RTLD_DEEPBIND: an executable that copy-relocates std::cerr (gtest mains do)
// leaves libstdc++'s own std::cerr unconstructed, and SentencePiece logs through it. So the shim
// runs with SentencePiece's minloglevel at ERROR; its messages reach us through status strings.
//
// Errors: rlhf::Error naming the model file (or the shim and the places it was looked for, or the
// folder) for every failure: load, encode / decode, training, and any use of a Tokenizer that was
// not loaded.
// Ownership: a Tokenizer is cheap to copy; copies share the loaded model, freed with the last one.
// Thread safety: nothing here locks except piece_to_id's one-time index of a SentencePiece model
// (std::call_once). The project uses a loaded model from one thread at a time; train_tokenizer
// seeds SentencePiece's process-wide random generator, so two trainings must not run at once in
// one process.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace rlhf::policy {

struct SpmHandle;  // opaque, owned by the shim
struct HfState;    // a loaded tokenizer.json and its special ids (tokenizer.cpp)

class Tokenizer {
 public:
  enum class Format { kSentencePiece, kHuggingFace };

  // Loads a .model, a tokenizer.json or a folder holding one (the rule above); throws
  // rlhf::Error naming the file or folder on failure.
  static Tokenizer load(const std::string& path);
  // The tokenizer file `path` stands for: `path` itself when it is not a folder, else the file
  // the folder rule picks. Throws rlhf::Error for a folder holding neither file.
  static std::string resolve_path(const std::string& path);
  // The tokenizer file inside folder `dir` (tokenizer.model, else tokenizer.json); "" when none.
  static std::string file_in_folder(const std::string& dir);

  // Encodes text to ids (no BOS/EOS added; for tokenizer.json add_special_tokens=false).
  std::vector<int> encode(const std::string& text) const;
  // With add_special_tokens: tokenizer.json as Hugging Face's add_special_tokens=True (its
  // post-processor); SentencePiece: BOS first when the model has one. Without: encode(text).
  std::vector<int> encode(const std::string& text, bool add_special_tokens) const;
  // Decodes ids to text; BOS/EOS/pad ids are skipped. Every other id of a tokenizer.json decodes
  // as HfTokenizer::decode does (special tokens included). Throws rlhf::Error for an id outside
  // [0, vocab_size()).
  std::string decode(const std::vector<int>& ids) const;
  // Decodes as Hugging Face's decode(ids, skip_special_tokens) for a tokenizer.json: every id
  // (BOS / EOS / pad too) unless skip_special_tokens, which drops the special tokens
  // (is_special). A SentencePiece model decodes as decode(ids) either way (its control pieces
  // have no text). Throws rlhf::Error for an id outside [0, vocab_size()).
  std::string decode(const std::vector<int>& ids, bool skip_special_tokens) const;
  std::string id_to_piece(int id) const;            // throws rlhf::Error for an id naming no piece
  int piece_to_id(const std::string& piece) const;  // -1 when no piece is exactly `piece`
  float score(int id) const;  // the piece's SentencePiece score (0 when out of range; 0 for json)

  int vocab_size() const;
  int bos_id() const;  // -1 when the model has none
  int eos_id() const;
  int pad_id() const;  // -1 when the model has none (e.g. Llama 2)
  int unk_id() const;
  // Whether `id` is a special token: for a tokenizer.json an added token marked special, for a
  // SentencePiece model its BOS, EOS or pad id. False for an id outside [0, vocab_size()).
  bool is_special(int id) const;

  Format format() const;
  const std::string& path() const { return path_; }      // the tokenizer file (folder resolved)
  const std::string& sha256() const { return sha256_; }  // of that file's content
  // Every file the tokenizer was read from: path(), then tokenizer_config.json when it was used.
  std::vector<std::string> files() const;
  // Copies files() into folder `dir` (created) as tokenizer.model, or tokenizer.json and
  // tokenizer_config.json, atomically each; returns the main file's name ("tokenizer.json").
  std::string save(const std::string& dir) const;

 private:
  std::shared_ptr<SpmHandle> handle_;
  std::shared_ptr<const HfState> hf_;
  std::string path_, sha256_;
};

struct TokenizerTrainOptions {
  std::string input;  // UTF-8 text file, one sentence/document per line
  int vocab_size = 4096;
  std::string out_dir;  // writes <out_dir>/tokenizer.model and tokenizer.vocab
  uint64_t seed = 0;    // SentencePiece's random seed (training is deterministic given it)
  std::string model_type = "bpe";
  bool byte_fallback = true;
  bool split_digits = false;  // false keeps numbers like "12" whole when frequent
  std::vector<std::string> user_defined_symbols;  // pieces always kept whole
  double character_coverage = 1.0;
  int max_sentence_length = 16384;
};

// Trains a SentencePiece model (BPE, byte fallback, bos=1 eos=2 unk=0 pad=3, identity
// normalisation and kept whitespace so decode(encode(s)) == s). Writes tokenizer.model and
// tokenizer.vocab atomically; the same input text + options + seed give byte-identical files
// (the input path is not recorded in the model). Returns the path of tokenizer.model. Throws
// rlhf::Error with SentencePiece's message on failure.
std::string train_tokenizer(const TokenizerTrainOptions& options);

}  // namespace rlhf::policy
