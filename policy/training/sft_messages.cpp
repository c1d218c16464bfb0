#include "policy/training/sft_messages.h"

#include <algorithm>
#include <filesystem>

#include "common/error.h"
#include "common/files.h"
#include "common/messages.h"
#include "policy/tokenizer/chat_stop.h"

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

Error refused(size_t message, const std::string& why) {
  return Error("assistant message " + std::to_string(message) + ": " + why +
               "; the chat template cannot mark this reply for SFT");
}

// The number of tokens of full[:chars]; they must be the first tokens of `full_ids`.
size_t token_boundary(const Tokenizer& tok, const std::string& full,
                      const std::vector<int64_t>& full_ids, size_t chars, size_t message) {
  const std::vector<int64_t> ids = encode_text(tok, full.substr(0, chars));
  if (ids.size() > full_ids.size() || !std::equal(ids.begin(), ids.end(), full_ids.begin()))
    throw refused(message,
                  "the tokens of the rendering up to its reply are not a prefix of the whole "
                  "rendering's tokens (the tokenizer merges across the turn boundary)");
  return ids.size();
}

ojson first_messages(const ojson& messages, size_t n) {
  ojson out = ojson::array();
  for (size_t i = 0; i < n; ++i) out.push_back(messages[i]);
  return out;
}

std::string ids_text(const std::vector<int>& ids) {
  std::string s;
  for (int id : ids) s += (s.empty() ? "" : " ") + std::to_string(id);
  return s;
}

}  // namespace

void check_sft_messages(const ojson& messages) {
  check_messages(messages, "\"messages\"");
  for (const auto& m : messages)
    if (m["role"] == "assistant") return;
  throw Error("expected at least one \"assistant\" message (the loss is on assistant turns)");
}

ConversationTokens tokenize_conversation(const ojson& messages, const ChatFormat& format,
                                         const Tokenizer& tok) {
  const ChatTemplate& tmpl = format.chat_template;
  const std::string full = tmpl.render(messages, /*add_generation_prompt=*/false);
  ConversationTokens out;
  out.ids = encode_text(tok, full);
  out.target.assign(out.ids.size(), 0);
  size_t previous_end = 0;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i]["role"].get<std::string>() != "assistant") continue;
    const std::string start = tmpl.render(first_messages(messages, i), true);
    if (!is_prefix(start, full))
      throw refused(i, "the rendering of messages[:" + std::to_string(i) +
                           "] with the generation prompt is not a prefix of the whole "
                           "conversation's rendering");
    const size_t s = token_boundary(tok, full, out.ids, start.size(), i);
    if (s < previous_end)
      throw refused(i, "its reply starts before the end-of-turn token of the previous one");
    size_t e = s;
    while (e < out.ids.size() && !std::binary_search(format.end_ids.begin(), format.end_ids.end(),
                                                     static_cast<int>(out.ids[e])))
      ++e;
    if (e == out.ids.size())
      throw refused(i, "no end-of-turn token (ids " + ids_text(format.end_ids) +
                           ") follows its reply in the rendering");
    previous_end = e + 1;
    for (size_t t = s; t < previous_end; ++t) out.target[t] = 1;
  }
  return out;
}

ChatFormat chat_format_of(const Tokenizer& tok) {
  const fs::path dir = fs::path(tok.path()).parent_path();
  const std::string path = (dir / "tokenizer_config.json").string();
  if (!file_exists(path))
    throw Error(path +
                ": missing; SFT messages data is rendered with the chat template of the "
                "tokenizer's tokenizer_config.json");
  try {
    ChatFormat f{ChatTemplate::load(path), chat_stop_ids(dir.string(), tok)};
    if (tok.eos_id() >= 0) f.end_ids.push_back(tok.eos_id());
    std::sort(f.end_ids.begin(), f.end_ids.end());
    f.end_ids.erase(std::unique(f.end_ids.begin(), f.end_ids.end()), f.end_ids.end());
    return f;
  } catch (const Error& e) {
    throw Error(std::string("SFT messages data needs the tokenizer's chat template: ") + e.what());
  }
}

}  // namespace rlhf::policy
