#include "policy/tokenizer/internal/jinja_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "common/error.h"

namespace rlhf::policy::jinja {

Value Value::null() {
  Value v;
  v.kind = Kind::Null;
  return v;
}
Value Value::boolean(bool x) {
  Value v;
  v.kind = Kind::Bool;
  v.b = x;
  return v;
}
Value Value::integer(int64_t x) {
  Value v;
  v.kind = Kind::Int;
  v.i = x;
  return v;
}
Value Value::floating(double x) {
  Value v;
  v.kind = Kind::Float;
  v.f = x;
  return v;
}
Value Value::string(std::string x) {
  Value v;
  v.kind = Kind::String;
  v.s = std::move(x);
  return v;
}
Value Value::array(Array x) {
  Value v;
  v.kind = Kind::Array;
  v.arr = std::make_shared<Array>(std::move(x));
  return v;
}
Value Value::object(Object x) {
  Value v;
  v.kind = Kind::Object;
  v.obj = std::make_shared<Object>(std::move(x));
  return v;
}
Value Value::ns(Object x) {
  Value v = object(std::move(x));
  v.kind = Kind::Namespace;
  return v;
}
Value Value::function(Function f) {
  Value v;
  v.kind = Kind::Function;
  v.fn = std::make_shared<Function>(std::move(f));
  return v;
}

const char* Value::type_name() const {
  switch (kind) {
    case Kind::Undefined:
      return "UndefinedValue";
    case Kind::Null:
      return "NullValue";
    case Kind::Bool:
      return "BooleanValue";
    case Kind::Int:
      return "IntegerValue";
    case Kind::Float:
      return "FloatValue";
    case Kind::String:
      return "StringValue";
    case Kind::Array:
      return is_tuple ? "TupleValue" : "ArrayValue";
    case Kind::Object:
      return "ObjectValue";
    case Kind::Namespace:
      return "NamespaceValue";
    case Kind::Function:
      return "FunctionValue";
  }
  return "?";
}

const Value* CallArgs::get(size_t pos, const std::string& name) const {
  if (pos < positional.size()) return &positional[pos];
  return name.empty() ? nullptr : find_key(keyword, name);
}

const Value* find_key(const Object& o, const std::string& key) {
  for (const auto& kv : o) {
    if (kv.first == key) return &kv.second;
  }
  return nullptr;
}

void set_key(Object& o, const std::string& key, Value v) {
  for (auto& kv : o) {
    if (kv.first == key) {
      kv.second = std::move(v);
      return;
    }
  }
  o.emplace_back(key, std::move(v));
}

Value from_json(const nlohmann::ordered_json& j) {
  using T = nlohmann::ordered_json::value_t;
  switch (j.type()) {
    case T::null:
      return Value::null();
    case T::boolean:
      return Value::boolean(j.get<bool>());
    case T::number_integer:
      return Value::integer(j.get<int64_t>());
    case T::number_unsigned:
      return Value::integer(static_cast<int64_t>(j.get<uint64_t>()));
    case T::number_float: {
      const double d = j.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.007199254740992e15) {
        return Value::integer(static_cast<int64_t>(d));
      }
      return Value::floating(d);
    }
    case T::string:
      return Value::string(j.get<std::string>());
    case T::array: {
      Array a;
      for (const auto& e : j) a.push_back(from_json(e));
      return Value::array(std::move(a));
    }
    case T::object: {
      Object o;
      for (const auto& [k, e] : j.items()) set_key(o, k, from_json(e));
      return Value::object(std::move(o));
    }
    default:
      return Value::undefined();
  }
}

bool truthy(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
    case Value::Kind::Null:
      return false;
    case Value::Kind::Bool:
      return v.b;
    case Value::Kind::Int:
      return v.i != 0;
    case Value::Kind::Float:
      return v.f != 0 && !std::isnan(v.f);
    case Value::Kind::String:
      return !v.s.empty();
    case Value::Kind::Array:
      return !v.arr->empty();
    case Value::Kind::Object:
      return !v.obj->empty();
    case Value::Kind::Namespace:
    case Value::Kind::Function:
      return true;
  }
  return false;
}

