#include "common/messages.h"

#include "common/error.h"

namespace rlhf {

void check_messages(const nlohmann::ordered_json& messages, const std::string& what) {
  if (!messages.is_array())
    throw Error(what + " must be a list of messages, got " + messages.type_name());
  if (messages.empty()) throw Error(what + " is an empty list (expected messages)");
  for (size_t i = 0; i < messages.size(); ++i) {
    const auto& m = messages[i];
    const std::string at = what + "[" + std::to_string(i) + "]";
    if (!m.is_object())
      throw Error(at + ": expected a message {\"role\", \"content\"}, got " + m.type_name());
    auto role = m.find("role");
    auto content = m.find("content");
    if (role == m.end() || !role->is_string()) throw Error(at + ": expected a string \"role\"");
    const std::string r = role->get<std::string>();
    if (r != "system" && r != "user" && r != "assistant" && r != "tool")
      throw Error(at + ": unknown role \"" + r + "\" (expected system, user, assistant or tool)");
    if (content == m.end() || !content->is_string())
      throw Error(at + ": expected a string \"content\"");
  }
}

std::string conversation_text(const nlohmann::ordered_json& messages) {
  std::string out;
  for (const auto& m : messages) {
    std::string role = m.at("role").get<std::string>();
    if (!role.empty() && role[0] >= 'a' && role[0] <= 'z')
      role[0] = static_cast<char>(role[0] - 32);
    if (!out.empty()) out += "\n\n";
    out += role + ": " + m.at("content").get<std::string>();
  }
  return out;
}

}  // namespace rlhf
