// Parser of the chat-template interpreter: @huggingface/jinja's parser.ts, function for function,
// plus the load-time refusal of what the interpreter (jinja_eval.cpp) does not implement.
#include <algorithm>
#include <set>
#include <stdexcept>
#include <utility>

#include "common/error.h"
#include "policy/tokenizer/internal/jinja_ast.h"
#include "policy/tokenizer/internal/jinja_lexer.h"
#include "policy/tokenizer/internal/jinja_support.h"

namespace rlhf::policy::jinja {
namespace {

using K = Node::Kind;

NodePtr make(K kind, size_t pos, std::string text = "") {
  auto n = std::make_shared<Node>();
  n->kind = kind;
  n->pos = pos;
  n->text = std::move(text);
  return n;
}

struct Parser {
  const std::vector<Token>& tokens;
  const std::string& src;
  const std::string& name;
  size_t cur = 0;
  std::vector<std::pair<std::string, size_t>> called_globals;
  std::set<std::string> macros;

  [[noreturn]] void fail(const std::string& what, size_t pos) const {
    throw Error("chat template: " + what + " at " + where(name, src, pos));
  }
  size_t here() const { return cur < tokens.size() ? tokens[cur].pos : src.size(); }
  bool is(Tok t, size_t ahead = 0) const {
    return cur + ahead < tokens.size() && tokens[cur + ahead].type == t;
  }
  bool is_ident(const std::string& v, size_t ahead = 0) const {
    return is(Tok::Ident, ahead) && tokens[cur + ahead].value == v;
  }
  bool is_statement(std::initializer_list<const char*> names) const {
    if (!is(Tok::OpenStatement) || !is(Tok::Ident, 1)) return false;
    const std::string& v = tokens[cur + 1].value;
    return std::any_of(names.begin(), names.end(), [&](const char* n) { return v == n; });
  }
  const Token& expect(Tok t, const std::string& what) {
    if (!is(t)) fail("expected " + what, here());
    return tokens[cur++];
  }
  void expect_ident(const std::string& v) {
    if (!is_ident(v)) fail("expected '" + v + "'", here());
    ++cur;
  }
  void expect_end_tag(const std::string& v) {
    expect(Tok::OpenStatement, "'{%'");
    expect_ident(v);
    expect(Tok::CloseStatement, "'%}'");
  }
  Body until(std::initializer_list<const char*> names) {
    Body body;
    while (!is_statement(names)) {
      if (cur >= tokens.size()) {
        std::string closing = *names.begin();
        for (const char* n : names) {
          if (std::string(n).rfind("end", 0) == 0) closing = n;
        }
        fail("missing {% " + closing + " %}", src.size());
      }
      if (NodePtr n = any()) body.push_back(n);
    }
    return body;
  }

