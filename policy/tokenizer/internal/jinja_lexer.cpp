// Preprocessing and tokenizing of a chat template, as @huggingface/jinja's lexer.ts does them.
#include "policy/tokenizer/internal/jinja_lexer.h"

#include <array>
#include <utility>

#include "common/error.h"
#include "policy/tokenizer/internal/jinja_value.h"

namespace rlhf::policy::jinja {
namespace {

bool space_at(const std::string& s, size_t pos, size_t* len) {
  if (pos >= s.size()) return false;
  return is_js_space(decode_utf8(s, pos, len));
}

size_t skip_spaces(const std::string& s, size_t pos) {
  size_t len = 1;
  while (space_at(s, pos, &len)) pos += len;
  return pos;
}

bool line_start(const std::string& s, size_t pos) {
  if (pos == 0) return true;
  const char c = s[pos - 1];
  if (c == '\n' || c == '\r') return true;
  // U+2028 / U+2029 end a line for JavaScript's multiline ^.
  return pos >= 3 && s.compare(pos - 3, 2, "\xe2\x80") == 0 &&
         (s[pos - 1] == '\xa8' || s[pos - 1] == '\xa9');
}

// /^[ \t]*({[#%-])/gm -> "$1"
std::string lstrip_blocks(const std::string& s) {
  std::string out;
  for (size_t pos = 0; pos < s.size();) {
    if (line_start(s, pos)) {
      size_t end = pos;
      while (end < s.size() && (s[end] == ' ' || s[end] == '\t')) ++end;
      if (end + 1 < s.size() && s[end] == '{' &&
          (s[end + 1] == '#' || s[end + 1] == '%' || s[end + 1] == '-')) {
        out += s.substr(end, 2);
        pos = end + 2;
        continue;
      }
    }
    out += s[pos++];
  }
  return out;
}

// /([#%-]})\n/g -> "$1"
std::string trim_blocks(const std::string& s) {
  std::string out;
  for (size_t pos = 0; pos < s.size();) {
    if (pos + 2 < s.size() && (s[pos] == '#' || s[pos] == '%' || s[pos] == '-') &&
        s[pos + 1] == '}' && s[pos + 2] == '\n') {
      out += s.substr(pos, 2);
      pos += 3;
      continue;
    }
    out += s[pos++];
  }
  return out;
}

// Matches {%-? \s* (end)?generation \s* -?%} at pos; sets the flags and the end.
bool generation_tag(const std::string& s, size_t pos, bool* lstrip, bool* rstrip, size_t* end) {
  if (s.compare(pos, 2, "{%") != 0) return false;
  size_t p = pos + 2;
  *lstrip = p < s.size() && s[p] == '-';
  if (*lstrip) ++p;
  p = skip_spaces(s, p);
  if (s.compare(p, 3, "end") == 0 && s.compare(p + 3, 10, "generation") == 0) p += 3;
  if (s.compare(p, 10, "generation") != 0) return false;
  p = skip_spaces(s, p + 10);
  *rstrip = p < s.size() && s[p] == '-';
  if (*rstrip) ++p;
  if (s.compare(p, 2, "%}") != 0) return false;
  *end = p + 2;
  return true;
}

// transformers' {% generation %} / {% endgeneration %} tags are removed, honouring - markers.
std::string drop_generation_tags(const std::string& s) {
  std::string out;
  size_t copied = 0;
  for (size_t pos = 0; pos < s.size(); ++pos) {
    bool lstrip = false, rstrip = false;
    size_t end = 0;
    if (!generation_tag(s, pos, &lstrip, &rstrip, &end)) continue;
    size_t before = pos;  // start of the whitespace run before the tag, not before `copied`
    while (before > copied) {
      size_t back = before - 1;
      while (back > copied && (static_cast<unsigned char>(s[back]) & 0xc0) == 0x80) --back;
      size_t len = 1;
      if (!space_at(s, back, &len)) break;
      before = back;
    }
    const size_t after = skip_spaces(s, end);
    out += s.substr(copied, before - copied);
    if (!lstrip) out += s.substr(before, pos - before);
    if (!rstrip) out += s.substr(end, after - end);
    copied = after;
    pos = after - 1;
  }
  return out + s.substr(copied);
}

}  // namespace

std::string preprocess(std::string source) {
  if (!source.empty() && source.back() == '\n') source.pop_back();
  return drop_generation_tags(trim_blocks(lstrip_blocks(source)));
}

}  // namespace rlhf::policy::jinja

