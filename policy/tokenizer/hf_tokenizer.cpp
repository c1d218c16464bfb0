#include "policy/tokenizer/hf_tokenizer.h"

#include <algorithm>
#include <array>
#include <nlohmann/json.hpp>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "common/error.h"
#include "common/files.h"
#include "policy/tokenizer/internal/hf_bpe.h"
#include "policy/tokenizer/internal/hf_pipeline.h"
#include "policy/tokenizer/internal/hf_text.h"

namespace rlhf::policy {

using hf::AddedTokenTrie;
using hf::PostProcessorStep;
using hf::PreTokenizerStep;
using hf::Segment;
using hf::SplitBehavior;
using hf::TemplatePiece;

namespace {

std::string_view slice(std::string_view s, size_t start, size_t end) {
  return s.substr(start, end - start);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Encoding

namespace {

size_t lstrip_start(std::string_view s, size_t start) {
  size_t i = start;
  while (i > 0) {
    size_t b = i - 1;
    while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
    size_t at = b;
    if (!hf::is_whitespace(hf::next_code_point(s, at))) break;
    i = b;
  }
  return i;
}

size_t rstrip_end(std::string_view s, size_t stop) {
  size_t i = stop;
  while (i < s.size()) {
    size_t at = i;
    if (!hf::is_whitespace(hf::next_code_point(s, at))) break;
    i = at;
  }
  return i;
}

bool single_word_ok(std::string_view s, size_t start, size_t stop) {
  if (start > 0) {
    size_t b = start - 1;
    while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
    if (hf::is_word_char(hf::next_code_point(s, b))) return false;
  }
  if (stop < s.size()) {
    size_t at = stop;
    if (hf::is_word_char(hf::next_code_point(s, at))) return false;
  }
  return true;
}

}  // namespace

// tokenizers' AddedVocabulary::find_matches, including its quirks: a skipped single_word match
// or an rstrip does not move where the next match is searched from.
std::vector<Segment> HfTokenizer::Impl::split_added(std::string_view s,
                                                    const AddedTokenTrie& trie) const {
  std::vector<Segment> out;
  if (trie.empty()) {
    if (!s.empty()) out.push_back(Segment{0, s.size(), -1});
    return out;
  }
  size_t start_offset = 0;
  for (size_t i = 0; i < s.size();) {
    size_t len = 0;
    const int t = trie.match(s, i, &len);
    if (t < 0) {
      ++i;
      continue;
    }
    size_t start = i, stop = i + len;
    i = stop;
    const HfAddedToken& token = added[t];
    if (token.single_word && !single_word_ok(s, start, stop)) continue;
    if (token.lstrip) start = std::max(lstrip_start(s, start), start_offset);
    if (token.rstrip) stop = rstrip_end(s, stop);
    if (start > start_offset) out.push_back(Segment{start_offset, start, -1});
    out.push_back(Segment{start, stop, token.id});
    start_offset = stop;
  }
  if (start_offset < s.size()) out.push_back(Segment{start_offset, s.size(), -1});
  return out;
}

namespace {

// Every match of `pattern` in `s` replaced by `content` (tokenizers' NormalizedString::replace and
// the Replace decoder). *offset (when given), a byte offset into `s`, becomes the matching offset
// into the result (a match it falls inside ends at the end of its replacement).
std::string replace_all(const std::string& s, const hf::SplitRegex& pattern,
                        const std::string& content, size_t* offset = nullptr) {
  std::string out;
  size_t prev = 0, mapped = offset ? *offset : 0;
  bool done = false;
  for (const auto& [a, b] : pattern.find_all(s)) {
    if (offset && !done && *offset <= a) mapped = out.size() + (*offset - prev), done = true;
    out.append(s, prev, a - prev);
    out += content;
    if (offset && !done && *offset <= b) mapped = out.size(), done = true;
    prev = b;
  }
  if (offset && !done) mapped = out.size() + (*offset - prev);
  out.append(s, prev, std::string::npos);
  if (offset) *offset = mapped;
  return out;
}

// `s` without White_Space at the left and/or right (tokenizers' Strip normalizer).
std::string strip_whitespace(const std::string& s, bool left, bool right) {
  size_t start = 0, end = s.size();
  if (left) start = rstrip_end(s, 0);
  if (right) end = std::max(start, lstrip_start(s, s.size()));
  return s.substr(start, end - start);
}

size_t first_char_bytes(std::string_view s) {
  size_t i = 0;
  if (!s.empty()) hf::next_code_point(s, i);
  return i;
}

}  // namespace

std::string HfTokenizer::Impl::normalize(std::string_view s, size_t* start_span) const {
  using Kind = hf::NormalizerStep::Kind;
  std::string out(s);
  size_t span = start_span ? std::min(*start_span, s.size()) : 0;
  for (const hf::NormalizerStep& step : normalizers) {
    const std::string prefix = out.substr(0, span);
    switch (step.kind) {
      case Kind::kNormalForm:
        out = hf::normalize(out, step.form);
        if (span) span = std::max(hf::normalize(prefix, step.form).size(), first_char_bytes(out));
        break;
      case Kind::kPrepend:
        if (!out.empty()) out.insert(0, step.content);
        if (span) span += step.content.size();
        break;
      case Kind::kReplace:
        out = replace_all(out, *step.pattern, step.content, &span);
        break;
      case Kind::kStrip: {
        const size_t before = out.size();
        out = strip_whitespace(out, step.strip_left, false);
        span -= std::min(span, before - out.size());
        out = strip_whitespace(out, false, step.strip_right);
        break;
      }
      case Kind::kLowercase:
        out = hf::lowercase(out);
        span = hf::lowercase(prefix).size();
        break;
    }
    span = std::min(span, out.size());
  }
  if (start_span) *start_span = span;
  return out;
}

namespace {

using hf::PreToken;

// tokenizers' NormalizedString::split: the pieces of `p` around the matches, grouped by behavior.
void split_pieces(const PreToken& p, const PreTokenizerStep& step, std::vector<PreToken>& out) {
  const std::string& s = p.text;
  std::vector<std::pair<std::pair<size_t, size_t>, bool>> splits;  // (range, is_match)
  size_t prev = 0;
  for (const auto& [a, b] : step.regex->find_all(s)) {
    if (prev != a) splits.push_back({{prev, a}, step.invert});
    splits.push_back({{a, b}, !step.invert});
    prev = b;
  }
  if (prev != s.size()) splits.push_back({{prev, s.size()}, step.invert});
  std::vector<std::pair<size_t, size_t>> pieces;
  bool previous_match = false;
  const SplitBehavior behavior = step.behavior;
  if (behavior == SplitBehavior::kMergedWithNext) std::reverse(splits.begin(), splits.end());
  for (const auto& [range, is_match] : splits) {
    if (behavior == SplitBehavior::kRemoved) {
      if (!is_match) pieces.push_back(range);
      continue;
    }
    bool merge = false;
    if (behavior == SplitBehavior::kContiguous) merge = is_match == previous_match;
    if (behavior == SplitBehavior::kMergedWithPrevious ||
        behavior == SplitBehavior::kMergedWithNext) {
      merge = is_match && !previous_match;
    }
    if (merge && !pieces.empty()) {
      if (behavior == SplitBehavior::kMergedWithNext) {
        pieces.back().first = range.first;
      } else {
        pieces.back().second = range.second;
      }
    } else {
      pieces.push_back(range);
    }
    previous_match = is_match;
  }
  if (behavior == SplitBehavior::kMergedWithNext) std::reverse(pieces.begin(), pieces.end());
  for (const auto& [a, b] : pieces) {
    if (a != b)
      out.push_back(PreToken{s.substr(a, b - a), a < p.start_span ? p.start_span - a : 0});
  }
}

void byte_level_pieces(PreToken p, const PreTokenizerStep& step, std::vector<PreToken>& out) {
  std::string& s = p.text;
  if (step.add_prefix_space && (s.empty() || s[0] != ' ')) {
    s.insert(s.begin(), ' ');
    if (p.start_span) ++p.start_span;
  }
  std::vector<PreToken> parts;
  if (step.regex) {
    split_pieces(p, step, parts);
  } else if (!s.empty()) {
    parts.push_back(std::move(p));
  }
  const auto& map = hf::byte_to_char_utf8();
  for (PreToken& part : parts) {
    std::string mapped;
    mapped.reserve(part.text.size() * 2);
    size_t span = 0;
    for (size_t i = 0; i < part.text.size(); ++i) {
      mapped += map[static_cast<unsigned char>(part.text[i])];
      if (i + 1 == std::min(part.start_span, part.text.size())) span = mapped.size();
    }
    out.push_back(PreToken{std::move(mapped), span});
  }
}

// tokenizers' Metaspace: spaces become the replacement, which is put before a piece that lacks it
// (by prepend_scheme), then the piece is split before each replacement when `split`.
void metaspace_pieces(PreToken p, const PreTokenizerStep& step, std::vector<PreToken>& out) {
  const hf::MetaspaceOptions& m = *step.metaspace;
  std::string s;
  size_t span = 0;
  for (size_t i = 0; i < p.text.size(); ++i) {
    if (p.text[i] == ' ') {
      s += m.replacement;
    } else {
      s += p.text[i];
    }
    if (i + 1 == std::min(p.start_span, p.text.size())) span = s.size();
  }
  const bool prepend = m.prepend_scheme == hf::PrependScheme::kAlways ||
                       (m.prepend_scheme == hf::PrependScheme::kFirst && span > 0);
  if (prepend && !s.empty() && s.compare(0, m.replacement.size(), m.replacement) != 0) {
    s.insert(0, m.replacement);
    if (span) span += m.replacement.size();
  }
  p.text = std::move(s);
  p.start_span = span;
  if (m.split) {
    split_pieces(p, step, out);
  } else if (!p.text.empty()) {
    out.push_back(std::move(p));
  }
}

}  // namespace

std::vector<std::string> HfTokenizer::Impl::pre_tokenize(std::string_view s,
                                                         size_t start_span) const {
  std::vector<PreToken> pieces{PreToken{std::string(s), start_span}};
  for (const PreTokenizerStep& step : pre_tokenizers) {
    std::vector<PreToken> next;
    next.reserve(pieces.size());
    for (PreToken& p : pieces) {
      if (step.byte_level) {
        byte_level_pieces(std::move(p), step, next);
      } else if (step.metaspace) {
        metaspace_pieces(std::move(p), step, next);
      } else {
        split_pieces(p, step, next);
      }
    }
    pieces = std::move(next);
  }
  std::vector<std::string> out;
  out.reserve(pieces.size());
  for (PreToken& p : pieces) out.push_back(std::move(p.text));
  return out;
}

void HfTokenizer::Impl::encode_segment(std::string_view s, bool at_start,
                                       std::vector<int>& ids) const {
  size_t span = at_start ? first_char_bytes(s) : 0;
  const std::string normalized = normalize(s, &span);
  for (const Segment& seg : split_added(normalized, normalized_trie)) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
      continue;
    }
    const size_t seg_span = seg.start < span ? span - seg.start : 0;
    for (const std::string& piece : pre_tokenize(slice(normalized, seg.start, seg.end), seg_span)) {
      model->tokenize(piece, ids);
    }
  }
}

std::vector<int> HfTokenizer::encode(const std::string& text, bool add_special_tokens) const {
  const Impl& im = impl();
  if (const size_t bad = hf::invalid_utf8_offset(text); bad != std::string_view::npos) {
    throw Error("HfTokenizer::encode (" + im.path + "): the text is not valid UTF-8 at byte " +
                std::to_string(bad));
  }
  std::vector<int> ids;
  try {
    for (const Segment& seg : im.split_added(text, im.raw_trie)) {
      if (seg.id >= 0) {
        ids.push_back(seg.id);
      } else {
        im.encode_segment(slice(text, seg.start, seg.end), seg.start == 0, ids);
      }
    }
  } catch (const Error&) {
    rethrow_with_context("HfTokenizer::encode (" + im.path + ")");
  }
  if (!add_special_tokens) return ids;
  for (const PostProcessorStep& step : im.post_processors) {
    if (step.byte_level) continue;
    std::vector<int> out;
    for (const TemplatePiece& piece : step.single) {
      const std::vector<int>& part = piece.sequence ? ids : piece.ids;
      out.insert(out.end(), part.begin(), part.end());
    }
    ids = std::move(out);
  }
  return ids;
}

// ---------------------------------------------------------------------------------------------
// Decoding and lookups

namespace {

using DecoderKind = hf::DecoderStep::Kind;

// ByteLevel: every token's characters mapped back to bytes (a token with a character that stands
// for no byte is kept as it is), all joined into one token, invalid UTF-8 as U+FFFD.
std::vector<std::string> byte_level_decode(const std::vector<std::string>& tokens) {
  std::string bytes;
  for (const std::string& t : tokens) {
    std::string mapped;
    bool all = true;
    for (size_t i = 0; i < t.size() && all;) {
      const int b = hf::char_to_byte(hf::next_code_point(t, i));
      all = b >= 0;
      mapped += static_cast<char>(b);
    }
    bytes += all ? mapped : t;
  }
  return {hf::utf8_lossy(bytes)};
}

// The byte of a "<0xXX>" token (Rust's u8::from_str_radix on "XX", so "+A" and lower case count).
int byte_token_value(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int value = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = t[i];
    int digit = -1;
    if (c >= '0' && c <= '9') digit = c - '0';
    if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
    if (c >= 'A' && c <= 'F') digit = c - 'A' + 10;
    if (digit < 0 && !(i == 3 && c == '+')) return -1;
    value = digit < 0 ? value : value * 16 + digit;
  }
  return value;
}

// ByteFallback: runs of byte tokens become their UTF-8 text, or one U+FFFD per byte when invalid.
std::vector<std::string> byte_fallback_decode(const std::vector<std::string>& tokens) {
  std::vector<std::string> out;
  std::string bytes;
  auto flush = [&] {
    if (bytes.empty()) return;
    if (hf::invalid_utf8_offset(bytes) == std::string_view::npos) {
      out.push_back(bytes);
    } else {
      out.insert(out.end(), bytes.size(), "\xEF\xBF\xBD");
    }
    bytes.clear();
  };
  for (const std::string& t : tokens) {
    if (const int b = byte_token_value(t); b >= 0) {
      bytes += static_cast<char>(b);
      continue;
    }
    flush();
    out.push_back(t);
  }
  flush();
  return out;
}

// Strip: up to `start` leading and `stop` trailing copies of one character off every token.
std::string strip_token(const std::string& t, const hf::DecoderStep& step) {
  std::vector<std::pair<size_t, char32_t>> chars;  // (byte offset, code point)
  for (size_t i = 0; i < t.size();) {
    const size_t at = i;
    chars.emplace_back(at, hf::next_code_point(t, i));
  }
  size_t first = 0, last = chars.size();
  while (first < step.start && first < chars.size() && chars[first].second == step.strip_char) {
    ++first;
  }
  for (size_t k = 0; k < step.stop && last > first && chars[last - 1].second == step.strip_char;
       ++k) {
    --last;
  }
  const size_t a = first < chars.size() ? chars[first].first : t.size();
  const size_t b = last < chars.size() ? chars[last].first : t.size();
  return t.substr(a, b - a);
}

// Metaspace: the replacement becomes a space, except in the first token (where it is dropped)
// unless prepend_scheme is "never".
std::vector<std::string> metaspace_decode(std::vector<std::string> tokens,
                                          const hf::DecoderStep& step) {
  const std::string& r = step.replacement;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string space = i == 0 && step.prepend_scheme != hf::PrependScheme::kNever ? "" : " ";
    std::string out;
    const std::string& t = tokens[i];
    for (size_t at = 0; at < t.size();) {
      if (t.compare(at, r.size(), r) == 0) {
        out += space;
        at += r.size();
      } else {
        out += t[at++];
      }
    }
    tokens[i] = std::move(out);
  }
  return tokens;
}

