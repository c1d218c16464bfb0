// Lexer of the chat-template interpreter: @huggingface/jinja's preprocessing (one trailing newline
// dropped, lstrip_blocks, trim_blocks, {% generation %} tags removed) and tokenizer, ported step
// by step. Internal: not part of the public API.
#pragma once

#include <string>
#include <vector>

namespace rlhf::policy::jinja {

enum class Tok {
  Text,
  Number,
  String,
  Ident,
  Equals,
  OpenParen,
  CloseParen,
  OpenStatement,
  CloseStatement,
  OpenExpression,
  CloseExpression,
  OpenSquare,
  CloseSquare,
  OpenCurly,
  CloseCurly,
  Comma,
  Dot,
  Colon,
  Pipe,
  Additive,
  Multiplicative,
  Power,
  Comparison,
  Unary,
  Comment,
};

struct Token {
  Tok type;
  std::string value;
  size_t pos = 0;  // byte offset in the preprocessed source
};

// The source as the lexer sees it (trim_blocks and lstrip_blocks on, as transformers renders).
std::string preprocess(std::string source);

// Tokens of preprocess(source), which is stored in *preprocessed (positions refer to it).
// Throws rlhf::Error on a lexical error, naming `name` and the position.
std::vector<Token> tokenize(const std::string& source, const std::string& name,
                            std::string* preprocessed);

// "NAME line L col C near '...'" for a position in the preprocessed source.
std::string where(const std::string& name, const std::string& src, size_t pos);

}  // namespace rlhf::policy::jinja
