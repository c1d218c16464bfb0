// Tokenizer: a SentencePiece model behind a small protobuf-free seam.
//
// Debian's libsentencepiece embeds protobuf 3.14 while libtorch and our messages use 3.21; linked
// into one process, SentencePiece's Load() aborts. So SentencePiece lives in our own shared library
// (librlhf_spm.so, policy/tokenizer/spm_shim/) with a plain C API, opened with
// dlopen(RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND). It is searched in $RLHF_SPM_SHIM, next to the
// executable, its parent folder, and in the build tree.
// A second trap of RTLD_DEEPBIND: an executable that copy-relocates std::cerr (gtest mains do)
// leaves libstdc++'s own std::cerr unconstructed, and SentencePiece logs through it. So the shim
// runs with SentencePiece's minloglevel at ERROR; its messages reach us through status strings.
//
// Errors: rlhf::Error naming the model file (or the shim and the places it was looked for) for
// every failure: load, encode / decode, training, and any use of a Tokenizer that was not loaded.
// Ownership: a Tokenizer is cheap to copy; copies share the loaded model, freed with the last one.
// Thread safety: nothing here locks. The project uses a loaded model from one thread at a time;
// train_tokenizer seeds SentencePiece's process-wide random generator, so two trainings must not
// run at once in one process.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace rlhf::policy {

struct SpmHandle;  // opaque, owned by the shim

class Tokenizer {
 public:
  // Loads any SentencePiece .model file; throws rlhf::Error naming the file on failure.
  static Tokenizer load(const std::string& model_path);

  // Encodes text to ids (no BOS/EOS added).
  std::vector<int> encode(const std::string& text) const;
  // Decodes ids to text; BOS/EOS/pad ids are skipped.
  std::string decode(const std::vector<int>& ids) const;
  std::string id_to_piece(int id) const;
  float score(int id) const;  // the piece's SentencePiece score (0 when out of range)

  int vocab_size() const;
  int bos_id() const;  // -1 when the model has none
  int eos_id() const;
  int pad_id() const;  // -1 when the model has none (e.g. Llama 2)
  int unk_id() const;

  const std::string& path() const { return path_; }
  const std::string& sha256() const { return sha256_; }  // of the .model file's content

 private:
  std::shared_ptr<SpmHandle> handle_;
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
