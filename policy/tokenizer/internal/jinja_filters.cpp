// Filters, tests and global functions of the chat-template interpreter, after applyFilter(),
// Environment.TESTS and setupGlobals() of @huggingface/jinja's runtime.ts.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <set>

#include "common/error.h"
#include "policy/tokenizer/internal/jinja_builtins.h"
#include "policy/tokenizer/internal/jinja_support.h"

namespace rlhf::policy::jinja {

std::string strftime_now(const std::string& format);  // jinja_builtins.cpp

namespace {

using VK = Value::Kind;

[[noreturn]] void unknown(const char* kind, const std::string& name) {
  throw Error(std::string("Unknown ") + kind + " filter: " + name);
}

// JavaScript parseInt(s, 10) / parseFloat(s); nullopt for NaN.
std::optional<double> js_parse(const std::string& s, bool integer) {
  const std::string t = js_trim_start(s);
  char* end = nullptr;
  const double d = integer ? static_cast<double>(std::strtoll(t.c_str(), &end, 10))
                           : std::strtod(t.c_str(), &end);
  if (end == t.c_str()) return std::nullopt;
  return d;
}

int compare_values(const Value& a, const Value& b, bool case_sensitive) {
  if (a.is(VK::Null) && b.is(VK::Null)) return 0;
  if (a.is(VK::Undefined) && b.is(VK::Undefined)) return 0;
  if (a.is(VK::Null) || b.is(VK::Null) || a.is(VK::Undefined) || b.is(VK::Undefined)) {
    throw Error(std::string("Cannot compare ") + a.type_name() + " with " + b.type_name());
  }
  auto numeric = [](const Value& v) { return v.is_numeric() || v.is(VK::Bool); };
  if (numeric(a) && numeric(b)) {
    const double x = a.is(VK::Bool) ? a.b : (a.is(VK::Int) ? static_cast<double>(a.i) : a.f);
    const double y = b.is(VK::Bool) ? b.b : (b.is(VK::Int) ? static_cast<double>(b.i) : b.f);
    return x < y ? -1 : (x > y ? 1 : 0);
  }
  if (a.kind != b.kind || !a.is(VK::String)) {
    throw Error(std::string("Cannot compare ") + a.type_name() + " and " + b.type_name());
  }
  std::string x = a.s, y = b.s;
  if (!case_sensitive) {
    for (char& c : x) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    for (char& c : y) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return x < y ? -1 : (x > y ? 1 : 0);
}

// "a.b.0" attribute paths of sort(attribute=) and map(attribute=).
Value attribute_path(const Value& item, const std::string& path) {
  Value v = item;
  size_t start = 0;
  for (;;) {
    const size_t dot = path.find('.', start);
    const std::string part = path.substr(start, dot == std::string::npos ? dot : dot - start);
    if (v.is_mapping()) {
      const Value* f = find_key(*v.obj, part);
      v = f ? *f : Value::undefined();
    } else if (v.is(VK::Array)) {
      char* end = nullptr;
      const long k = std::strtol(part.c_str(), &end, 10);
      if (end == part.c_str() || k < 0 || static_cast<size_t>(k) >= v.arr->size())
        return Value::undefined();
      v = (*v.arr)[static_cast<size_t>(k)];
    } else {
      return Value::undefined();
    }
    if (dot == std::string::npos) return v;
    start = dot + 1;
  }
}

Value array_filter(const std::string& f, const Value& v) {
  const Array& a = *v.arr;
  if (f == "list") return v;
  if (f == "first") return a.empty() ? Value::undefined() : a.front();
  if (f == "last") return a.empty() ? Value::undefined() : a.back();
  if (f == "length") return Value::integer(static_cast<int64_t>(a.size()));
  if (f == "reverse") return Value::array(Array(a.rbegin(), a.rend()));
  if (f == "sort") {
    Array s = a;
    std::stable_sort(s.begin(), s.end(), [](const Value& x, const Value& y) {
      return compare_values(x, y, false) < 0;
    });
    return Value::array(std::move(s));
  }
  if (f == "join") {
    std::string out;
    for (const Value& e : a) out += e.is(VK::Null) || e.is(VK::Undefined) ? "" : to_js_string(e);
    return Value::string(out);
  }
  if (f == "string") return Value::string(to_json(v, JsonOptions{}, 0, false));
  if (f == "unique") {
    Array out;
    for (const Value& e : a) {
      const bool seen =
          std::any_of(out.begin(), out.end(), [&](const Value& o) { return strict_equal(o, e); });
      if (!seen) out.push_back(e);
    }
    return Value::array(std::move(out));
  }
  unknown("ArrayValue", f);
}

Value string_filter(const std::string& f, const Value& v) {
  if (f == "length") return Value::integer(static_cast<int64_t>(utf16_length(v.s)));
  if (f == "upper" || f == "lower" || f == "title" || f == "capitalize") {
    return (*get_member(v, Value::string(f)).fn)(CallArgs{});
  }
  if (f == "trim") return Value::string(js_trim(v.s));
  if (f == "indent") return apply_filter_call("indent", v, CallArgs{}, Node{});
  if (f == "join" || f == "string") return v;
  if (f == "int") return Value::integer(static_cast<int64_t>(js_parse(v.s, true).value_or(0)));
  if (f == "float") return Value::floating(js_parse(v.s, false).value_or(0));
  unknown("StringValue", f);
}

Value scalar_filter(const std::string& f, const Value& v) {
  if (v.is_numeric()) {
    if (f == "abs")
      return v.is(VK::Int) ? Value::integer(std::llabs(v.i)) : Value::floating(std::fabs(v.f));
    if (f == "int")
      return Value::integer(v.is(VK::Int) ? v.i : static_cast<int64_t>(std::floor(v.f)));
    if (f == "float") return Value::floating(v.is(VK::Int) ? static_cast<double>(v.i) : v.f);
    if (f == "string") return Value::string(to_output(v));
    unknown("NumericValue", f);
  }
  if (f == "bool") return v;
  if (f == "int") return Value::integer(v.b ? 1 : 0);
  if (f == "float") return Value::floating(v.b ? 1 : 0);
  if (f == "string") return Value::string(v.b ? "true" : "false");
  unknown("BooleanValue", f);
}

}  // namespace

Value apply_filter(const std::string& f, const Value& v) {
  if (f == "safe") return v;
  if (f == "tojson") return Value::string(to_json(v, JsonOptions{}));
  if (v.is(VK::Array)) return array_filter(f, v);
  if (v.is(VK::String)) return string_filter(f, v);
  if (v.is_numeric() || v.is(VK::Bool)) return scalar_filter(f, v);
  if (v.is(VK::Object)) {
    if (f == "length") return Value::integer(static_cast<int64_t>(v.obj->size()));
    if (f == "items" || f == "keys" || f == "values" || f == "get") {
      return object_method(v, f, CallArgs{});
    }
    unknown("ObjectValue", f);
  }
  throw Error("Cannot apply filter \"" + f + "\" to type: " + v.type_name());
}

namespace {

const Value* kwarg(const CallArgs& a, const std::string& key) { return find_key(a.keyword, key); }

Value tojson_call(const Value& v, const CallArgs& a) {
  JsonOptions o;
  if (const Value* indent = kwarg(a, "indent")) {
    if (!indent->is(VK::Int) && !indent->is(VK::Null))
      throw Error("If set, indent must be a number");
    o.indent = indent->is(VK::Int) ? static_cast<int>(indent->i) : 0;
  }
  for (const char* flag : {"ensure_ascii", "sort_keys"}) {
    const Value* b = kwarg(a, flag);
    if (b && !b->is(VK::Bool)) throw Error(std::string("If set, ") + flag + " must be a boolean");
    (std::string(flag) == "ensure_ascii" ? o.ensure_ascii : o.sort_keys) = b && b->b;
  }
  if (const Value* sep = kwarg(a, "separators"); sep && !sep->is(VK::Null)) {
    if (!sep->is(VK::Array) || sep->arr->size() != 2 || !(*sep->arr)[0].is(VK::String) ||
        !(*sep->arr)[1].is(VK::String)) {
      throw Error("separators must be a tuple of two strings");
    }
    o.has_separators = true;
    o.item_separator = (*sep->arr)[0].s;
    o.key_separator = (*sep->arr)[1].s;
  }
  return Value::string(to_json(v, o));
}

Value join_call(const Value& v, const CallArgs& a) {
  Array parts;
  if (v.is(VK::String)) {
    for (const std::string& c : code_points(v.s)) parts.push_back(Value::string(c));
  } else if (v.is(VK::Array)) {
    parts = *v.arr;
  } else {
    throw Error(std::string("Cannot apply filter \"join\" to type: ") + v.type_name());
  }
  const Value* sep = a.get(0, "separator");
  if (sep && !sep->is(VK::String)) throw Error("separator must be a string");
  std::string out;
  for (size_t k = 0; k < parts.size(); ++k) {
    if (k && sep) out += sep->s;
    const Value& e = parts[k];
    out += e.is(VK::Null) || e.is(VK::Undefined) ? "" : to_js_string(e);
  }
  return Value::string(out);
}

Value number_call(const std::string& f, const Value& v, const CallArgs& a) {
  const bool is_int = f == "int";
  const Value* def = a.get(0, "default");
  const Value fallback = def ? *def : (is_int ? Value::integer(0) : Value::floating(0));
  if (v.is(VK::String)) {
    const std::optional<double> d = js_parse(v.s, is_int);
    if (!d) return fallback;
    return is_int ? Value::integer(static_cast<int64_t>(*d)) : Value::floating(*d);
  }
  if (v.is_numeric()) return v;
  if (v.is(VK::Bool)) return is_int ? Value::integer(v.b) : Value::floating(v.b);
  throw Error("Cannot apply filter \"" + f + "\" to type: " + v.type_name());
}

Value default_call(const Value& v, const CallArgs& a) {
  const Value def = a.positional.empty() ? Value::string("") : a.positional[0];
  const Value* boolean = a.get(1, "boolean");
  if (boolean && !boolean->is(VK::Bool)) throw Error("`default` filter flag must be a boolean");
  if (v.is(VK::Undefined) || (boolean && boolean->b && !truthy(v))) return def;
  return v;
}

Value sort_call(const Value& v, const CallArgs& a) {
  const Value* reverse = a.get(0, "reverse");
  const Value* cs = a.get(1, "case_sensitive");
  const Value* attr = a.get(2, "attribute");
  if (reverse && !reverse->is(VK::Bool)) throw Error("reverse must be a boolean");
  if (cs && !cs->is(VK::Bool)) throw Error("case_sensitive must be a boolean");
  std::string path;
  if (attr && attr->is(VK::String)) path = attr->s;
  if (attr && attr->is(VK::Int)) path = std::to_string(attr->i);
  auto key = [&](const Value& x) { return path.empty() ? x : attribute_path(x, path); };
  const bool rev = reverse && reverse->b, sensitive = cs && cs->b;
  Array s = *v.arr;
  std::stable_sort(s.begin(), s.end(), [&](const Value& x, const Value& y) {
    const int c = compare_values(key(x), key(y), sensitive);
    return rev ? c > 0 : c < 0;
  });
  return Value::array(std::move(s));
}

// selectattr / rejectattr (runtime.ts) and select / reject (Python Jinja; absent there).
Value select_call(const std::string& f, const Value& v, const CallArgs& a, const Node& node) {
  const bool by_attr = f == "selectattr" || f == "rejectattr";
  const bool keep = f == "selectattr" || f == "select";
  for (const NodePtr& arg : node.items) {
    if (by_attr && arg->kind != Node::Kind::Str)
      throw Error("arguments of `" + f + "` must be strings");
  }
  size_t k = 0;
  std::string attr;
  if (by_attr) {
    if (a.positional.empty()) throw Error("`" + f + "` needs an attribute name");
    attr = a.positional[k++].s;
  }
  const Value* test = k < a.positional.size() ? &a.positional[k] : nullptr;
  const Value arg = k + 1 < a.positional.size() ? a.positional[k + 1] : Value::undefined();
  Array out;
  for (const Value& item : *v.arr) {
    if (by_attr && !item.is_mapping())
      throw Error("`" + f + "` can only be applied to array of objects");
    const Value* field = by_attr ? find_key(*item.obj, attr) : &item;
    bool r = false;
    if (field) r = test ? apply_test(test->s, *field, arg) : truthy(*field);
    if (r == keep) out.push_back(item);
  }
  return Value::array(std::move(out));
}

Value map_call(const Value& v, const CallArgs& a) {
  const Value* attr = kwarg(a, "attribute");
  if (!attr) throw Error("`map` expressions without `attribute` set are not currently supported.");
  if (!attr->is(VK::String)) throw Error("attribute must be a string");
  const Value* def = kwarg(a, "default");
  Array out;
  for (const Value& item : *v.arr) {
    if (!item.is_mapping()) throw Error("items in map must be an object");
    const Value x = attribute_path(item, attr->s);
    out.push_back(x.is(VK::Undefined) && def ? *def : x);
  }
  return Value::array(std::move(out));
}

Value indent_call(const Value& v, const CallArgs& a) {
  const Value* width = a.get(0, "width");
  if (width && !width->is(VK::Int)) throw Error("width must be a number");
  const Value* first = a.get(1, "first");
  const Value* blank = a.get(2, "blank");
  const std::string pad(static_cast<size_t>(width ? width->i : 4), ' ');
  std::string out, line;
  size_t k = 0;
  for (size_t start = 0;; ++k) {
    const size_t nl = v.s.find('\n', start);
    line = v.s.substr(start, nl == std::string::npos ? nl : nl - start);
    if (k) out += "\n";
    const bool skip =
        (!(first && truthy(*first)) && k == 0) || (!(blank && truthy(*blank)) && line.empty());
    out += skip ? line : pad + line;
    if (nl == std::string::npos) break;
    start = nl + 1;
  }
  return Value::string(out);
}

}  // namespace

Value apply_filter_call(const std::string& f, const Value& v, const CallArgs& a, const Node& node) {
  if (f == "tojson") return tojson_call(v, a);
  if (f == "join") return join_call(v, a);
  if (f == "int" || f == "float") return number_call(f, v, a);
  if (f == "default") return default_call(v, a);
  if (v.is(VK::Array)) {
    if (f == "sort") return sort_call(v, a);
    if (f == "selectattr" || f == "rejectattr" || f == "select" || f == "reject") {
      return select_call(f, v, a, node);
    }
    if (f == "map") return map_call(v, a);
    unknown("ArrayValue", f);
  }
  if (v.is(VK::String)) {
    if (f == "indent") return indent_call(v, a);
    if (f == "replace") return get_member(v, Value::string("replace")).fn->operator()(a);
    unknown("StringValue", f);
  }
  if (v.is(VK::Object)) {
    if (f == "items" || f == "keys" || f == "values" || f == "get") return object_method(v, f, a);
    unknown("ObjectValue", f);
  }
  throw Error("Cannot apply filter \"" + f + "\" to type: " + v.type_name());
}

bool apply_test(const std::string& t, const Value& v, const Value& arg) {
  if (t == "boolean") return v.is(VK::Bool);
  if (t == "callable") return v.is(VK::Function);
  if (t == "odd" || t == "even") {
    if (!v.is(VK::Int)) throw Error("cannot " + t + " on " + v.type_name());
    return (v.i % 2 != 0) == (t == "odd");
  }
  if (t == "false" || t == "true") return v.is(VK::Bool) && v.b == (t == "true");
  if (t == "none") return v.is(VK::Null);
  if (t == "string") return v.is(VK::String);
  if (t == "number") return v.is_numeric();
  if (t == "integer") return v.is(VK::Int);
  if (t == "iterable") return (v.is(VK::Array) && !v.is_tuple) || v.is(VK::String);
  if (t == "mapping") return v.is(VK::Object);
  if (t == "sequence") return v.is(VK::Array) || v.is(VK::Object) || v.is(VK::String);
  if (t == "lower" || t == "upper") {
    if (!v.is(VK::String)) return false;
    const Value cased = (*get_member(v, Value::string(t)).fn)(CallArgs{});
    return cased.s == v.s;
  }
  if (t == "defined") return !v.is(VK::Undefined);
  if (t == "undefined") return v.is(VK::Undefined);
  if (t == "equalto" || t == "eq") return strict_equal(v, arg);
  throw Error("Unknown test: " + t);
}

std::vector<std::pair<std::string, Value>> global_values() {
  auto fn = [](Function f) { return Value::function(std::move(f)); };
  std::vector<std::pair<std::string, Value>> g = {
      {"false", Value::boolean(false)}, {"true", Value::boolean(true)}, {"none", Value::null()},
      {"False", Value::boolean(false)}, {"True", Value::boolean(true)}, {"None", Value::null()}};
  g.emplace_back(
      "raise_exception", fn([](const CallArgs& a) -> Value {
        throw RaisedException{a.positional.empty() ? "undefined" : to_js_string(a.positional[0])};
      }));
  g.emplace_back("strftime_now", fn([](const CallArgs& a) {
                   if (a.positional.empty() || !a.positional[0].is(VK::String)) {
                     throw Error("strftime_now() needs a format string");
                   }
                   return Value::string(strftime_now(a.positional[0].s));
                 }));
  g.emplace_back("range", fn([](const CallArgs& a) {
                   for (const Value& x : a.positional) {
                     if (!x.is(VK::Int)) throw Error("range() arguments must be integers");
                   }
                   const size_t n = a.positional.size();
                   if (n == 0 || n > 3) throw Error("range() takes 1 to 3 arguments");
                   const int64_t start = n == 1 ? 0 : a.positional[0].i;
                   const int64_t stop = n == 1 ? a.positional[0].i : a.positional[1].i;
                   const int64_t step = n == 3 ? a.positional[2].i : 1;
                   if (step == 0) throw Error("range() step must not be zero");
                   Array out;
                   for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
                     out.push_back(Value::integer(i));
                   }
                   return Value::array(std::move(out));
                 }));
  g.emplace_back(
      "namespace", fn([](const CallArgs& a) {
        if (a.positional.size() > 1) throw Error("namespace expected at most 1 argument");
        Object entries;
        if (!a.positional.empty()) {
          const Value& src = a.positional[0];
          if (!src.is(VK::Object)) {
            throw Error(std::string("namespace: '") + src.type_name() + "' is not a mapping");
          }
          entries = *src.obj;
        }
        for (const auto& [k, v] : a.keyword) set_key(entries, k, v);
        return Value::ns(std::move(entries));
      }));
  return g;
}

bool supported_filter(const std::string& name) {
  static const std::set<std::string> names = {
      "safe",    "tojson",     "list",       "first",  "last",   "length", "reverse",    "sort",
      "join",    "string",     "unique",     "upper",  "lower",  "title",  "capitalize", "trim",
      "indent",  "int",        "float",      "abs",    "bool",   "items",  "keys",       "values",
      "default", "selectattr", "rejectattr", "select", "reject", "map",    "replace"};
  return names.count(name) > 0;
}

bool supported_test(const std::string& name) {
  static const std::set<std::string> names = {
      "boolean", "callable", "odd",       "even",     "false",   "true",     "none",
      "string",  "number",   "integer",   "iterable", "mapping", "sequence", "lower",
      "upper",   "defined",  "undefined", "equalto",  "eq"};
  return names.count(name) > 0;
}

bool supported_global_function(const std::string& name) {
  return name == "raise_exception" || name == "strftime_now" || name == "range" ||
         name == "namespace";
}

}  // namespace rlhf::policy::jinja
