// Filters, tests, string / object methods and globals, after runtime.ts and utils.ts of
// @huggingface/jinja (including where they differ from Python's Jinja: strip() ignores its
// argument, `x | default` without parentheses is an error, booleans print as true / false).
#include "policy/tokenizer/internal/jinja_builtins.h"

#include <utf8proc.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <set>

#include "common/error.h"
#include "policy/tokenizer/internal/jinja_support.h"

namespace rlhf::policy::jinja {
namespace {

using VK = Value::Kind;

bool is_letter(uint32_t cp) {
  const utf8proc_category_t c = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT ||
         c == UTF8PROC_CATEGORY_LM || c == UTF8PROC_CATEGORY_LO;
}

// JavaScript's one-to-many upper-case mappings that chat text meets: sharp s and Latin ligatures.
const char* special_upper(uint32_t cp) {
  switch (cp) {
    case 0xdf:
      return "SS";
    case 0xfb00:
      return "FF";
    case 0xfb01:
      return "FI";
    case 0xfb02:
      return "FL";
    case 0xfb03:
      return "FFI";
    case 0xfb04:
      return "FFL";
    case 0xfb05:
    case 0xfb06:
      return "ST";
    default:
      return nullptr;
  }
}

// String.prototype.toUpperCase / toLowerCase: utf8proc's simple case mappings plus the special
// cases above, final sigma and dotted capital I.
std::string change_case(const std::string& s, bool upper) {
  std::vector<uint32_t> cps;
  for (size_t pos = 0, len = 1; pos < s.size(); pos += len)
    cps.push_back(decode_utf8(s, pos, &len));
  std::string out;
  for (size_t k = 0; k < cps.size(); ++k) {
    const uint32_t cp = cps[k];
    if (upper && special_upper(cp)) {
      out += special_upper(cp);
    } else if (!upper && cp == 0x3a3 && k > 0 && is_letter(cps[k - 1]) &&
               !(k + 1 < cps.size() && is_letter(cps[k + 1]))) {
      append_utf8(out, 0x3c2);  // final sigma
    } else if (!upper && cp == 0x130) {
      out += "i\xcc\x87";
    } else {
      const auto c = static_cast<utf8proc_int32_t>(cp);
      append_utf8(out, static_cast<uint32_t>(upper ? utf8proc_toupper(c) : utf8proc_tolower(c)));
    }
  }
  return out;
}
std::string to_upper(const std::string& s) { return change_case(s, true); }
std::string to_lower(const std::string& s) { return change_case(s, false); }
bool word_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

std::string title_case(std::string s) {
  for (size_t k = 0; k < s.size(); ++k) {
    if (word_char(s[k]) && (k == 0 || !word_char(s[k - 1]))) {
      s[k] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[k])));
    }
  }
  return s;
}

std::string capitalize(const std::string& s) {
  if (s.empty()) return s;
  size_t len = 1;
  decode_utf8(s, 0, &len);
  return to_upper(s.substr(0, len)) + s.substr(len);
}

// utils.ts replace(): Python's str.replace, an empty `from` inserting between code points.
std::string replace_all(const std::string& s, const std::string& from, const std::string& to,
                        int64_t count) {
  if (count == 0) return s;
  int64_t left = count < 0 ? INT64_MAX : count;
  std::string out;
  if (from.empty()) {
    for (const std::string& cp : code_points(s)) {
      if (left > 0) out += to, --left;
      out += cp;
    }
    if (left > 0) out += to;
    return out;
  }
  size_t pos = 0;
  while (left > 0) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out += s.substr(pos, hit - pos) + to;
    pos = hit + from.size();
    --left;
  }
  return out + s.substr(pos);
}

