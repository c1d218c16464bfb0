// HfTokenizer: a Hugging Face tokenizer.json, encoded and decoded exactly as Hugging Face's
// tokenizers library does (the ids of Tokenizer.encode(text, add_special_tokens) and the text of
// decode(ids, skip_special_tokens=false)), without Python, Rust or SentencePiece.
//
// Supported (what the Qwen2/2.5/3, Llama 2/3, Gemma 1-3, Mistral Nemo, DeepSeek V3, GPT-2/4/4o,
// InternLM2, Baichuan2, ChatGLM3 and Yi tokenizer.json files use, and more): model BPE (byte-level
// or SentencePiece-style; ranked merges as "a b" strings or ["a", "b"] pairs, ignore_merges,
// byte_fallback, unk_token / fuse_unk, continuing_subword_prefix, end_of_word_suffix); normalizers
// NFC, NFD, NFKC, NFKD, Prepend, Replace (string or regex), Strip, Lowercase and Sequence;
// pre-tokenizers Split (regex or string pattern, every behavior, invert), ByteLevel, Metaspace
// (prepend_scheme first / always / never, split), Digits, WhitespaceSplit and Sequence; added
// tokens (special or not; lstrip, rstrip, single_word, normalized) matched before
// pre-tokenization; post-processors TemplateProcessing (single sequences), ByteLevel and Sequence;
// decoders ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace and Sequence. Anything else
// (e.g. models Unigram, WordPiece and WordLevel, pre-tokenizer Whitespace, BertNormalizer) is
// refused when the file loads. Known differences, in cases no shipped file has: Metaspace's "first"
// follows tokenizers' alignments only through the normalizers above (a Replace of several
// characters at the start by something non-empty counts as still at the start); tokenizers panics
// where a Strip decoder with stop > 0 meets an empty token, where this returns it empty.
//
// Errors: load() throws rlhf::Error naming the file and the JSON path (for example
// "pre_tokenizer.pretokenizers[1].type") for malformed JSON, a value of the wrong type, a merge
// naming an unknown token, an unsupported component or option (truncation and padding included),
// and an unreadable file. encode() throws rlhf::Error when the text is not valid UTF-8 (naming the
// byte offset) or when a Split regex hits PCRE2's match limit (never with the Qwen3 / Llama 3
// patterns, which do not backtrack without bound). decode() never throws: like tokenizers, it skips
// ids that name no token and turns invalid UTF-8 into U+FFFD. Any use of a default-constructed
// HfTokenizer throws rlhf::Error. Ownership: an HfTokenizer is cheap to copy; copies share the
// loaded, immutable tokenizer. Thread safety: every const member may be called from any number of
// threads at once (the BPE word cache is guarded by a shared_mutex).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace rlhf::policy {

// One entry of tokenizer.json's "added_tokens".
struct HfAddedToken {
  int id = -1;
  std::string content;
  bool special = false;      // a special token (what skip_special_tokens would skip)
  bool single_word = false;  // matched only when not inside a word
  bool lstrip = false;       // the match takes the whitespace before it
  bool rstrip = false;       // the match takes the whitespace after it
  bool normalized = false;   // matched in the normalized text (else in the original text)
};

class HfTokenizer {
 public:
  HfTokenizer() = default;

  // Loads a tokenizer.json; throws rlhf::Error naming the file and JSON path on any failure.
  static HfTokenizer load(const std::string& tokenizer_json_path);
  // The same from JSON text; `name` stands for the file in error messages.
  static HfTokenizer from_json_text(const std::string& json_text, const std::string& name);

  // The ids of `text` (UTF-8), with the post-processor's special tokens (BOS and the like) when
  // add_special_tokens. Added tokens in the text (e.g. "<|im_start|>") are always recognised.
  std::vector<int> encode(const std::string& text, bool add_special_tokens) const;
  // The text of `ids`, special tokens included (skip_special_tokens=false).
  std::string decode(const std::vector<int>& ids) const;

  // Added tokens first, then the model's vocab (as tokenizers does). -1 / nullopt when unknown.
  int token_to_id(const std::string& token) const;
  std::optional<std::string> id_to_token(int id) const;
  bool is_special(int id) const;  // an added token marked special

  int vocab_size() const;  // largest id + 1, over the model vocab and the added tokens
  const std::vector<HfAddedToken>& added_tokens() const;
  const std::string& path() const;

  struct Impl;

 private:
  const Impl& impl() const;
  std::shared_ptr<const Impl> impl_;
};

}  // namespace rlhf::policy
