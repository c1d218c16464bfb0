// Syntax tree, lexer and parser of the chat-template interpreter (chat_template.h). The lexer and
// the parser follow @huggingface/jinja 0.5.x step by step (its preprocessing with trim_blocks and
// lstrip_blocks, its whitespace control, its operator precedence), so that a template parses here
// as it does there. Constructs the interpreter does not implement are refused by parse(), with
// the construct and its position. Internal: not part of the public API.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace rlhf::policy::jinja {

struct Node;
using NodePtr = std::shared_ptr<Node>;
using Body = std::vector<NodePtr>;

struct Node {
  enum class Kind {
    // statements
    Text,
    Output,
    If,
    For,
    Set,
    Macro,
    Break,
    Continue,
    // expressions
    Int,
    Float,
    Str,
    Ident,
    ArrayLit,
    TupleLit,
    ObjectLit,
    Member,
    Slice,
    Call,
    KwArg,
    Binary,
    Unary,
    Filter,
    Test,
    Select,
    Ternary,
  };
  Kind kind;
  size_t pos = 0;    // byte offset in the preprocessed template source
  std::string text;  // Text, Str, Ident, operator, filter / test / keyword name, Macro name
  long long ival = 0;
  double fval = 0;
  bool flag = false;  // Member: computed; Test: negated; Filter: has a call
  NodePtr a, b, c;    // operands (e.g. Member: object, property; Ternary: cond, then, else)
  std::vector<NodePtr> items;  // list / tuple / object (key, value pairs) elements, call args
  Body body, alt;              // If / For / Set / Macro bodies; alt: else / elif branch
};

// Parses `source` (a chat template) into statements. `name` is used in error messages.
// Throws rlhf::Error naming the unsupported construct or the syntax error, and its position.
Body parse(const std::string& source, const std::string& name);

}  // namespace rlhf::policy::jinja