std::string js_number(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  if (d == 0) return "0";
  char buf[64];
  // Shortest round-trip digits, then JavaScript's layout (plain notation for 1e-7 <= |d| < 1e21).
  auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  const size_t e = sci.find('e');
  const int exp = std::atoi(sci.c_str() + e + 1);
  std::string digits;
  bool neg = false;
  for (size_t k = 0; k < e; ++k) {
    if (sci[k] == '-') neg = true;
    if (sci[k] >= '0' && sci[k] <= '9') digits += sci[k];
  }
  std::string out = neg ? "-" : "";
  const int n = static_cast<int>(digits.size());
  if (exp >= 21 || exp < -7) {
    out += digits.substr(0, 1);
    if (n > 1) out += "." + digits.substr(1);
    out += exp > 0 ? "e+" + std::to_string(exp) : "e" + std::to_string(exp);
  } else if (exp >= 0) {
    if (n <= exp + 1) {
      out += digits + std::string(exp + 1 - n, '0');
    } else {
      out += digits.substr(0, exp + 1) + "." + digits.substr(exp + 1);
    }
  } else {
    out += "0." + std::string(-exp - 1, '0') + digits;
  }
  return out;
}

std::string int_string(int64_t i) {
  // Integers are JavaScript numbers there: past 2^53 they print as the nearest double does.
  constexpr int64_t kExact = int64_t{1} << 53;
  if (i > kExact || i < -kExact) return js_number(static_cast<double>(i));
  return std::to_string(i);
}

std::string to_js_string(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
      return "undefined";
    case Value::Kind::Null:
      return "null";
    case Value::Kind::Bool:
      return v.b ? "true" : "false";
    case Value::Kind::Int:
      return int_string(v.i);
    case Value::Kind::Float:
      return js_number(v.f);
    case Value::Kind::String:
      return v.s;
    case Value::Kind::Array: {
      std::string out;
      for (size_t k = 0; k < v.arr->size(); ++k) {
        if (k) out += ",";
        const Value& e = (*v.arr)[k];
        out += to_output(e);
      }
      return out;
    }
    case Value::Kind::Object:
    case Value::Kind::Namespace:
      return "[object Map]";
    case Value::Kind::Function:
      return "[function]";
  }
  return "";
}

std::string to_output(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Float:
      if (v.f == 0 && std::signbit(v.f)) return "-0.0";
      if (std::isfinite(v.f) && v.f == std::floor(v.f)) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%.1f", v.f);
        return buf;
      }
      return js_number(v.f);
    case Value::Kind::Array:
    case Value::Kind::Object:
    case Value::Kind::Namespace:
      return to_json(v, JsonOptions{}, 0, false);
    default:
      return to_js_string(v);
  }
}

namespace {

double js_to_number(const Value& v, bool* ok) {
  *ok = true;
  switch (v.kind) {
    case Value::Kind::Bool:
      return v.b ? 1 : 0;
    case Value::Kind::Int:
      return static_cast<double>(v.i);
    case Value::Kind::Float:
      return v.f;
    case Value::Kind::Null:
      return 0;
    case Value::Kind::String: {
      const std::string t = js_trim(v.s);
      if (t.empty()) return 0;
      char* end = nullptr;
      const double d = std::strtod(t.c_str(), &end);
      if (end != t.c_str() + t.size()) return std::nan("");
      return d;
    }
    default:
      *ok = false;
      return 0;
  }
}

}  // namespace

