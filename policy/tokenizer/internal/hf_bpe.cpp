#include "policy/tokenizer/internal/hf_bpe.h"

#include <cstdio>
#include <mutex>
#include <queue>

#include "common/error.h"

namespace rlhf::policy::hf {

BpeModel::BpeModel(std::unordered_map<std::string, int> vocab,
                   const std::vector<std::pair<std::string, std::string>>& merges,
                   BpeOptions options)
    : options_(std::move(options)) {
  for (auto& [token, id] : vocab) {
    if (id < 0) throw Error("vocab: token '" + token + "' has a negative id " + std::to_string(id));
    if (static_cast<size_t>(id) >= id_to_token_.size()) {
      id_to_token_.resize(id + 1);
      has_id_.resize(id + 1, false);
    }
    if (has_id_[id]) {
      throw Error("vocab: id " + std::to_string(id) + " is given to both '" + id_to_token_[id] +
                  "' and '" + token + "'");
    }
    id_to_token_[id] = token;
    has_id_[id] = true;
  }
  vocab_.reserve(vocab.size());
  for (size_t id = 0; id < id_to_token_.size(); ++id) {
    if (has_id_[id]) vocab_.emplace(id_to_token_[id], static_cast<int>(id));
  }
  const size_t prefix_len =
      options_.continuing_subword_prefix ? options_.continuing_subword_prefix->size() : 0;
  merges_.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto& [a, b] = merges[i];
    const std::string where = "merges[" + std::to_string(i) + "]: ";
    const int a_id = token_to_id(a), b_id = token_to_id(b);
    if (a_id < 0) throw Error(where + "token '" + a + "' is not in the vocab");
    if (b_id < 0) throw Error(where + "token '" + b + "' is not in the vocab");
    const std::string merged = a + (b.size() >= prefix_len ? b.substr(prefix_len) : b);
    const int new_id = token_to_id(merged);
    if (new_id < 0) throw Error(where + "merged token '" + merged + "' is not in the vocab");
    merges_[pair_key(a_id, b_id)] = Merge{static_cast<int>(i), new_id};  // a later duplicate wins
  }
  if (options_.unk_token) {
    unk_id_ = token_to_id(*options_.unk_token);
    if (unk_id_ < 0) throw Error("unk_token '" + *options_.unk_token + "' is not in the vocab");
  }
}

int BpeModel::token_to_id(std::string_view token) const {
  const auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

const std::string* BpeModel::id_to_token(int id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !has_id_[id]) return nullptr;
  return &id_to_token_[id];
}

std::vector<std::pair<int, size_t>> BpeModel::initial_symbols(std::string_view word) const {
  std::vector<std::pair<int, size_t>> symbols;
  symbols.reserve(word.size());
  std::optional<std::pair<int, size_t>> unk;
  std::string piece;
  for (size_t i = 0; i < word.size();) {
    size_t len = 1;
    const auto b0 = static_cast<unsigned char>(word[i]);
    if (b0 >= 0xF0) {
      len = 4;
    } else if (b0 >= 0xE0) {
      len = 3;
    } else if (b0 >= 0xC0) {
      len = 2;
    }
    const bool first = i == 0, last = i + len >= word.size();
    piece.clear();
    if (!first && options_.continuing_subword_prefix) piece += *options_.continuing_subword_prefix;
    piece.append(word.data() + i, len);
    if (last && options_.end_of_word_suffix) piece += *options_.end_of_word_suffix;
    i += len;
    if (const int id = token_to_id(piece); id >= 0) {
      if (unk) symbols.push_back(*unk), unk.reset();
      symbols.emplace_back(id, len);
      continue;
    }
    if (options_.byte_fallback) {
      std::vector<int> bytes;
      for (const char c : piece) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", static_cast<unsigned char>(c));
        const int id = token_to_id(name);
        if (id < 0) break;
        bytes.push_back(id);
      }
      if (bytes.size() == piece.size()) {
        for (const int id : bytes) symbols.emplace_back(id, 1);
        continue;
      }
    }
    if (unk_id_ < 0) continue;  // no unk token: the character is dropped, as tokenizers does
    if (unk && options_.fuse_unk) {
      unk->second += len;
    } else {
      if (unk) symbols.push_back(*unk);
      unk = std::make_pair(unk_id_, len);
    }
  }
  if (unk) symbols.push_back(*unk);
  return symbols;
}

// tokenizers' Word::merge_all: a queue of (rank, position), lowest first; stale entries (the
// pair changed since) are skipped.
std::vector<int> BpeModel::merge_word(std::string_view word) const {
  struct Symbol {
    int id;
    int prev, next;
    size_t len;
  };
  std::vector<Symbol> sym;
  for (const auto& [id, len] : initial_symbols(word)) {
    const int n = static_cast<int>(sym.size());
    sym.push_back(Symbol{id, n - 1, n + 1, len});
  }
  if (!sym.empty()) sym.back().next = -1;
  struct Entry {
    int rank, pos, new_id;
    bool operator<(const Entry& o) const {  // priority_queue pops the largest: invert
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Entry> queue;
  auto push = [&](int pos, int right) {
    const auto it = merges_.find(pair_key(sym[pos].id, sym[right].id));
    if (it != merges_.end()) queue.push(Entry{it->second.rank, pos, it->second.new_id});
  };
  for (int i = 0; i + 1 < static_cast<int>(sym.size()); ++i) push(i, i + 1);
  while (!queue.empty()) {
    const Entry top = queue.top();
    queue.pop();
    Symbol& cur = sym[top.pos];
    if (cur.len == 0 || cur.next == -1) continue;
    const int right_pos = cur.next;
    const Symbol right = sym[right_pos];
    const auto it = merges_.find(pair_key(cur.id, right.id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;
    cur.id = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    sym[right_pos].len = 0;
    if (right.next >= 0) sym[right.next].prev = top.pos;
    if (cur.prev >= 0) push(cur.prev, top.pos);
    if (cur.next >= 0) push(top.pos, cur.next);
  }
  std::vector<int> ids;
  for (const Symbol& s : sym) {
    if (s.len != 0) ids.push_back(s.id);
  }
  return ids;
}

void BpeModel::tokenize(std::string_view word, std::vector<int>& out) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    if (const int id = token_to_id(word); id >= 0) {
      out.push_back(id);
      return;
    }
  }
  {
    std::shared_lock lock(cache_mutex_);
    if (const auto it = cache_.find(word); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int> ids = merge_word(word);
  out.insert(out.end(), ids.begin(), ids.end());
  if (word.size() < kCacheMaxWordBytes) {
    std::unique_lock lock(cache_mutex_);
    if (cache_.size() < kCacheCapacity && !cache_.count(word)) {
      cache_words_.emplace_back(word);
      cache_.emplace(cache_words_.back(), std::move(ids));
    }
  }
}

}  // namespace rlhf::policy::hf