Value split(const std::string& s, const CallArgs& args) {
  const Value* sep = args.get(0, "");
  const Value* maxv = args.get(1, "");
  if (sep && !sep->is(VK::String) && !sep->is(VK::Null)) {
    throw Error("sep argument must be a string or null");
  }
  if (maxv && !maxv->is(VK::Int)) throw Error("maxsplit argument must be a number");
  const int64_t max = maxv ? maxv->i : -1;
  Array out;
  if (!sep || sep->is(VK::Null)) {
    const std::string text = js_trim_start(s);
    size_t pos = 0;
    while (pos < text.size()) {
      size_t len = 1, end = pos;
      while (end < text.size() && !is_js_space(decode_utf8(text, end, &len))) end += len;
      if (max != -1 && static_cast<int64_t>(out.size()) >= max) {
        out.push_back(Value::string(text.substr(pos)));
        break;
      }
      out.push_back(Value::string(text.substr(pos, end - pos)));
      pos = end;
      while (pos < text.size() && is_js_space(decode_utf8(text, pos, &len))) pos += len;
    }
    return Value::array(std::move(out));
  }
  if (sep->s.empty()) throw Error("empty separator");
  size_t pos = 0;
  for (;;) {
    const size_t hit = s.find(sep->s, pos);
    if (hit == std::string::npos || (max != -1 && static_cast<int64_t>(out.size()) >= max)) break;
    out.push_back(Value::string(s.substr(pos, hit - pos)));
    pos = hit + sep->s.size();
  }
  out.push_back(Value::string(s.substr(pos)));
  return Value::array(std::move(out));
}

Value affix_test(const std::string& s, const CallArgs& args, bool prefix) {
  const char* what = prefix ? "startswith()" : "endswith()";
  if (args.positional.empty()) throw Error(std::string(what) + " requires at least one argument");
  auto match = [&](const std::string& p) {
    return p.size() <= s.size() && (prefix ? s.compare(0, p.size(), p) == 0
                                           : s.compare(s.size() - p.size(), p.size(), p) == 0);
  };
  const Value& p = args.positional[0];
  if (p.is(VK::String)) return Value::boolean(match(p.s));
  if (p.is(VK::Array)) {
    for (const Value& e : *p.arr) {
      if (!e.is(VK::String)) throw Error(std::string(what) + " tuple elements must be strings");
      if (match(e.s)) return Value::boolean(true);
    }
    return Value::boolean(false);
  }
  throw Error(std::string(what) + " argument must be a string or tuple of strings");
}

Value string_replace(const std::string& s, const CallArgs& args) {
  if (args.positional.size() + args.keyword.size() < 2 || args.positional.size() < 2) {
    throw Error("replace() requires at least two arguments");
  }
  const Value& from = args.positional[0];
  const Value& to = args.positional[1];
  if (!from.is(VK::String) || !to.is(VK::String))
    throw Error("replace() arguments must be strings");
  const Value* count = args.get(2, "count");
  if (count && !count->is(VK::Int) && !count->is(VK::Null)) {
    throw Error("replace() count argument must be a number or null");
  }
  return Value::string(replace_all(s, from.s, to.s, count && count->is(VK::Int) ? count->i : -1));
}

Value string_method(const std::string& s, const std::string& m, const CallArgs& args) {
  if (m == "upper") return Value::string(to_upper(s));
  if (m == "lower") return Value::string(to_lower(s));
  if (m == "strip") return Value::string(js_trim(s));
  if (m == "lstrip") return Value::string(js_trim_start(s));
  if (m == "rstrip") return Value::string(js_trim_end(s));
  if (m == "title") return Value::string(title_case(s));
  if (m == "capitalize") return Value::string(capitalize(s));
  if (m == "startswith" || m == "endswith") return affix_test(s, args, m == "startswith");
  if (m == "split") return split(s, args);
  return string_replace(s, args);
}

Value items_of(const Object& o) {
  Array out;
  for (const auto& [k, v] : o) out.push_back(Value::array({Value::string(k), v}));
  return Value::array(std::move(out));
}

}  // namespace

Value object_method(const Value& self, const std::string& m, const CallArgs& args) {
  const Object& o = *self.obj;
  if (m == "items") return items_of(o);
  Array out;
  if (m == "keys" || m == "values") {
    for (const auto& [k, v] : o) out.push_back(m == "keys" ? Value::string(k) : v);
    return Value::array(std::move(out));
  }
  const Value key = args.positional.empty() ? Value::undefined() : args.positional[0];
  if (!key.is(VK::String))
    throw Error(std::string("Object key must be a string: got ") + key.type_name());
  if (const Value* v = find_key(o, key.s)) return *v;
  return args.positional.size() > 1 ? args.positional[1] : Value::null();
}

