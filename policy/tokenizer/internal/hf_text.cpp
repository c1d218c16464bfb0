#include "policy/tokenizer/internal/hf_text.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <cstdlib>

#include "common/error.h"

namespace rlhf::policy::hf {

namespace {

// Length of the valid prefix of the UTF-8 sequence at s[i] (1..4), and whether it is complete:
// the table of Rust's core::str validation (no overlongs, no surrogates, nothing past U+10FFFF).
struct Utf8Step {
  size_t length;  // bytes that belong to the sequence (at least 1)
  bool valid;
};

Utf8Step utf8_step(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return {1, true};
  size_t need = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return {1, false};
  }
  size_t k = 1;
  for (; k <= need; ++k) {
    if (i + k >= s.size()) return {k, false};
    const auto b = static_cast<unsigned char>(s[i + k]);
    const unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) return {k, false};
  }
  return {k, true};
}

constexpr const char* kOnigSpaceClass = "\\t\\n\\x0B\\f\\r\\x{85}\\p{Z}";

// Oniguruma's \s is White_Space; PCRE2's under UCP adds U+180E. \h is a hex digit in Oniguruma.
std::string onig_to_pcre2(const std::string& p) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[++i];
      if (e == 's') {
        out += in_class ? std::string(kOnigSpaceClass) : "[" + std::string(kOnigSpaceClass) + "]";
      } else if (e == 'S' && !in_class) {
        out += "[^" + std::string(kOnigSpaceClass) + "]";
      } else if (e == 'h') {
        out += in_class ? "0-9a-fA-F" : "[0-9a-fA-F]";
      } else if (e == 'H' && !in_class) {
        out += "[^0-9a-fA-F]";
      } else if (e == 'S' || e == 'H') {
        throw Error(std::string("regex escape \\") + e +
                    " inside a character class is not supported");
      } else {
        out += c;
        out += e;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];  // a leading ']' is literal
      continue;
    }
    if (in_class && c == '[' && !(i + 1 < p.size() && p[i + 1] == ':')) {
      throw Error("nested character classes (Oniguruma '[' inside '[...]') are not supported");
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

}  // namespace

size_t invalid_utf8_offset(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const Utf8Step st = utf8_step(s, i);
    if (!st.valid) return i;
    i += st.length;
  }
  return std::string_view::npos;
}

char32_t next_code_point(std::string_view s, size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  const int n = b0 >= 0xF0 ? 4 : b0 >= 0xE0 ? 3 : 2;
  char32_t cp = b0 & (0x7F >> n);
  for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += n;
  return cp;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

bool is_whitespace(char32_t cp) {
  if ((cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85) return true;
  if (cp < 0xA0) return false;
  const utf8proc_category_t cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return cat == UTF8PROC_CATEGORY_ZS || cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP;
}

bool is_word_char(char32_t cp) {
  if (cp == 0x200C || cp == 0x200D) return true;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(cp))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    const Utf8Step st = utf8_step(bytes, i);
    if (st.valid) {
      out.append(bytes.data() + i, st.length);
    } else {
      out += "\xEF\xBF\xBD";
    }
    i += st.length;
  }
  return out;
}

namespace {

// Lowercase mappings of Unicode 16 and 17 (which the Rust of tokenizers 0.23 has) for characters
// an older utf8proc leaves as they are; checked over every code point by the reference test.
char32_t newer_lowercase(char32_t cp) {
  if (cp >= 0x10D50 && cp <= 0x10D65) return cp + 0x20;  // Garay
  if (cp >= 0x16EA0 && cp <= 0x16EB8) return cp + 0x1B;  // Beria Erfe
  switch (cp) {
    case 0x1C89:
      return 0x1C8A;
    case 0xA7CB:
      return 0x0264;
    case 0xA7DC:
      return 0x019B;
    case 0xA7CC:
    case 0xA7CE:
    case 0xA7D2:
    case 0xA7D4:
    case 0xA7DA:
      return cp + 1;
    default:
      return cp;
  }
}

}  // namespace

std::string lowercase(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const char32_t cp = next_code_point(s, i);
    if (cp < 0x80) {
      out += static_cast<char>(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
    } else if (cp == 0x130) {  // the one unconditional multi-character lowercase mapping
      out += "i\xCC\x87";
    } else {
      const auto lower = static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp)));
      append_utf8(out, lower == cp ? newer_lowercase(cp) : lower);
    }
  }
  return out;
}

