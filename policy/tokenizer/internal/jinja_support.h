// What the chat-template interpreter implements, by name: the parser refuses the rest when a
// template loads. Internal: not part of the public API.
#pragma once

#include <string>

namespace rlhf::policy::jinja {

bool supported_filter(const std::string& name);           // `x | name`
bool supported_test(const std::string& name);             // `x is name`
bool supported_method(const std::string& name);           // `x.name(...)`
bool supported_global_function(const std::string& name);  // `name(...)`

}  // namespace rlhf::policy::jinja