namespace {

bool is_string_method(const std::string& m) {
  static const std::set<std::string> names = {"upper",      "lower",  "strip",  "title",
                                              "capitalize", "rstrip", "lstrip", "startswith",
                                              "endswith",   "split",  "replace"};
  return names.count(m) > 0;
}

}  // namespace

Value get_member(const Value& object, const Value& property) {
  if (object.is_mapping()) {
    if (!property.is(VK::String)) {
      throw Error(std::string("Cannot access property with non-string: got ") +
                  property.type_name());
    }
    if (const Value* v = find_key(*object.obj, property.s)) return *v;
    const std::string m = property.s;
    if (object.is(VK::Object) && (m == "get" || m == "items" || m == "keys" || m == "values")) {
      return Value::function(
          [object, m](const CallArgs& a) { return object_method(object, m, a); });
    }
    return Value::undefined();
  }
  if (object.is(VK::Array) || object.is(VK::String)) {
    if (property.is(VK::Int)) {
      if (object.is(VK::Array)) {
        const int64_t n = static_cast<int64_t>(object.arr->size());
        const int64_t k = property.i < 0 ? n + property.i : property.i;
        return k >= 0 && k < n ? (*object.arr)[static_cast<size_t>(k)] : Value::undefined();
      }
      const std::vector<std::string> cps = code_points(object.s);
      const int64_t n = static_cast<int64_t>(cps.size());
      const int64_t k = property.i < 0 ? n + property.i : property.i;
      return k >= 0 && k < n ? Value::string(cps[static_cast<size_t>(k)]) : Value::undefined();
    }
    if (!property.is(VK::String)) {
      throw Error(std::string("Cannot access property with non-string/non-number: got ") +
                  property.type_name());
    }
    if (property.s == "length") {
      return Value::integer(
          static_cast<int64_t>(object.is(VK::Array) ? object.arr->size() : utf16_length(object.s)));
    }
    if (object.is(VK::String) && is_string_method(property.s)) {
      const std::string s = object.s, m = property.s;
      return Value::function([s, m](const CallArgs& a) { return string_method(s, m, a); });
    }
    return Value::undefined();
  }
  if (!property.is(VK::String)) {
    throw Error(std::string("Cannot access property with non-string: got ") + property.type_name());
  }
  return Value::undefined();
}

bool supported_method(const std::string& name) {
  return is_string_method(name) || name == "get" || name == "items" || name == "keys" ||
         name == "values";
}

// Python's %d %b %Y ... for strftime_now (utils.ts strftime: %Y %m %d %b %B %H %M %%, local time).
std::string strftime_now(const std::string& format) {
  static const char* const kShort[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  static const char* const kLong[] = {"January",   "February", "March",    "April",
                                      "May",       "June",     "July",     "August",
                                      "September", "October",  "November", "December"};
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  auto pad2 = [](int n) { return (n < 10 ? "0" : "") + std::to_string(n); };
  std::string out;
  for (size_t k = 0; k < format.size(); ++k) {
    if (format[k] != '%' || k + 1 >= format.size()) {
      out += format[k];
      continue;
    }
    const char c = format[++k];
    switch (c) {
      case 'Y':
        out += std::to_string(tm.tm_year + 1900);
        break;
      case 'm':
        out += pad2(tm.tm_mon + 1);
        break;
      case 'd':
        out += pad2(tm.tm_mday);
        break;
      case 'b':
        out += kShort[tm.tm_mon];
        break;
      case 'B':
        out += kLong[tm.tm_mon];
        break;
      case 'H':
        out += pad2(tm.tm_hour);
        break;
      case 'M':
        out += pad2(tm.tm_min);
        break;
      case '%':
        out += '%';
        break;
      default:
        out += '%', out += c;
    }
  }
  return out;
}

}  // namespace rlhf::policy::jinja
