// Interpreter of the chat-template syntax tree (jinja_ast.h): @huggingface/jinja's runtime.ts
// semantics (scopes, loop variables, operators, filters, tests, string methods, globals
// raise_exception / range / strftime_now / namespace). Internal: not part of the public API.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "policy/tokenizer/internal/jinja_ast.h"
#include "policy/tokenizer/internal/jinja_value.h"

namespace rlhf::policy::jinja {

// Renders `program` with the template variables `vars` (set in order, after the globals).
// Throws rlhf::Error on a render error (raise_exception's message, a type error, ...), naming
// `name`.
std::string render(const Body& program, const std::vector<std::pair<std::string, Value>>& vars,
                   const std::string& name);

}  // namespace rlhf::policy::jinja
