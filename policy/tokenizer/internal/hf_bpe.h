// The BPE model of a Hugging Face tokenizer.json (tokenizers' models/bpe): vocab, ranked merges,
// ignore_merges, byte_fallback, unk_token / fuse_unk, continuing_subword_prefix and
// end_of_word_suffix, and a per-word cache.
//
// Errors: the constructor throws rlhf::Error naming the token a merge needs that the vocab lacks;
// tokenize() throws rlhf::Error when unk_token is needed and not in the vocab. Thread safety:
// tokenize() may run on any number of threads at once (the word cache takes a shared_mutex).
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace rlhf::policy::hf {

struct BpeOptions {
  std::optional<std::string> unk_token;                  // null: unknown characters are dropped
  std::optional<std::string> continuing_subword_prefix;  // prepended to non-first characters
  std::optional<std::string> end_of_word_suffix;         // appended to the last character
  bool fuse_unk = false;       // consecutive unknowns become one unk token
  bool byte_fallback = false;  // unknown characters become <0xXX> byte tokens when in the vocab
  bool ignore_merges = false;  // a word that is itself in the vocab is one token
};

class BpeModel {
 public:
  // `merges` in rank order (first = merged first). Throws rlhf::Error("merges[i]: ...") when a
  // part or the merged token is not in the vocab.
  BpeModel(std::unordered_map<std::string, int> vocab,
           const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options);

  // Appends the ids of one pre-token (already byte-level mapped where the pipeline does that).
  void tokenize(std::string_view word, std::vector<int>& out) const;

  int token_to_id(std::string_view token) const;  // -1 when not in the vocab
  const std::string* id_to_token(int id) const;   // null when no token has this id
  size_t vocab_size() const { return vocab_.size(); }
  int max_id() const { return static_cast<int>(id_to_token_.size()) - 1; }

 private:
  struct Merge {
    int rank;
    int new_id;
  };
  static uint64_t pair_key(int a, int b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  // The symbols of `word` before merging: (id, byte length) per character.
  std::vector<std::pair<int, size_t>> initial_symbols(std::string_view word) const;
  std::vector<int> merge_word(std::string_view word) const;

  std::vector<std::string> id_to_token_;             // filled before vocab_, never changed after
  std::unordered_map<std::string_view, int> vocab_;  // views of id_to_token_
  std::vector<bool> has_id_;
  std::unordered_map<uint64_t, Merge> merges_;
  BpeOptions options_;
  int unk_id_ = -1;

  static constexpr size_t kCacheCapacity = 10000;  // words, as tokenizers' DEFAULT_CACHE_CAPACITY
  static constexpr size_t kCacheMaxWordBytes = 256;
  mutable std::shared_mutex cache_mutex_;
  mutable std::deque<std::string> cache_words_;  // owns the cache's keys (a deque never moves them)
  mutable std::unordered_map<std::string_view, std::vector<int>> cache_;
};

}  // namespace rlhf::policy::hf
