#include "policy/training/sft_messages.h"

#include <algorithm>
#include <filesystem>

#include "common/error.h"
#include "common/files.h"

namespace rlhf::policy {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

bool is_prefix(const std::string& prefix, const std::string& whole) {
  return prefix.size() <= whole.size() && whole.compare(0, prefix.size(), prefix) == 0;
}

std::vector<int64_t> encode_text(const Tokenizer& tok, const std::string& text) {
  std::vector<int64_t> ids;
  for (int id : tok.encode(text, /*add_special_tokens=*/false)) ids.push_back(id);
  return ids;
}

// The number of tokens of full[:chars]; they must be the first tokens of `full_ids`.
size_t token_boundary(const Tokenizer& tok, const std::string& full,
                      const std::vector<int64_t>& full_ids, size_t chars, size_t message) {
  const std::vector<int64_t> ids = encode_text(tok, full.substr(0, chars));
  if (ids.size() > full_ids.size() || !std::equal(ids.begin(), ids.end(), full_ids.begin()))
    throw Error("assistant message " + std::to_string(message) +
                ": the tokens of the rendering up to its span are not a prefix of the whole "
                "rendering's tokens (the tokenizer merges across the turn boundary)");
  return ids.size();
}

// The renderings that bound assistant message i's span must begin the whole rendering, in order.
void check_prefixes(const std::string& full, const std::string& start, const std::string& end,
                    size_t i) {
  const std::string before = "messages[:" + std::to_string(i) + "]";
  const std::string upto = "messages[:" + std::to_string(i + 1) + "]";
  const std::string whole = "the whole conversation's rendering";
  std::string why;
  if (!is_prefix(start, full))
    why = "the rendering of " + before + " with the generation prompt is not a prefix of " + whole;
  else if (!is_prefix(end, full))
    why = "the rendering of " + upto + " is not a prefix of " + whole;
  else if (start.size() > end.size())
    why = "the rendering of " + before + " with the generation prompt is not a prefix of that of " +
          upto;
  if (why.empty()) return;
  throw Error("assistant message " + std::to_string(i) +
              ": the chat template does not render prefix-consistently: " + why +
              "; such templates are not supported for SFT messages data");
}

ojson first_messages(const ojson& messages, size_t n) {
  ojson out = ojson::array();
  for (size_t i = 0; i < n; ++i) out.push_back(messages[i]);
  return out;
}

}  // namespace

void check_messages(const ojson& messages) {
  if (!messages.is_array() || messages.empty())
    throw Error("expected \"messages\" to be a non-empty list of {\"role\", \"content\"} objects");
  bool has_assistant = false;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ojson& m = messages[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object() || !m.contains("role") || !m.contains("content") || !m["role"].is_string() ||
        !m["content"].is_string())
      throw Error(where + ": expected an object with string fields \"role\" and \"content\"");
    const std::string role = m["role"].get<std::string>();
    if (role != "system" && role != "user" && role != "assistant")
      throw Error(where + ": unknown role \"" + role +
                  "\" (expected \"system\", \"user\" or \"assistant\")");
    has_assistant = has_assistant || role == "assistant";
  }
  if (!has_assistant)
    throw Error("expected at least one \"assistant\" message (the loss is on assistant turns)");
}

ConversationTokens tokenize_conversation(const ojson& messages, const ChatTemplate& chat_template,
                                         const Tokenizer& tok) {
  const std::string full = chat_template.render(messages, /*add_generation_prompt=*/false);
  ConversationTokens out;
  out.ids = encode_text(tok, full);
  out.target.assign(out.ids.size(), 0);
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i]["role"].get<std::string>() != "assistant") continue;
    const std::string start = chat_template.render(first_messages(messages, i), true);
    const std::string end = chat_template.render(first_messages(messages, i + 1), false);
    check_prefixes(full, start, end, i);
    const size_t s = token_boundary(tok, full, out.ids, start.size(), i);
    const size_t e = token_boundary(tok, full, out.ids, end.size(), i);
    for (size_t t = s; t < e; ++t) out.target[t] = 1;
  }
  return out;
}

ChatTemplate chat_template_of(const Tokenizer& tok) {
  const std::string path = (fs::path(tok.path()).parent_path() / "tokenizer_config.json").string();
  if (!file_exists(path))
    throw Error(path +
                ": missing; SFT messages data is rendered with the chat template of the "
                "tokenizer's tokenizer_config.json");
  try {
    return ChatTemplate::load(path);
  } catch (const Error& e) {
    throw Error(std::string("SFT messages data needs the tokenizer's chat template: ") + e.what());
  }
}

}  // namespace rlhf::policy