bool strict_equal(const Value& a, const Value& b) {
  using K = Value::Kind;
  if (a.is_numeric() && b.is_numeric()) {
    return (a.is(K::Int) ? static_cast<double>(a.i) : a.f) ==
           (b.is(K::Int) ? static_cast<double>(b.i) : b.f);
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case K::Undefined:
    case K::Null:
      return true;
    case K::Bool:
      return a.b == b.b;
    case K::String:
      return a.s == b.s;
    case K::Array:
      return a.arr == b.arr;
    case K::Object:
    case K::Namespace:
      return a.obj == b.obj;
    case K::Function:
      return a.fn == b.fn;
    default:
      return false;
  }
}

bool loose_equal(const Value& a, const Value& b) {
  using K = Value::Kind;
  const bool a_nullish = a.is(K::Null) || a.is(K::Undefined);
  const bool b_nullish = b.is(K::Null) || b.is(K::Undefined);
  if (a_nullish || b_nullish) return a_nullish && b_nullish;
  if (a.kind == b.kind || (a.is_numeric() && b.is_numeric())) return strict_equal(a, b);
  const bool a_obj = a.is(K::Array) || a.is_mapping() || a.is(K::Function);
  const bool b_obj = b.is(K::Array) || b.is_mapping() || b.is(K::Function);
  if (a_obj && b_obj) return false;
  if (a_obj || b_obj) {
    // An object against a primitive: JavaScript compares the object's string form.
    const Value& o = a_obj ? a : b;
    const Value& p = a_obj ? b : a;
    return loose_equal(Value::string(o.is(K::Array) ? to_js_string(o) : "[object Map]"), p);
  }
  bool ok_a = false, ok_b = false;
  const double x = js_to_number(a, &ok_a), y = js_to_number(b, &ok_b);
  return ok_a && ok_b && x == y;
}

namespace {

void json_escape(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  for (size_t pos = 0; pos < s.size();) {
    size_t len = 1;
    const uint32_t cp = decode_utf8(s, pos, &len);
    char buf[16];
    switch (cp) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (cp < 0x20) {
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(cp));
          out += buf;
        } else if (ensure_ascii && cp >= 0x7f) {
          if (cp >= 0x10000) {
            const uint32_t c = cp - 0x10000;
            std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x",
                          static_cast<unsigned>(0xd800 + (c >> 10)),
                          static_cast<unsigned>(0xdc00 + (c & 0x3ff)));
          } else {
            std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(cp));
          }
          out += buf;
        } else {
          out.append(s, pos, len);
        }
    }
    pos += len;
  }
  out += '"';
}

std::string json_number(const Value& v) {
  if (v.is(Value::Kind::Int)) return int_string(v.i);
  if (!std::isfinite(v.f)) return "null";
  return js_number(v.f);
}

}  // namespace

std::string to_json(const Value& v, const JsonOptions& o, int depth, bool undefined_null) {
  std::string item_sep = o.indent ? "," : ", ", key_sep = ": ";
  if (o.has_separators) item_sep = o.item_separator, key_sep = o.key_separator;
  switch (v.kind) {
    case Value::Kind::Null:
      return "null";
    case Value::Kind::Undefined:
      return undefined_null ? "null" : "undefined";
    case Value::Kind::Bool:
      return v.b ? "true" : "false";
    case Value::Kind::Int:
    case Value::Kind::Float:
      return json_number(v);
    case Value::Kind::String: {
      std::string out;
      json_escape(out, v.s, o.ensure_ascii);
      return out;
    }
    case Value::Kind::Function:
      throw Error("Cannot convert to JSON: FunctionValue");
    default:
      break;
  }
  // A namespace can hold itself ({% set ns.me = ns %}): refuse instead of recursing forever.
  if (depth > 512) throw Error("Cannot convert to JSON: nesting deeper than 512 (a cycle?)");
  const std::string unit(static_cast<size_t>(o.indent), ' ');
  std::string base = "\n", child;
  for (int d = 0; d < depth; ++d) base += unit;
  child = base + unit;
  std::vector<std::string> core;
  if (v.is(Value::Kind::Array)) {
    for (const Value& e : *v.arr) core.push_back(to_json(e, o, depth + 1, undefined_null));
  } else {
    Object entries = *v.obj;
    if (o.sort_keys) {
      std::stable_sort(entries.begin(), entries.end(),
                       [](const auto& a, const auto& b) { return a.first < b.first; });
    }
    for (const auto& [k, e] : entries) {
      std::string key;
      json_escape(key, k, o.ensure_ascii);
      std::string item = key + key_sep + to_json(e, o, depth + 1, undefined_null);
      core.push_back(o.indent ? child + item : item);
    }
  }
  const bool is_arr = v.is(Value::Kind::Array);
  std::string joined;
  for (size_t k = 0; k < core.size(); ++k) {
    if (k) joined += is_arr && o.indent ? item_sep + child : item_sep;
    joined += core[k];
  }
  if (o.indent && !core.empty()) {
    return is_arr ? "[" + child + joined + base + "]" : "{" + joined + base + "}";
  }
  return is_arr ? "[" + joined + "]" : "{" + joined + "}";
}