  NodePtr any();
  NodePtr statement();
  NodePtr set_statement(size_t pos);
  NodePtr if_statement(size_t pos);
  NodePtr for_statement(size_t pos);
  NodePtr macro_statement(size_t pos);
  std::vector<NodePtr> args(bool parameters);
  NodePtr sequence(bool primary);
  NodePtr expression() { return if_expression(); }
  NodePtr if_expression();
  NodePtr logical(const char* op);
  NodePtr negation();
  NodePtr comparison();
  NodePtr binary(Tok t, NodePtr (Parser::*next)());
  NodePtr additive() { return binary(Tok::Additive, &Parser::multiplicative); }
  NodePtr multiplicative() { return binary(Tok::Multiplicative, &Parser::power); }
  NodePtr power() { return binary(Tok::Power, &Parser::test); }
  NodePtr test();
  NodePtr filter();
  NodePtr unary_sign();
  NodePtr call_member();
  NodePtr call(NodePtr callee);
  NodePtr member(NodePtr object);
  NodePtr member_arguments();
  NodePtr primary();
  NodePtr container(Tok open);
};

NodePtr Parser::any() {
  const Token& t = tokens[cur];
  switch (t.type) {
    case Tok::Comment:
      ++cur;
      return nullptr;
    case Tok::Text:
      ++cur;
      return make(K::Text, t.pos, t.value);
    case Tok::OpenStatement:
      return statement();
    case Tok::OpenExpression: {
      ++cur;
      NodePtr out = make(K::Output, t.pos);
      out->a = expression();
      expect(Tok::CloseExpression, "'}}'");
      return out;
    }
    default:
      fail("unexpected token '" + t.value + "'", t.pos);
  }
}

NodePtr Parser::statement() {
  const size_t pos = here();
  expect(Tok::OpenStatement, "'{%'");
  if (!is(Tok::Ident)) fail("unknown statement", here());
  const std::string kw = tokens[cur++].value;
  if (kw == "set") return set_statement(pos);
  if (kw == "if") {
    NodePtr n = if_statement(pos);
    expect_end_tag("endif");
    return n;
  }
  if (kw == "for") {
    NodePtr n = for_statement(pos);
    expect_end_tag("endfor");
    return n;
  }
  if (kw == "macro") {
    NodePtr n = macro_statement(pos);
    expect_end_tag("endmacro");
    return n;
  }
  if (kw == "break" || kw == "continue") {
    expect(Tok::CloseStatement, "'%}'");
    return make(kw == "break" ? K::Break : K::Continue, pos);
  }
  fail("unsupported statement '{% " + kw + " %}'", pos);
}

NodePtr Parser::set_statement(size_t pos) {
  NodePtr n = make(K::Set, pos);
  n->a = sequence(false);
  if (n->a->kind != K::Ident && n->a->kind != K::TupleLit &&
      !(n->a->kind == K::Member && !n->a->flag)) {
    fail("unsupported assignment target in {% set %}", pos);
  }
  if (is(Tok::Equals)) {
    ++cur;
    n->b = sequence(false);
  } else {
    expect(Tok::CloseStatement, "'%}'");
    n->body = until({"endset"});
    expect(Tok::OpenStatement, "'{%'");
    expect_ident("endset");
  }
  expect(Tok::CloseStatement, "'%}'");
  return n;
}

NodePtr Parser::if_statement(size_t pos) {
  NodePtr n = make(K::If, pos);
  n->a = expression();
  expect(Tok::CloseStatement, "'%}'");
  n->body = until({"elif", "else", "endif"});
  if (is_statement({"elif"})) {
    const size_t elif_pos = here();
    cur += 2;
    n->alt.push_back(if_statement(elif_pos));
  } else if (is_statement({"else"})) {
    cur += 2;
    expect(Tok::CloseStatement, "'%}'");
    n->alt = until({"endif"});
  }
  return n;
}

NodePtr Parser::for_statement(size_t pos) {
  NodePtr n = make(K::For, pos);
  n->a = sequence(true);
  if (n->a->kind != K::Ident && n->a->kind != K::TupleLit) {
    fail("expected identifier/tuple for the loop variable", pos);
  }
  if (!is_ident("in")) fail("expected 'in' after the loop variable", here());
  ++cur;
  n->b = expression();
  expect(Tok::CloseStatement, "'%}'");
  n->body = until({"endfor", "else"});
  if (is_statement({"else"})) {
    cur += 2;
    expect(Tok::CloseStatement, "'%}'");
    n->alt = until({"endfor"});
  }
  return n;
}

NodePtr Parser::macro_statement(size_t pos) {
  NodePtr name_node = primary();
  if (name_node->kind != K::Ident) fail("expected identifier following macro", pos);
  NodePtr n = make(K::Macro, pos, name_node->text);
  n->items = args(true);
  expect(Tok::CloseStatement, "'%}'");
  n->body = until({"endmacro"});
  macros.insert(n->text);
  return n;
}

std::vector<NodePtr> Parser::args(bool parameters) {
  expect(Tok::OpenParen, "'('");
  std::vector<NodePtr> out;
  bool saw_keyword = false;
  while (!is(Tok::CloseParen)) {
    if (cur >= tokens.size()) fail("missing ')'", src.size());
    if (is(Tok::Power) || (is(Tok::Multiplicative) && tokens[cur].value == "*")) {
      fail("unsupported argument unpacking (* / **)", here());
    }
    NodePtr arg = expression();
    if (is(Tok::Equals)) {
      ++cur;
      if (arg->kind != K::Ident) fail("expected identifier for keyword argument", arg->pos);
      NodePtr kw = make(K::KwArg, arg->pos, arg->text);
      kw->a = expression();
      arg = kw;
      saw_keyword = true;
    } else if (saw_keyword) {
      fail("positional argument after keyword argument", arg->pos);
    }
    if (parameters && arg->kind != K::Ident && arg->kind != K::KwArg) {
      fail("expected identifier for parameter declaration", arg->pos);
    }
    out.push_back(arg);
    if (is(Tok::Comma)) ++cur;
  }
  expect(Tok::CloseParen, "')'");
  return out;
}

NodePtr Parser::sequence(bool use_primary) {
  const size_t pos = here();
  std::vector<NodePtr> items{use_primary ? primary() : expression()};
  const bool tuple = is(Tok::Comma);
  while (tuple) {
    ++cur;
    items.push_back(use_primary ? primary() : expression());
    if (!is(Tok::Comma)) break;
  }
  if (!tuple) return items[0];
  NodePtr n = make(K::TupleLit, pos);
  n->items = std::move(items);
  return n;
}

NodePtr Parser::if_expression() {
  NodePtr a = logical("or");
  if (!is_ident("if")) return a;
  const size_t pos = here();
  ++cur;
  NodePtr cond = logical("or");
  if (is_ident("else")) {
    ++cur;
    NodePtr n = make(K::Ternary, pos);
    n->a = cond;
    n->b = a;
    n->c = if_expression();
    return n;
  }
  NodePtr n = make(K::Select, pos);
  n->a = a;
  n->b = cond;
  return n;
}

NodePtr Parser::logical(const char* op) {
  const bool is_or = std::string(op) == "or";
  NodePtr left = is_or ? logical("and") : negation();
  while (is_ident(op)) {
    NodePtr n = make(K::Binary, here(), op);
    ++cur;
    n->a = left;
    n->b = is_or ? logical("and") : negation();
    left = n;
  }
  return left;
}

NodePtr Parser::negation() {
  if (!is_ident("not")) return comparison();
  NodePtr n = make(K::Unary, here(), "not");
  ++cur;
  n->a = negation();
  return n;
}

NodePtr Parser::comparison() {
  NodePtr left = additive();
  while (true) {
    std::string op;
    const size_t pos = here();
    if (is_ident("not") && is_ident("in", 1)) {
      op = "not in";
      cur += 2;
    } else if (is_ident("in") || is(Tok::Comparison)) {
      op = tokens[cur++].value;
    } else {
      break;
    }
    NodePtr n = make(K::Binary, pos, op);
    n->a = left;
    n->b = additive();
    left = n;
  }
  return left;
}

NodePtr Parser::binary(Tok t, NodePtr (Parser::*next)()) {
  NodePtr left = (this->*next)();
  while (is(t)) {
    NodePtr n = make(K::Binary, here(), tokens[cur].value);
    ++cur;
    n->a = left;
    n->b = (this->*next)();
    left = n;
  }
  return left;
}

NodePtr Parser::test() {
  NodePtr operand = filter();
  while (is_ident("is")) {
    ++cur;
    const bool negate = is_ident("not");
    if (negate) ++cur;
    NodePtr t = primary();
    if (t->kind != K::Ident) fail("expected identifier for the test", t->pos);
    if (!supported_test(t->text)) fail("unsupported test 'is " + t->text + "'", t->pos);
    NodePtr n = make(K::Test, t->pos, t->text);
    n->a = operand;
    n->flag = negate;
    operand = n;
  }
  return operand;
}

NodePtr Parser::filter() {
  NodePtr operand = unary_sign();
  while (is(Tok::Pipe)) {
    ++cur;
    NodePtr f = primary();
    if (f->kind != K::Ident) fail("expected identifier for the filter", f->pos);
    if (!supported_filter(f->text)) fail("unsupported filter '| " + f->text + "'", f->pos);
    NodePtr n = make(K::Filter, f->pos, f->text);
    n->a = operand;
    if (is(Tok::OpenParen)) {
      n->flag = true;
      n->items = args(false);
      if (is(Tok::Dot) || is(Tok::OpenSquare) || is(Tok::OpenParen)) {
        fail("unsupported member access on a filter call", here());
      }
    }
    operand = n;
  }
  return operand;
}

NodePtr Parser::unary_sign() {
  if ((is(Tok::Unary) || is(Tok::Additive)) &&
      (tokens[cur].value == "-" || tokens[cur].value == "+")) {
    NodePtr n = make(K::Unary, here(), tokens[cur].value);
    ++cur;
    n->a = unary_sign();
    return n;
  }
  return call_member();
}

NodePtr Parser::call_member() {
  NodePtr m = member(primary());
  return is(Tok::OpenParen) ? call(m) : m;
}

NodePtr Parser::call(NodePtr callee) {
  const size_t pos = here();
  if (callee->kind == K::Ident) {
    called_globals.emplace_back(callee->text, callee->pos);
  } else if (callee->kind == K::Member && !callee->flag && callee->b->kind == K::Ident) {
    if (!supported_method(callee->b->text)) {
      fail("unsupported method '." + callee->b->text + "()'", callee->b->pos);
    }
  } else {
    fail("unsupported call of a computed value", pos);
  }
  NodePtr n = make(K::Call, pos);
  n->a = callee;
  n->items = args(false);
  n = member(n);
  return is(Tok::OpenParen) ? call(n) : n;
}

NodePtr Parser::member_arguments() {
  const size_t pos = here();
  std::vector<NodePtr> parts;
  bool slice = false;
  while (!is(Tok::CloseSquare)) {
    if (cur >= tokens.size()) fail("missing ']'", src.size());
    if (is(Tok::Colon)) {
      parts.push_back(nullptr);
      ++cur;
      slice = true;
    } else {
      parts.push_back(expression());
      if (is(Tok::Colon)) {
        ++cur;
        slice = true;
      }
    }
  }
  if (parts.empty()) fail("expected at least one argument for member/slice expression", pos);
  if (!slice) return parts[0];
  if (parts.size() > 3) fail("expected 0-3 arguments for slice expression", pos);
  NodePtr n = make(K::Slice, pos);
  n->a = parts[0];
  n->b = parts.size() > 1 ? parts[1] : nullptr;
  n->c = parts.size() > 2 ? parts[2] : nullptr;
  return n;
}

NodePtr Parser::member(NodePtr object) {
  while (is(Tok::Dot) || is(Tok::OpenSquare)) {
    const bool computed = is(Tok::OpenSquare);
    NodePtr n = make(K::Member, here());
    ++cur;
    n->a = object;
    n->flag = computed;
    if (computed) {
      n->b = member_arguments();
      expect(Tok::CloseSquare, "']'");
    } else {
      n->b = primary();
      if (n->b->kind != K::Ident && n->b->kind != K::Int) {
        fail("expected identifier or integer following '.'", n->b->pos);
      }
    }
    object = n;
  }
  return object;
}

NodePtr Parser::container(Tok open) {
  const size_t pos = tokens[cur - 1].pos;
  const bool list = open == Tok::OpenSquare;
  NodePtr n = make(list ? K::ArrayLit : K::ObjectLit, pos);
  const Tok close = list ? Tok::CloseSquare : Tok::CloseCurly;
  while (!is(close)) {
    if (cur >= tokens.size()) fail(list ? "missing ']'" : "missing '}'", pos);
    n->items.push_back(expression());
    if (!list) {
      expect(Tok::Colon, "':' between key and value in object literal");
      n->items.push_back(expression());
    }
    if (is(Tok::Comma)) ++cur;
  }
  ++cur;
  return n;
}

NodePtr Parser::primary() {
  if (cur >= tokens.size()) fail("unexpected end of template", src.size());
  const Token& t = tokens[cur++];
  switch (t.type) {
    case Tok::Number: {
      if (t.value.find('.') != std::string::npos) {
        NodePtr n = make(K::Float, t.pos);
        n->fval = std::stod(t.value);
        return n;
      }
      NodePtr n = make(K::Int, t.pos);
      try {
        n->ival = std::stoll(t.value);
      } catch (const std::out_of_range&) {
        fail("integer literal " + t.value + " out of range", t.pos);
      }
      return n;
    }
    case Tok::String: {
      std::string v = t.value;
      while (is(Tok::String)) v += tokens[cur++].value;
      return make(K::Str, t.pos, v);
    }
    case Tok::Ident:
      return make(K::Ident, t.pos, t.value);
    case Tok::OpenParen: {
      NodePtr e = sequence(false);
      expect(Tok::CloseParen, "')'");
      return e;
    }
    case Tok::OpenSquare:
    case Tok::OpenCurly:
      return container(t.type);
    default:
      fail("unexpected token '" + t.value + "'", t.pos);
  }
}

}  // namespace

Body parse(const std::string& source, const std::string& name) {
  std::string src;
  const std::vector<Token> tokens = tokenize(source, name, &src);
  Parser p{tokens, src, name, 0, {}, {}};
  Body body;
  while (p.cur < tokens.size()) {
    NodePtr n = p.any();
    if (n) body.push_back(n);
  }
  for (const auto& [fn, pos] : p.called_globals) {
    if (!supported_global_function(fn) && !p.macros.count(fn)) {
      p.fail("unsupported function '" + fn + "()'", pos);
    }
  }
  return body;
}

}  // namespace rlhf::policy::jinja
