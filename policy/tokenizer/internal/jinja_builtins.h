// Filters, tests, member access (string / object methods) and global functions of the
// chat-template interpreter, as runtime.ts of @huggingface/jinja implements them.
// Internal: not part of the public API.
#pragma once

#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "policy/tokenizer/internal/jinja_ast.h"
#include "policy/tokenizer/internal/jinja_value.h"

namespace rlhf::policy::jinja {

// Thrown by the template's raise_exception(message).
struct RaisedException {
  std::string message;
};

// true, false, none (and title case), namespace, range, raise_exception, strftime_now.
std::vector<std::pair<std::string, Value>> global_values();

// object.property / object[property] (a missing one is Undefined; methods come back bound).
Value get_member(const Value& object, const Value& property);

// dict.get / items / keys / values on an Object.
Value object_method(const Value& self, const std::string& method, const CallArgs& args);

Value apply_filter(const std::string& name, const Value& operand);
Value apply_filter_call(const std::string& name, const Value& operand, const CallArgs& args,
                        const Node& node);
bool apply_test(const std::string& name, const Value& operand, const Value& arg);

// Python slicing (utils.ts slice()).
template <typename T>
std::vector<T> slice_items(const std::vector<T>& a, std::optional<int64_t> start_opt,
                           std::optional<int64_t> stop_opt, std::optional<int64_t> step_opt) {
  const int64_t n = static_cast<int64_t>(a.size()), step = step_opt.value_or(1);
  const int64_t dir = step > 0 ? 1 : (step < 0 ? -1 : 0);
  int64_t start = 0, stop = 0;
  if (dir >= 0) {
    start = start_opt.value_or(0);
    start = start < 0 ? std::max<int64_t>(n + start, 0) : std::min(start, n);
    stop = stop_opt.value_or(n);
    stop = stop < 0 ? std::max<int64_t>(n + stop, 0) : std::min(stop, n);
  } else {
    start = start_opt.value_or(n - 1);
    start = start < 0 ? std::max<int64_t>(n + start, -1) : std::min(start, n - 1);
    stop = stop_opt.value_or(-1);
    stop = stop < -1 ? std::max<int64_t>(n + stop, -1) : std::min(stop, n - 1);
  }
  std::vector<T> out;
  if (step == 0) return out;
  for (int64_t i = start; dir * i < dir * stop; i += step) out.push_back(a[static_cast<size_t>(i)]);
  return out;
}

}  // namespace rlhf::policy::jinja
