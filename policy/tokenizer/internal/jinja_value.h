// Runtime values of the chat-template interpreter (chat_template.h), modelled on the values of
// @huggingface/jinja (the engine transformers.js renders chat templates with): JavaScript
// semantics where that engine has them (truthiness, loose ==, number printing, JSON.stringify).
// Internal: not part of the public API.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace rlhf::policy::jinja {

struct Value;
using Array = std::vector<Value>;
// Insertion-ordered (JavaScript Map order); linear lookup is fine for chat-message sized objects.
using Object = std::vector<std::pair<std::string, Value>>;

struct CallArgs;
using Function = std::function<Value(const CallArgs&)>;

struct Value {
  enum class Kind { Undefined, Null, Bool, Int, Float, String, Array, Object, Namespace, Function };
  Kind kind = Kind::Undefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;
  bool is_tuple = false;  // a TupleValue: an Array for everything but the type tests
  std::shared_ptr<Array> arr;
  std::shared_ptr<Object> obj;  // Object and Namespace
  std::shared_ptr<Function> fn;

  static Value undefined() { return Value{}; }
  static Value null();
  static Value boolean(bool v);
  static Value integer(int64_t v);
  static Value floating(double v);
  static Value string(std::string v);
  static Value array(Array v = {});
  static Value object(Object v = {});
  static Value ns(Object v = {});
  static Value function(Function f);

  bool is(Kind k) const { return kind == k; }
  bool is_numeric() const { return kind == Kind::Int || kind == Kind::Float; }
  bool is_mapping() const { return kind == Kind::Object || kind == Kind::Namespace; }
  const char* type_name() const;  // "StringValue", ... as @huggingface/jinja names them
};

struct CallArgs {
  std::vector<Value> positional;
  Object keyword;
  const Value* get(size_t pos, const std::string& name) const;
};

// Looks a key up in an Object/Namespace; nullptr when absent.
const Value* find_key(const Object& o, const std::string& key);
void set_key(Object& o, const std::string& key, Value v);

// JSON (as parsed from a conversation) to a runtime value: integral numbers become Int, as
// JavaScript's Number.isInteger makes them.
Value from_json(const nlohmann::ordered_json& j);

// Truthiness (Python-like for containers, JavaScript-like for the rest).
bool truthy(const Value& v);
// What {{ v }} prints (RuntimeValue.toString()).
std::string to_output(const Value& v);
// String(v.value) in JavaScript: what `+` and `~` concatenate.
std::string to_js_string(const Value& v);
// JavaScript's `a == b` on the underlying values.
bool loose_equal(const Value& a, const Value& b);
// JavaScript's `a === b` on the underlying values (membership with `in`).
bool strict_equal(const Value& a, const Value& b);

struct JsonOptions {
  int indent = 0;  // 0: one line
  bool ensure_ascii = false;
  bool sort_keys = false;
  bool has_separators = false;
  std::string item_separator, key_separator;
};
// toJSON of @huggingface/jinja (JSON.stringify escaping, Python json.dumps separators).
std::string to_json(const Value& v, const JsonOptions& o, int depth = 0,
                    bool undefined_null = true);
// JavaScript number to string (Number.prototype.toString); an Int as that number prints.
std::string js_number(double d);
std::string int_string(int64_t i);

// UTF-8 helpers with JavaScript's notion of whitespace (String.prototype.trim, /\s/).
bool is_js_space(uint32_t cp);
// Decodes the code point at s[pos]; sets *len to its byte length (1 for invalid bytes).
uint32_t decode_utf8(const std::string& s, size_t pos, size_t* len);
void append_utf8(std::string& out, uint32_t cp);
std::string js_trim_start(const std::string& s);
std::string js_trim_end(const std::string& s);
std::string js_trim(const std::string& s);
size_t utf16_length(const std::string& s);
std::vector<std::string> code_points(const std::string& s);

}  // namespace rlhf::policy::jinja