namespace rlhf::policy::jinja {

std::string where(const std::string& name, const std::string& src, size_t pos) {
  size_t line = 1, col = 1;
  for (size_t k = 0; k < pos && k < src.size(); ++k) {
    if (src[k] == '\n') {
      ++line, col = 1;
    } else {
      ++col;
    }
  }
  std::string near = src.substr(pos < src.size() ? pos : src.size(), 40);
  for (char& c : near) {
    if (c == '\n') c = ' ';
  }
  return name + " line " + std::to_string(line) + " col " + std::to_string(col) + " near '" + near +
         "'";
}

namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_word(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

struct Lexer {
  const std::string& src;
  const std::string& name;
  std::vector<Token> tokens;
  size_t cur = 0;
  int curly_depth = 0;

  [[noreturn]] void fail(const std::string& what, size_t pos) const {
    throw Error("chat template: " + what + " at " + where(name, src, pos));
  }
  Tok last() const { return tokens.empty() ? Tok::Comment : tokens.back().type; }
  void push(Tok t, std::string v, size_t pos) { tokens.push_back(Token{t, std::move(v), pos}); }
  bool at(const char* s) const {
    return src.compare(cur, std::char_traits<char>::length(s), s) == 0;
  }

  void strip_trailing_whitespace() {
    if (!tokens.empty() && tokens.back().type == Tok::Text) {
      tokens.back().value = js_trim_end(tokens.back().value);
      if (tokens.back().value.empty()) tokens.pop_back();
    }
  }
  void skip_leading_whitespace() { cur = skip_spaces(src, cur); }

  // consumeWhile of lexer.ts for string bodies (escapes) and digit runs.
  template <typename Pred>
  std::string consume_while(Pred pred) {
    std::string out;
    while (cur < src.size() && pred(src[cur])) {
      if (src[cur] == '\\') {
        if (++cur >= src.size()) fail("unexpected end of input", cur);
        out += unescape();
        continue;
      }
      out += src[cur++];
      if (cur >= src.size()) fail("unexpected end of input", cur);
    }
    return out;
  }
  std::string unescape();
  bool text();
  bool comment();
  bool whitespace_controls();
  bool sign_or_number();
  bool mapped();
  void literal();
  void run();
};

std::string Lexer::unescape() {
  const char e = src[cur++];
  if (e == 'x' || e == 'u') {
    const size_t n = e == 'x' ? 2 : 4;
    const std::string hex = src.substr(cur, n);
    if (hex.size() != n || hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) {
      fail(std::string("invalid hexadecimal escape sequence \\") + e + hex, cur);
    }
    cur += n;
    std::string out;
    append_utf8(out, static_cast<uint32_t>(std::stoul(hex, nullptr, 16)));
    return out;
  }
  switch (e) {
    case 'n':
      return "\n";
    case 't':
      return "\t";
    case 'r':
      return "\r";
    case 'b':
      return "\b";
    case 'f':
      return "\f";
    case 'v':
      return "\v";
    case '\'':
      return "'";
    case '"':
      return "\"";
    case '\\':
      return "\\";
    default:
      fail(std::string("unexpected escaped character '") + e + "'", cur - 1);
  }
}

bool Lexer::text() {
  const Tok t = last();
  if (!(tokens.empty() || t == Tok::CloseStatement || t == Tok::CloseExpression ||
        t == Tok::Comment)) {
    return false;
  }
  const size_t start = cur;
  while (cur < src.size() &&
         !(src[cur] == '{' && cur + 1 < src.size() &&
           (src[cur + 1] == '%' || src[cur + 1] == '{' || src[cur + 1] == '#'))) {
    ++cur;
  }
  if (cur == start) return false;
  push(Tok::Text, src.substr(start, cur - start), start);
  return true;
}

bool Lexer::comment() {
  if (!at("{#")) return false;
  const size_t start = cur;
  cur += 2;
  const bool strip_before = cur < src.size() && src[cur] == '-';
  if (strip_before) ++cur;
  std::string body;
  while (!(src[cur] == '#' && cur + 1 < src.size() && src[cur + 1] == '}')) {
    if (cur + 2 >= src.size()) fail("missing end of comment tag", start);
    body += src[cur++];
  }
  const bool strip_after = !body.empty() && body.back() == '-';
  if (strip_before) strip_trailing_whitespace();
  push(Tok::Comment, body, start);
  cur += 2;
  if (strip_after) skip_leading_whitespace();
  return true;
}

bool Lexer::whitespace_controls() {
  if (at("{%-")) {
    strip_trailing_whitespace();
    push(Tok::OpenStatement, "{%", cur);
    cur += 3;
    return true;
  }
  if (at("{{-")) {
    strip_trailing_whitespace();
    push(Tok::OpenExpression, "{{", cur);
    curly_depth = 0;
    cur += 3;
    return true;
  }
  cur = skip_spaces(src, cur);
  if (at("-%}") || at("-}}")) {
    push(at("-%}") ? Tok::CloseStatement : Tok::CloseExpression, at("-%}") ? "%}" : "}}", cur);
    cur += 3;
    skip_leading_whitespace();
    return true;
  }
  return false;
}

bool Lexer::sign_or_number() {
  const char c = src[cur];
  if (c != '-' && c != '+') return false;
  const Tok t = last();
  if (tokens.empty() || t == Tok::Text) fail(std::string("unexpected character '") + c + "'", cur);
  if (t == Tok::Ident || t == Tok::Number || t == Tok::String || t == Tok::CloseParen ||
      t == Tok::CloseSquare) {
    return false;  // a binary operator
  }
  const size_t start = cur++;
  std::string num = consume_while(is_digit);
  if (!num.empty() && src[cur] == '.' && cur + 1 < src.size() && is_digit(src[cur + 1])) {
    ++cur;
    num += "." + consume_while(is_digit);
  }
  push(num.empty() ? Tok::Unary : Tok::Number, std::string(1, c) + num, start);
  return true;
}

bool Lexer::mapped() {
  static const std::array<std::pair<const char*, Tok>, 27> table = {{
      {"{%", Tok::OpenStatement},  {"%}", Tok::CloseStatement},
      {"{{", Tok::OpenExpression}, {"}}", Tok::CloseExpression},
      {"(", Tok::OpenParen},       {")", Tok::CloseParen},
      {"{", Tok::OpenCurly},       {"}", Tok::CloseCurly},
      {"[", Tok::OpenSquare},      {"]", Tok::CloseSquare},
      {",", Tok::Comma},           {".", Tok::Dot},
      {":", Tok::Colon},           {"|", Tok::Pipe},
      {"<=", Tok::Comparison},     {">=", Tok::Comparison},
      {"==", Tok::Comparison},     {"!=", Tok::Comparison},
      {"<", Tok::Comparison},      {">", Tok::Comparison},
      {"+", Tok::Additive},        {"-", Tok::Additive},
      {"~", Tok::Additive},        {"**", Tok::Power},
      {"*", Tok::Multiplicative},  {"//", Tok::Multiplicative},
      {"/", Tok::Multiplicative},
  }};
  for (const auto& [seq, type] : table) {
    if (std::string(seq) == "}}" && curly_depth > 0) continue;
    if (!at(seq)) continue;
    push(type, seq, cur);
    if (type == Tok::OpenExpression) curly_depth = 0;
    if (type == Tok::OpenCurly) ++curly_depth;
    if (type == Tok::CloseCurly) --curly_depth;
    cur += std::char_traits<char>::length(seq);
    return true;
  }
  for (const char* seq : {"%", "="}) {
    if (!at(seq)) continue;
    push(std::string(seq) == "%" ? Tok::Multiplicative : Tok::Equals, seq, cur);
    ++cur;
    return true;
  }
  return false;
}

void Lexer::literal() {
  const char c = src[cur];
  const size_t start = cur;
  if (c == '\'' || c == '"') {
    ++cur;
    std::string s = consume_while([c](char x) { return x != c; });
    push(Tok::String, std::move(s), start);
    ++cur;
  } else if (is_digit(c)) {
    std::string num = consume_while(is_digit);
    if (last() != Tok::Dot && src[cur] == '.' && cur + 1 < src.size() && is_digit(src[cur + 1])) {
      ++cur;
      num += "." + consume_while(is_digit);
    }
    push(Tok::Number, std::move(num), start);
  } else if (is_word(c)) {
    push(Tok::Ident, consume_while(is_word), start);
  } else {
    fail(std::string("unexpected character '") + c + "'", cur);
  }
}

void Lexer::run() {
  while (cur < src.size()) {
    if (text() || comment() || whitespace_controls()) continue;
    if (cur >= src.size()) break;
    if (sign_or_number() || mapped()) continue;
    literal();
  }
}

}  // namespace

std::vector<Token> tokenize(const std::string& source, const std::string& name,
                            std::string* preprocessed) {
  *preprocessed = preprocess(source);
  Lexer lexer{*preprocessed, name, {}, 0, 0};
  lexer.run();
  return std::move(lexer.tokens);
}

}  // namespace rlhf::policy::jinja