namespace {

std::string utf8proc_normalize(std::string_view s, NormalForm form) {
  int options = UTF8PROC_STABLE;
  if (form == NormalForm::kNFC || form == NormalForm::kNFKC) options |= UTF8PROC_COMPOSE;
  if (form == NormalForm::kNFD || form == NormalForm::kNFKD) options |= UTF8PROC_DECOMPOSE;
  if (form == NormalForm::kNFKC || form == NormalForm::kNFKD) options |= UTF8PROC_COMPAT;
  utf8proc_uint8_t* dst = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                          static_cast<utf8proc_ssize_t>(s.size()), &dst,
                                          static_cast<utf8proc_option_t>(options));
  if (n < 0) throw Error(std::string("utf8proc normalization failed: ") + utf8proc_errmsg(n));
  std::string out(reinterpret_cast<const char*>(dst), static_cast<size_t>(n));
  std::free(dst);
  return out;
}

// Characters (all starters) whose decomposition came in Unicode 12.1 to 14, which tokenizers'
// normalization tables predate: it leaves them as they are. Found by the reference test over every
// code point. U+11938 = U+11935 U+11930 (canonical) matters to the decomposing forms; the composing
// ones must not make it either (see normalize).
bool decomposition_unknown_to_tokenizers(char32_t cp, NormalForm form) {
  static constexpr std::pair<char32_t, char32_t> kCompat[] = {
      {0x32FF, 0x32FF},   {0xA7F2, 0xA7F4},   {0xAB69, 0xAB69},
      {0x10781, 0x10785}, {0x10787, 0x107B0}, {0x107B2, 0x107BA},
      {0x1E030, 0x1E06D}, {0x1F16C, 0x1F16C}, {0x1FBF0, 0x1FBF9}};
  if (cp == 0x11938) return form == NormalForm::kNFD || form == NormalForm::kNFKD;
  if (form == NormalForm::kNFC || form == NormalForm::kNFD) return false;
  for (const auto& [lo, hi] : kCompat) {
    if (cp >= lo && cp <= hi) return true;
  }
  return false;
}

// Combining marks newer than tokenizers' tables, which it takes for starters (canonical class 0):
// nothing reorders or composes across them. Found by the reference test over every code point.
bool mark_unknown_to_tokenizers(char32_t cp) {
  static constexpr std::pair<char32_t, char32_t> kMarks[] = {
      {0x7FD, 0x7FD},     {0x898, 0x89F},     {0x8CA, 0x8D3},     {0x9FE, 0x9FE},
      {0xC3C, 0xC3C},     {0xD3B, 0xD3C},     {0xEBA, 0xEBA},     {0x1715, 0x1715},
      {0x1ABF, 0x1ACE},   {0x1DF6, 0x1DFA},   {0xA82C, 0xA82C},   {0x10D24, 0x10D27},
      {0x10EAB, 0x10EAC}, {0x10EFD, 0x10EFF}, {0x10F46, 0x10F50}, {0x10F82, 0x10F85},
      {0x11070, 0x11070}, {0x1133B, 0x1133B}, {0x1145E, 0x1145E}, {0x11839, 0x1183A},
      {0x1193D, 0x1193E}, {0x11943, 0x11943}, {0x119E0, 0x119E0}, {0x11A34, 0x11A34},
      {0x11A47, 0x11A47}, {0x11A99, 0x11A99}, {0x11D42, 0x11D42}, {0x11D44, 0x11D45},
      {0x11D97, 0x11D97}, {0x11F41, 0x11F42}, {0x16FF0, 0x16FF1}, {0x1E08F, 0x1E08F},
      {0x1E130, 0x1E136}, {0x1E2AE, 0x1E2AE}, {0x1E2EC, 0x1E2EF}, {0x1E4EC, 0x1E4EF}};
  if (cp < 0x7FD) return false;
  for (const auto& [lo, hi] : kMarks) {
    if (cp >= lo && cp <= hi) return true;
  }
  return false;
}

}  // namespace

