// Statements, expressions and operators of the chat-template interpreter (runtime.ts of
// @huggingface/jinja). Filters, tests and methods are in jinja_builtins.cpp.
#include "policy/tokenizer/internal/jinja_eval.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <unordered_map>

#include "common/error.h"
#include "policy/tokenizer/internal/jinja_builtins.h"

namespace rlhf::policy::jinja {
namespace {

using K = Node::Kind;
using VK = Value::Kind;

struct BreakSignal {};
struct ContinueSignal {};

struct Scope {
  std::unordered_map<std::string, Value> vars;
  std::shared_ptr<Scope> parent;

  Value lookup(const std::string& n) const {
    for (const Scope* s = this; s; s = s->parent.get()) {
      auto it = s->vars.find(n);
      if (it != s->vars.end()) return it->second;
    }
    return Value::undefined();
  }
};
using ScopePtr = std::shared_ptr<Scope>;

ScopePtr child(const ScopePtr& parent) {
  auto s = std::make_shared<Scope>();
  s->parent = parent;
  return s;
}

double num(const Value& v) {
  if (v.is(VK::Bool)) return v.b ? 1 : 0;
  return v.is(VK::Int) ? static_cast<double>(v.i) : v.f;
}

Value number(double d, bool is_float) {
  if (is_float) return Value::floating(d);
  if (!std::isfinite(d)) throw Error("integer result is not finite");
  return Value::integer(static_cast<int64_t>(d));
}

struct Interpreter {
  const std::string& name;

