// Text helpers of the Hugging Face tokenizer (policy/tokenizer/hf_tokenizer.h): UTF-8, Unicode
// normalization (utf8proc), the regexes of Split pre-tokenizers (PCRE2, UTF + UCP, JIT), the GPT-2
// byte-to-character map of ByteLevel, and Rust's lossy UTF-8 decoding.
//
// Errors: SplitRegex's constructor, find_all() (a PCRE2 match error such as its backtracking
// limit) and normalize() throw rlhf::Error with a message saying what failed (the caller adds the
// file and JSON path); the other functions never throw (except
// std::bad_alloc). Thread safety: everything is immutable after construction; a SplitRegex may be
// used from any number of threads at once (each call has its own PCRE2 match data).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rlhf::policy::hf {

// Byte offset of the first byte that is not part of valid UTF-8 (the rules of Rust's str: no
// surrogates, no overlongs, nothing above U+10FFFF), or npos when `s` is valid.
size_t invalid_utf8_offset(std::string_view s);

// Decodes the code point at s[i] (s valid UTF-8) and advances i past it.
char32_t next_code_point(std::string_view s, size_t& i);
void append_utf8(std::string& out, char32_t cp);

// Rust's char::is_whitespace (the Unicode White_Space property).
bool is_whitespace(char32_t cp);
// A character of the regex class \w as Rust's regex crate has it (letters, marks, digits,
// connector punctuation, joiners): for added tokens' single_word.
bool is_word_char(char32_t cp);

// Rust's String::from_utf8_lossy: each maximal invalid subsequence becomes U+FFFD.
std::string utf8_lossy(std::string_view bytes);

// Rust's str::chars().flat_map(char::to_lowercase): each character's full lowercase mapping
// (U+0130 becomes "i\u0307"; no final-sigma rule), as tokenizers' Lowercase normalizer does:
// utf8proc's mapping plus the Unicode 16 / 17 pairs it may lack. `s` must be valid UTF-8.
std::string lowercase(std::string_view s);

enum class NormalForm { kNFC, kNFD, kNFKC, kNFKD };
// `s` must be valid UTF-8. Throws rlhf::Error when utf8proc fails. As tokenizers does, leaves the
// few characters whose decomposition is newer than its Unicode tables as they are, and takes the
// combining marks newer than those tables for starters (checked over every code point to U+1FFFF).
std::string normalize(std::string_view s, NormalForm form);

// GPT-2's byte <-> character map (ByteLevel): the UTF-8 text of the character standing for each
// byte, and the byte of each such character (-1 for characters that stand for none).
const std::vector<std::string>& byte_to_char_utf8();
int char_to_byte(char32_t cp);

// A compiled Split pattern. Regexes are written for Oniguruma (what HF uses); the translation to
// PCRE2 keeps Oniguruma's \s (White_Space) rather than PCRE2's wider \s under UCP.
class SplitRegex {
 public:
  // Throws rlhf::Error with PCRE2's message and offset when the pattern does not compile.
  explicit SplitRegex(const std::string& oniguruma_pattern);
  // A literal string pattern (Split's {"String": ...}); `literal` must not be empty.
  static SplitRegex literal(const std::string& literal);

  // [start, end) byte ranges of the non-overlapping matches, left to right (`s` valid UTF-8).
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view s) const;

 private:
  SplitRegex() = default;
  struct Compiled;
  std::shared_ptr<const Compiled> compiled_;  // null for a literal
  std::string literal_;
};

}  // namespace rlhf::policy::hf