std::string normalize(std::string_view s, NormalForm form) {
  bool ascii = true;
  for (const char c : s) ascii = ascii && static_cast<unsigned char>(c) < 0x80;
  if (ascii) return std::string(s);  // ASCII is invariant under every normal form
  // The text between characters tokenizers does not decompose (or takes for starters) is normalized
  // on its own: they are starters there, so nothing composes or reorders across them.
  const bool composing = form == NormalForm::kNFC || form == NormalForm::kNFKC;
  std::string out;
  size_t start = 0;
  for (size_t i = 0; i < s.size();) {
    const size_t at = i;
    const char32_t cp = next_code_point(s, i);
    if (composing && cp == 0x11930 && at > 0) {  // a starter: no U+11935 before it composes with it
      out += utf8proc_normalize(s.substr(start, at - start), form);
      start = at;
    }
    if (!decomposition_unknown_to_tokenizers(cp, form) && !mark_unknown_to_tokenizers(cp)) {
      continue;
    }
    out += utf8proc_normalize(s.substr(start, at - start), form);
    out.append(s.data() + at, i - at);
    start = i;
  }
  if (start == 0) return utf8proc_normalize(s, form);
  return out + utf8proc_normalize(s.substr(start), form);
}

const std::vector<std::string>& byte_to_char_utf8() {
  static const std::vector<std::string> table = [] {
    std::vector<std::string> t(256);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      append_utf8(t[b], printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++));
    }
    return t;
  }();
  return table;
}

int char_to_byte(char32_t cp) {
  static const std::vector<int> table = [] {
    std::vector<int> t(512, -1);
    const auto& fwd = byte_to_char_utf8();
    for (int b = 0; b < 256; ++b) {
      size_t i = 0;
      t[next_code_point(fwd[b], i)] = b;
    }
    return t;
  }();
  return cp < table.size() ? table[cp] : -1;
}

struct SplitRegex::Compiled {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Compiled() { pcre2_code_free(code); }
};

SplitRegex::SplitRegex(const std::string& oniguruma_pattern) {
  const std::string pattern = onig_to_pcre2(oniguruma_pattern);
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  auto c = std::make_shared<Compiled>();
  c->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP, &err, &err_offset, nullptr);
  if (!c->code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    throw Error("regex does not compile (as PCRE2 '" + pattern + "'): " +
                reinterpret_cast<const char*>(msg) + " at offset " + std::to_string(err_offset));
  }
  c->jit = pcre2_jit_compile(c->code, PCRE2_JIT_COMPLETE) == 0;
  compiled_ = std::move(c);
}

SplitRegex SplitRegex::literal(const std::string& literal) {
  if (literal.empty()) throw Error("an empty string pattern is not supported");
  SplitRegex r;
  r.literal_ = literal;
  return r;
}

std::vector<std::pair<size_t, size_t>> SplitRegex::find_all(std::string_view s) const {
  std::vector<std::pair<size_t, size_t>> out;
  if (!compiled_) {
    for (size_t at = s.find(literal_); at != std::string_view::npos;
         at = s.find(literal_, at + literal_.size())) {
      out.emplace_back(at, at + literal_.size());
    }
    return out;
  }
  std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> md(
      pcre2_match_data_create_from_pattern(compiled_->code, nullptr), pcre2_match_data_free);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t offset = 0;
  uint32_t flags = 0;
  while (offset <= s.size()) {
    const int rc = compiled_->jit ? pcre2_jit_match(compiled_->code, subject, s.size(), offset,
                                                    flags, md.get(), nullptr)
                                  : pcre2_match(compiled_->code, subject, s.size(), offset,
                                                flags | PCRE2_NO_UTF_CHECK, md.get(), nullptr);
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      throw Error(std::string("regex match failed (") + reinterpret_cast<const char*>(msg) +
                  ") at byte " + std::to_string(offset));
    }
    if (rc < 0) {
      if (flags == 0 || offset >= s.size()) break;
      // The empty match at `offset` was taken: retry one character further on.
      size_t next = offset;
      next_code_point(s, next);
      offset = next;
      flags = 0;
      continue;
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    out.emplace_back(ov[0], ov[1]);
    offset = ov[1];
    flags = ov[0] == ov[1] ? (PCRE2_NOTEMPTY_ATSTART | PCRE2_ANCHORED) : 0;
  }
  return out;
}

}  // namespace rlhf::policy::hf