  std::string block(const Body& body, const ScopePtr& scope);
  Value statement(const Node& n, const ScopePtr& scope);
  Value eval(const NodePtr& n, const ScopePtr& scope);
  Value literal(const Node& n, const ScopePtr& scope);
  Value binary(const Node& n, const ScopePtr& scope);
  Value unary(const Node& n, const ScopePtr& scope);
  Value member(const Node& n, const ScopePtr& scope);
  Value slice(const Value& object, const Node& n, const ScopePtr& scope);
  Value call(const Node& n, const ScopePtr& scope);
  CallArgs arguments(const std::vector<NodePtr>& items, const ScopePtr& scope);
  void assign(const Node& n, const ScopePtr& scope);
  std::string for_loop(const Node& n, const ScopePtr& scope);
  void define_macro(const Node& n, const ScopePtr& scope);
};

std::string Interpreter::block(const Body& body, const ScopePtr& scope) {
  std::string out;
  for (const NodePtr& n : body) {
    const Value v = statement(*n, scope);
    if (!v.is(VK::Null) && !v.is(VK::Undefined)) out += to_output(v);
  }
  return out;
}

Value Interpreter::statement(const Node& n, const ScopePtr& scope) {
  switch (n.kind) {
    case K::Text:
      return Value::string(n.text);
    case K::Output:
      return eval(n.a, scope);
    case K::If:
      return Value::string(block(truthy(eval(n.a, scope)) ? n.body : n.alt, scope));
    case K::For:
      return Value::string(for_loop(n, scope));
    case K::Set:
      assign(n, scope);
      return Value::null();
    case K::Macro:
      define_macro(n, scope);
      return Value::null();
    case K::Break:
      throw BreakSignal{};
    case K::Continue:
      throw ContinueSignal{};
    default:
      throw Error("unexpected expression node");
  }
}

void Interpreter::assign(const Node& n, const ScopePtr& scope) {
  const Value rhs = n.b ? eval(n.b, scope) : Value::string(block(n.body, scope));
  const Node& target = *n.a;
  if (target.kind == K::Ident) {
    scope->vars[target.text] = rhs;
  } else if (target.kind == K::TupleLit) {
    if (!rhs.is(VK::Array)) {
      throw Error(std::string("Cannot unpack non-iterable type in set: ") + rhs.type_name());
    }
    if (rhs.arr->size() != target.items.size()) {
      throw Error(std::string("Too ") + (target.items.size() > rhs.arr->size() ? "few" : "many") +
                  " items to unpack in set");
    }
    for (size_t k = 0; k < target.items.size(); ++k) {
      if (target.items[k]->kind != K::Ident) throw Error("Cannot unpack to non-identifier in set");
      scope->vars[target.items[k]->text] = (*rhs.arr)[k];
    }
  } else {
    const Value object = eval(target.a, scope);
    if (!object.is(VK::Namespace)) throw Error("cannot assign attribute on non-namespace object");
    if (target.b->kind != K::Ident)
      throw Error("Cannot assign to member with non-identifier property");
    set_key(*object.obj, target.b->text, rhs);
  }
}

// Binds the loop variable(s) of `n` to `item` in `scope`.
void bind_loop_var(const Node& var, const Value& item, const ScopePtr& scope) {
  if (var.kind == K::Ident) {
    scope->vars[var.text] = item;
    return;
  }
  if (!item.is(VK::Array) || item.is_tuple) {
    throw Error(std::string("Cannot unpack non-iterable type: ") + item.type_name());
  }
  if (var.items.size() != item.arr->size()) {
    throw Error(std::string("Too ") + (var.items.size() > item.arr->size() ? "few" : "many") +
                " items to unpack");
  }
  for (size_t j = 0; j < var.items.size(); ++j) {
    if (var.items[j]->kind != K::Ident) throw Error("Cannot unpack non-identifier type");
    scope->vars[var.items[j]->text] = (*item.arr)[j];
  }
}

Value loop_object(const std::vector<Value>& items, size_t i) {
  const auto n = static_cast<int64_t>(items.size()), k = static_cast<int64_t>(i);
  return Value::object({{"index", Value::integer(k + 1)},
                        {"index0", Value::integer(k)},
                        {"revindex", Value::integer(n - k)},
                        {"revindex0", Value::integer(n - k - 1)},
                        {"first", Value::boolean(k == 0)},
                        {"last", Value::boolean(k == n - 1)},
                        {"length", Value::integer(n)},
                        {"previtem", k > 0 ? items[i - 1] : Value::undefined()},
                        {"nextitem", k < n - 1 ? items[i + 1] : Value::undefined()}});
}

std::string Interpreter::for_loop(const Node& n, const ScopePtr& outer) {
  const ScopePtr scope = child(outer);
  const bool select = n.b->kind == K::Select;
  Value iterable = eval(select ? n.b->a : n.b, scope);
  if (iterable.is(VK::Object)) {
    Array keys;
    for (const auto& kv : *iterable.obj) keys.push_back(Value::string(kv.first));
    iterable = Value::array(std::move(keys));
  }
  if (!iterable.is(VK::Array)) {
    throw Error(std::string("Expected iterable or object type in for loop: got ") +
                iterable.type_name());
  }
  std::vector<Value> items;
  for (const Value& item : *iterable.arr) {
    if (select) {
      const ScopePtr test_scope = child(scope);
      bind_loop_var(*n.a, item, test_scope);
      if (!truthy(eval(n.b->b, test_scope))) continue;
    }
    items.push_back(item);
  }
  std::string out;
  bool no_iteration = true;
  for (size_t i = 0; i < items.size(); ++i) {
    scope->vars["loop"] = loop_object(items, i);
    bind_loop_var(*n.a, items[i], scope);
    try {
      out += block(n.body, scope);
    } catch (const ContinueSignal&) {
      continue;
    } catch (const BreakSignal&) {
      break;
    }
    no_iteration = false;
  }
  if (no_iteration) out += block(n.alt, scope);
  return out;
}

void Interpreter::define_macro(const Node& n, const ScopePtr& scope) {
  const Node* macro = &n;
  Interpreter* self = this;
  // The macro body runs in a child of the scope the macro was defined in.
  // A weak reference: the scope holds the macro, so a strong one would be a cycle (a leak).
  const std::weak_ptr<Scope> weak = scope;
  scope->vars[n.text] = Value::function([macro, self, weak](const CallArgs& args) {
    const ScopePtr defining = weak.lock();
    if (!defining) throw Error("macro " + macro->text + " called after its scope ended");
    const ScopePtr ms = child(defining);
    Object extra_kw = args.keyword;
    for (size_t k = 0; k < macro->items.size(); ++k) {
      const Node& p = *macro->items[k];
      const std::string& pname = p.text;
      Value v = Value::undefined();
      bool have = false;
      if (k < args.positional.size()) {
        v = args.positional[k], have = true;
      } else if (const Value* kw = find_key(args.keyword, pname)) {
        v = *kw, have = true;
        extra_kw.erase(std::find_if(extra_kw.begin(), extra_kw.end(),
                                    [&](const auto& e) { return e.first == pname; }));
      }
      ms->vars[pname] = v;
      if (!have && p.kind == K::KwArg) ms->vars[pname] = self->eval(p.a, ms);
    }
    ms->vars["kwargs"] = Value::object(extra_kw);
    const size_t declared = std::min(macro->items.size(), args.positional.size());
    ms->vars["varargs"] = Value::array(
        Array(args.positional.begin() + static_cast<long>(declared), args.positional.end()));
    return Value::string(self->block(macro->body, ms));
  });
}

CallArgs Interpreter::arguments(const std::vector<NodePtr>& items, const ScopePtr& scope) {
  CallArgs args;
  for (const NodePtr& a : items) {
    if (a->kind != K::KwArg) args.positional.push_back(eval(a, scope));
  }
  for (const NodePtr& a : items) {
    if (a->kind != K::KwArg) continue;
    if (find_key(args.keyword, a->text)) {
      throw Error("Got multiple values for keyword argument '" + a->text + "'");
    }
    args.keyword.emplace_back(a->text, eval(a->a, scope));
  }
  return args;
}

Value Interpreter::call(const Node& n, const ScopePtr& scope) {
  const CallArgs args = arguments(n.items, scope);
  const Value fn = eval(n.a, scope);
  if (!fn.is(VK::Function)) {
    throw Error(std::string("Cannot call something that is not a function: got ") + fn.type_name());
  }
  return (*fn.fn)(args);
}

Value Interpreter::slice(const Value& object, const Node& n, const ScopePtr& scope) {
  if (!object.is(VK::Array) && !object.is(VK::String)) {
    throw Error("Slice object must be an array or string");
  }
  const Value start = eval(n.a, scope), stop = eval(n.b, scope), step = eval(n.c, scope);
  for (const Value* v : {&start, &stop, &step}) {
    if (!v->is(VK::Int) && !v->is(VK::Undefined)) {
      throw Error("Slice start, stop and step must be numeric or undefined");
    }
  }
  auto opt = [](const Value& v) {
    return v.is(VK::Int) ? std::optional<int64_t>(v.i) : std::nullopt;
  };
  if (object.is(VK::Array))
    return Value::array(slice_items(*object.arr, opt(start), opt(stop), opt(step)));
  std::vector<std::string> cps = code_points(object.s);
  std::string out;
  for (const std::string& c : slice_items(cps, opt(start), opt(stop), opt(step))) out += c;
  return Value::string(out);
}

Value Interpreter::member(const Node& n, const ScopePtr& scope) {
  const Value object = eval(n.a, scope);
  Value property;
  if (n.flag) {
    if (n.b->kind == K::Slice) return slice(object, *n.b, scope);
    property = eval(n.b, scope);
  } else if (n.b->kind == K::Int) {
    property = Value::integer(n.b->ival);
  } else {
    property = Value::string(n.b->text);
  }
  return get_member(object, property);
}

Value Interpreter::unary(const Node& n, const ScopePtr& scope) {
  const Value v = eval(n.a, scope);
  if (n.text == "not") return Value::boolean(!truthy(v));
  if (!v.is_numeric() && !v.is(VK::Bool)) {
    throw Error("Unknown operator \"" + n.text + "\" for " + v.type_name());
  }
  const double r = (n.text == "-" ? -1 : 1) * num(v);
  return v.is(VK::Float) ? Value::floating(r) : number(r, false);
}

Value arithmetic(const std::string& op, const Value& l, const Value& r, bool* done) {
  const double a = num(l), b = num(r);
  const bool is_float = l.is(VK::Float) || r.is(VK::Float);
  *done = true;
  if (op == "+") return number(a + b, is_float);
  if (op == "-") return number(a - b, is_float);
  if (op == "*") return number(a * b, is_float);
  if (op == "/") return Value::floating(a / b);
  if (op == "//") return number(std::floor(a / b), is_float);
  if (op == "%") return number(std::fmod(a, b), is_float);
  if (op == "<") return Value::boolean(a < b);
  if (op == ">") return Value::boolean(a > b);
  if (op == ">=") return Value::boolean(a >= b);
  if (op == "<=") return Value::boolean(a <= b);
  *done = false;
  return Value::undefined();
}

Value power(const Value& l, const Value& r) {
  const double a = num(l), b = num(r);
  if (a == 0 && b < 0) throw Error("0.0 cannot be raised to a negative power");
  const double res = std::pow(a, b);
  if (!std::isfinite(res)) throw Error("Exponentiation result is not a finite real number");
  return number(res, l.is(VK::Float) || r.is(VK::Float) || b < 0);
}

// The operators after `and`, `or`, `==` and `!=`, in runtime.ts's order of cases.
Value binary_values(const std::string& op, const Value& l, const Value& r) {
  if (l.is(VK::Undefined) || r.is(VK::Undefined)) {
    if (r.is(VK::Undefined) && (op == "in" || op == "not in"))
      return Value::boolean(op == "not in");
    throw Error("Cannot perform operation " + op + " on undefined values");
  }
  if (l.is(VK::Null) || r.is(VK::Null)) throw Error("Cannot perform operation on null values");
  if (op == "~") return Value::string(to_js_string(l) + to_js_string(r));
  const bool l_num = l.is_numeric() || l.is(VK::Bool), r_num = r.is_numeric() || r.is(VK::Bool);
  if (op == "**" && l_num && r_num) return power(l, r);
  if (l.is_numeric() && r.is_numeric()) {
    bool done = false;
    Value v = arithmetic(op, l, r, &done);
    if (done) return v;
  } else if (l.is(VK::Array) && r.is(VK::Array)) {
    if (op == "+") {
      Array joined = *l.arr;
      joined.insert(joined.end(), r.arr->begin(), r.arr->end());
      return Value::array(std::move(joined));
    }
  } else if (r.is(VK::Array) && (op == "in" || op == "not in")) {
    bool found = false;
    for (const Value& e : *r.arr) found = found || strict_equal(e, l);
    return Value::boolean(found == (op == "in"));
  }
  if ((l.is(VK::String) || r.is(VK::String)) && op == "+") {
    return Value::string(to_js_string(l) + to_js_string(r));
  }
  if (l.is(VK::String) && r.is(VK::String) && (op == "in" || op == "not in")) {
    return Value::boolean((r.s.find(l.s) != std::string::npos) == (op == "in"));
  }
  if (l.is(VK::String) && r.is(VK::Object) && (op == "in" || op == "not in")) {
    return Value::boolean((find_key(*r.obj, l.s) != nullptr) == (op == "in"));
  }
  throw Error("Unknown operator \"" + op + "\" between " + l.type_name() + " and " + r.type_name());
}

Value Interpreter::binary(const Node& n, const ScopePtr& scope) {
  const Value l = eval(n.a, scope);
  if (n.text == "and") return truthy(l) ? eval(n.b, scope) : l;
  if (n.text == "or") return truthy(l) ? l : eval(n.b, scope);
  const Value r = eval(n.b, scope);
  if (n.text == "==") return Value::boolean(loose_equal(l, r));
  if (n.text == "!=") return Value::boolean(!loose_equal(l, r));
  return binary_values(n.text, l, r);
}

Value Interpreter::literal(const Node& n, const ScopePtr& scope) {
  switch (n.kind) {
    case K::Int:
      return Value::integer(n.ival);
    case K::Float:
      return Value::floating(n.fval);
    case K::Str:
      return Value::string(n.text);
    case K::ArrayLit:
    case K::TupleLit: {
      Array a;
      for (const NodePtr& e : n.items) a.push_back(eval(e, scope));
      Value v = Value::array(std::move(a));
      v.is_tuple = n.kind == K::TupleLit;
      return v;
    }
    default: {
      Object o;
      for (size_t k = 0; k + 1 < n.items.size(); k += 2) {
        const Value key = eval(n.items[k], scope);
        if (!key.is(VK::String)) {
          throw Error(std::string("Object keys must be strings: got ") + key.type_name());
        }
        set_key(o, key.s, eval(n.items[k + 1], scope));
      }
      return Value::object(std::move(o));
    }
  }
}

Value Interpreter::eval(const NodePtr& p, const ScopePtr& scope) {
  if (!p) return Value::undefined();
  const Node& n = *p;
  switch (n.kind) {
    case K::Int:
    case K::Float:
    case K::Str:
    case K::ArrayLit:
    case K::TupleLit:
    case K::ObjectLit:
      return literal(n, scope);
    case K::Ident:
      return scope->lookup(n.text);
    case K::Member:
      return member(n, scope);
    case K::Call:
      return call(n, scope);
    case K::Binary:
      return binary(n, scope);
    case K::Unary:
      return unary(n, scope);
    case K::Filter: {
      const Value operand = eval(n.a, scope);
      if (!n.flag) return apply_filter(n.text, operand);
      return apply_filter_call(n.text, operand, arguments(n.items, scope), n);
    }
    case K::Test: {
      const bool r = apply_test(n.text, eval(n.a, scope), Value::undefined());
      return Value::boolean(n.flag ? !r : r);
    }
    case K::Select:
      return truthy(eval(n.b, scope)) ? eval(n.a, scope) : Value::undefined();
    case K::Ternary:
      return truthy(eval(n.a, scope)) ? eval(n.b, scope) : eval(n.c, scope);
    default:
      return statement(n, scope);
  }
}

}  // namespace

std::string render(const Body& program, const std::vector<std::pair<std::string, Value>>& vars,
                   const std::string& name) {
  auto globals = std::make_shared<Scope>();
  for (auto& [k, v] : global_values()) globals->vars[k] = v;
  for (const auto& [k, v] : vars) {
    if (globals->vars.count(k)) {
      throw Error("chat template " + name + ": Variable already declared: " + k);
    }
    globals->vars[k] = v;
  }
  Interpreter interp{name};
  try {
    return interp.block(program, globals);
  } catch (const BreakSignal&) {
    throw Error("chat template " + name + ": {% break %} outside a loop");
  } catch (const ContinueSignal&) {
    throw Error("chat template " + name + ": {% continue %} outside a loop");
  } catch (const RaisedException& e) {
    throw Error("chat template " + name + ": raise_exception: " + e.message);
  } catch (const Error& e) {
    throw Error("chat template " + name + ": " + e.what());
  }
}

}  // namespace rlhf::policy::jinja