uint32_t decode_utf8(const std::string& s, size_t pos, size_t* len) {
  const auto c = static_cast<unsigned char>(s[pos]);
  int n = 0;
  uint32_t cp = 0;
  if (c < 0x80) {
    *len = 1;
    return c;
  } else if ((c >> 5) == 0x6) {
    n = 1, cp = c & 0x1f;
  } else if ((c >> 4) == 0xe) {
    n = 2, cp = c & 0x0f;
  } else if ((c >> 3) == 0x1e) {
    n = 3, cp = c & 0x07;
  } else {
    *len = 1;
    return 0xfffd;
  }
  if (pos + static_cast<size_t>(n) >= s.size()) {
    *len = 1;
    return 0xfffd;
  }
  for (int k = 1; k <= n; ++k) {
    const auto d = static_cast<unsigned char>(s[pos + k]);
    if ((d >> 6) != 0x2) {
      *len = 1;
      return 0xfffd;
    }
    cp = (cp << 6) | (d & 0x3f);
  }
  *len = static_cast<size_t>(n) + 1;
  return cp;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

bool is_js_space(uint32_t cp) {
  switch (cp) {
    case 0x09:
    case 0x0a:
    case 0x0b:
    case 0x0c:
    case 0x0d:
    case 0x20:
    case 0xa0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202f:
    case 0x205f:
    case 0x3000:
    case 0xfeff:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200a;
  }
}

std::string js_trim_start(const std::string& s) {
  size_t pos = 0;
  while (pos < s.size()) {
    size_t len = 1;
    if (!is_js_space(decode_utf8(s, pos, &len))) break;
    pos += len;
  }
  return s.substr(pos);
}

std::string js_trim_end(const std::string& s) {
  size_t end = 0;  // byte after the last non-space code point
  for (size_t pos = 0; pos < s.size();) {
    size_t len = 1;
    const bool space = is_js_space(decode_utf8(s, pos, &len));
    pos += len;
    if (!space) end = pos;
  }
  return s.substr(0, end);
}

std::string js_trim(const std::string& s) { return js_trim_end(js_trim_start(s)); }

size_t utf16_length(const std::string& s) {
  size_t n = 0;
  for (size_t pos = 0; pos < s.size();) {
    size_t len = 1;
    n += decode_utf8(s, pos, &len) >= 0x10000 ? 2 : 1;
    pos += len;
  }
  return n;
}

std::vector<std::string> code_points(const std::string& s) {
  std::vector<std::string> out;
  for (size_t pos = 0; pos < s.size();) {
    size_t len = 1;
    decode_utf8(s, pos, &len);
    out.push_back(s.substr(pos, len));
    pos += len;
  }
  return out;
}

}  // namespace rlhf::policy::jinja