std::vector<std::string> apply_decoder(const hf::DecoderStep& step,
                                       std::vector<std::string> tokens) {
  switch (step.kind) {
    case DecoderKind::kByteLevel:
      return byte_level_decode(tokens);
    case DecoderKind::kByteFallback:
      return byte_fallback_decode(tokens);
    case DecoderKind::kFuse: {
      std::string all;
      for (const std::string& t : tokens) all += t;
      return {all};
    }
    case DecoderKind::kReplace:
      for (std::string& t : tokens) t = replace_all(t, *step.pattern, step.content);
      return tokens;
    case DecoderKind::kStrip:
      for (std::string& t : tokens) t = strip_token(t, step);
      return tokens;
    case DecoderKind::kMetaspace:
      return metaspace_decode(std::move(tokens), step);
  }
  return tokens;
}

}  // namespace

std::string HfTokenizer::decode(const std::vector<int>& ids) const {
  const Impl& im = impl();
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int id : ids) {
    if (const auto it = im.added_by_id.find(id); it != im.added_by_id.end()) {
      tokens.push_back(im.added[it->second].content);
    } else if (const std::string* t = im.model->id_to_token(id)) {
      tokens.push_back(*t);
    }  // ids that name no token are skipped, as tokenizers does
  }
  std::string out;
  if (!im.has_decoder) {
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  for (const hf::DecoderStep& step : im.decoders) tokens = apply_decoder(step, std::move(tokens));
  for (const std::string& t : tokens) out += t;
  return out;
}

const HfTokenizer::Impl& HfTokenizer::impl() const {
  if (!impl_) throw Error("HfTokenizer used before load()");
  return *impl_;
}

int HfTokenizer::token_to_id(const std::string& token) const {
  const Impl& im = impl();
  if (const auto it = im.added_by_content.find(token); it != im.added_by_content.end()) {
    return im.added[it->second].id;
  }
  return im.model->token_to_id(token);
}

std::optional<std::string> HfTokenizer::id_to_token(int id) const {
  const Impl& im = impl();
  if (const auto it = im.added_by_id.find(id); it != im.added_by_id.end()) {
    return im.added[it->second].content;
  }
  if (const std::string* t = im.model->id_to_token(id)) return *t;
  return std::nullopt;
}

bool HfTokenizer::is_special(int id) const {
  const Impl& im = impl();
  const auto it = im.added_by_id.find(id);
  return it != im.added_by_id.end() && im.added[it->second].special;
}

int HfTokenizer::vocab_size() const { return impl().vocab_size; }
const std::vector<HfAddedToken>& HfTokenizer::added_tokens() const { return impl().added; }
const std::string& HfTokenizer::path() const { return impl().path; }

}  // namespace rlhf::policy
