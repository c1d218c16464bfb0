// The parts of a loaded Hugging Face tokenizer (HfTokenizer::Impl) shared by hf_tokenizer.cpp
// (encoding, decoding) and hf_tokenizer_load.cpp (reading tokenizer.json).
//
// Errors: nothing here throws but std::bad_alloc; the loader throws rlhf::Error. Thread safety:
// an Impl is immutable once loaded (the BPE cache has its own lock); any number of threads may
// use it at once.
#pragma once

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "policy/tokenizer/hf_tokenizer.h"
#include "policy/tokenizer/internal/hf_bpe.h"
#include "policy/tokenizer/internal/hf_text.h"

namespace rlhf::policy {

namespace hf {

// GPT-2's pre-tokenization regex: ByteLevel with use_regex.
inline constexpr const char* kByteLevelRegex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// One normalizer: a Unicode normal form, Prepend (when the text is not empty), Replace (every
// match of a pattern by `content`), Strip (White_Space at the left and/or right) or Lowercase
// (Rust's char::to_lowercase).
struct NormalizerStep {
  enum class Kind { kNormalForm, kPrepend, kReplace, kStrip, kLowercase } kind = Kind::kNormalForm;
  NormalForm form = NormalForm::kNFC;
  std::optional<SplitRegex> pattern;  // Replace
  std::string content;                // Prepend's text; Replace's replacement
  bool strip_left = false, strip_right = false;
};

// Metaspace's prepend_scheme: where the replacement is put before a piece that lacks it.
enum class PrependScheme { kFirst, kAlways, kNever };

// One decoder of tokenizers' decode_chain, which maps the token strings to new token strings.
struct DecoderStep {
  enum class Kind {
    kByteLevel,
    kReplace,
    kByteFallback,
    kFuse,
    kStrip,
    kMetaspace
  } kind = Kind::kByteLevel;
  std::optional<SplitRegex> pattern;  // Replace
  std::string content;                // Replace's replacement
  char32_t strip_char = ' ';          // Strip: up to `start` of it at the start, `stop` at the end
  size_t start = 0, stop = 0;
  std::string replacement;  // Metaspace: this character (UTF-8) stands for a space
  PrependScheme prepend_scheme = PrependScheme::kAlways;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct MetaspaceOptions {
  std::string replacement;  // one character (UTF-8) that stands for a space
  PrependScheme prepend_scheme = PrependScheme::kAlways;
  bool split = true;  // split before each replacement (the regex below, MergedWithNext)
};

struct PreTokenizerStep {
  bool byte_level = false;
  std::optional<MetaspaceOptions> metaspace;
  std::optional<hf::SplitRegex> regex;  // Split's pattern; ByteLevel's GPT-2 regex when use_regex
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;  // ByteLevel
};

struct TemplatePiece {
  bool sequence = false;  // the encoded text ("$A"); else these special token ids
  std::vector<int> ids;
};

struct PostProcessorStep {
  bool byte_level = false;  // ByteLevel only trims offsets: the ids stay as they are
  std::vector<TemplatePiece> single;
};

// Byte trie of added tokens' texts, for tokenizers' leftmost-longest Aho-Corasick matching.
class AddedTokenTrie {
 public:
  void insert(const std::string& text, int token) {
    int node = 0;
    for (const char c : text) {
      const auto b = static_cast<unsigned char>(c);
      int next = child(node, b);
      if (next < 0) {
        next = static_cast<int>(nodes_.size());
        nodes_[node].next.emplace_back(b, next);
        nodes_.emplace_back();
      }
      node = next;
    }
    if (nodes_[node].token < 0) nodes_[node].token = token;
    first_[static_cast<unsigned char>(text[0])] = true;
  }
  // The longest token starting at s[i] (its index; *len its byte length), or -1.
  int match(std::string_view s, size_t i, size_t* len) const {
    if (!first_[static_cast<unsigned char>(s[i])]) return -1;
    int node = 0, best = -1;
    for (size_t k = i; k < s.size(); ++k) {
      node = child(node, static_cast<unsigned char>(s[k]));
      if (node < 0) break;
      if (nodes_[node].token >= 0) best = nodes_[node].token, *len = k + 1 - i;
    }
    return best;
  }
  bool empty() const { return nodes_.size() == 1; }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int>> next;
    int token = -1;
  };
  int child(int node, unsigned char b) const {
    for (const auto& [c, n] : nodes_[node].next) {
      if (c == b) return n;
    }
    return -1;
  }
  std::vector<Node> nodes_{1};
  std::array<bool, 256> first_{};
};

// A piece of text between added tokens, or an added token (id >= 0).
struct Segment {
  size_t start, end;
  int id;
};

// A piece of pre-tokenized text. start_span: how many of its leading bytes stand for the original
// text's first character (tokenizers' offsets_original().0 == 0, what Metaspace's prepend_scheme
// "first" asks); 0 when the piece does not begin there.
struct PreToken {
  std::string text;
  size_t start_span;
};

}  // namespace hf

struct HfTokenizer::Impl {
  std::string path;
  std::vector<hf::NormalizerStep> normalizers;
  std::vector<hf::PreTokenizerStep> pre_tokenizers;
  std::unique_ptr<hf::BpeModel> model;
  std::vector<hf::PostProcessorStep> post_processors;
  bool has_decoder = false;  // none: the tokens are joined with " "
  std::vector<hf::DecoderStep> decoders;
  std::vector<HfAddedToken> added;  // file order
  std::unordered_map<std::string, size_t> added_by_content;
  std::unordered_map<int, size_t> added_by_id;
  hf::AddedTokenTrie raw_trie, normalized_trie;
  int vocab_size = 0;

  std::vector<hf::Segment> split_added(std::string_view s, const hf::AddedTokenTrie& trie) const;
  // *start_span (when given): the bytes of `s` that stand for the original text's first character
  // (0: none), updated to those of the result.
  std::string normalize(std::string_view s, size_t* start_span = nullptr) const;
  // start_span: as PreToken's, for `s`.
  std::vector<std::string> pre_tokenize(std::string_view s, size_t start_span) const;
  // at_start: `s` begins at the original text's first character.
  void encode_segment(std::string_view s, bool at_start, std::vector<int>& ids) const;
};

}  // namespace rlhf::policy
