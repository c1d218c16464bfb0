#include "pipelines/ppo_prompts.h"

#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "annotation/sqlite_store.h"
#include "common/error.h"
#include "common/messages.h"
#include "policy/tokenizer/chat_stop.h"
#include "policy/tokenizer/chat_template.h"
#include "policy/tokenizer/prompt_format.h"
#include "reward/comparisons.h"

namespace rlhf::pipelines {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The chat template beside the tokenizer, loaded on the first messages line.
class ChatSide {
 public:
  explicit ChatSide(const policy::Tokenizer& tok)
      : tok_(tok), dir_(std::filesystem::path(tok.path()).parent_path().string()) {}

  std::vector<int64_t> encode(const nlohmann::ordered_json& messages, const std::string& where,
                              std::string* text) {
    if (!chat_) {
      const std::string config = dir_ + "/tokenizer_config.json";
      if (!std::filesystem::exists(config))
        throw Error(where + ": messages prompts are rendered with the chat template of " + config +
                    ", which does not exist");
      chat_ = std::make_unique<policy::ChatTemplate>(policy::ChatTemplate::load(config));
      for (int id : policy::chat_stop_ids(dir_, tok_)) stop_ids_.push_back(id);
    }
    try {
      *text = chat_->render(messages, true);
    } catch (const Error& e) {
      throw Error(where + ": rendering the chat template: " + e.what());
    }
    std::vector<int64_t> ids;
    for (int id : tok_.encode(*text)) ids.push_back(id);
    return ids;
  }
  const std::vector<int64_t>& stop_ids() const { return stop_ids_; }

 private:
  const policy::Tokenizer& tok_;
  std::string dir_;
  std::unique_ptr<policy::ChatTemplate> chat_;
  std::vector<int64_t> stop_ids_;
};

// A conversation prompt into `out`.
void add_messages_prompt(const nlohmann::ordered_json& m, const std::string& where,
                         const std::optional<policy::Tokenizer>& tok,
                         std::unique_ptr<ChatSide>* chat, PromptSet* out) {
  check_messages(m, where + ": field \"messages\"");
  if (m.back()["role"] != "user")
    throw Error(where + ": field \"messages\" must end with a user turn (the prompt), got " +
                m.back()["role"].get<std::string>());
  if (!tok) throw Error(where + ": messages prompts need PpoConfig.tokenizer");
  if (!*chat) *chat = std::make_unique<ChatSide>(*tok);
  std::string text;
  out->ids.push_back((*chat)->encode(m, where, &text));
  out->texts.push_back(text);
  out->messages.push_back(m);
}

// The prompts of an annotation database: its texts, its conversation prompts as conversations.
PromptSet database_prompts(const std::string& path, const std::optional<policy::Tokenizer>& tok) {
  if (!tok) throw Error(path + ": prompts from an annotation database need PpoConfig.tokenizer");
  annotation::StoreOptions so;
  so.create = false;
  annotation::Store store(path, so);
  PromptSet out;
  std::unique_ptr<ChatSide> chat;
  int64_t n = 0;
  for (const auto& [text, messages] : store.prompts_with_messages()) {
    ++n;
    if (!messages.empty()) {
      const std::string where = path + ": prompt " + std::to_string(n);
      add_messages_prompt(nlohmann::ordered_json::parse(messages), where, tok, &chat, &out);
      continue;
    }
    out.ids.push_back(policy::encode_prompt(*tok, text));
    out.texts.push_back(text);
    out.messages.emplace_back();
  }
  if (out.ids.empty()) throw Error(path + ": the annotation database has no prompts");
  if (chat) out.stop_ids = chat->stop_ids();
  return out;
}

// One non-blank line of a JSON-lines prompt set into `out`.
void read_prompt_line(const std::string& line, const std::string& where,
                      const std::optional<policy::Tokenizer>& tok, std::unique_ptr<ChatSide>* chat,
                      PromptSet* out) {
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw Error(where + ": expected a JSON object");
  if (j.contains("prompt_ids")) {
    if (!j["prompt_ids"].is_array()) throw Error(where + ": prompt_ids must be a list of ids");
    std::vector<int64_t> ids;
    for (auto& v : j["prompt_ids"]) {
      if (!v.is_number_integer()) throw Error(where + ": prompt_ids must be integers");
      ids.push_back(v.get<int64_t>());
    }
    out->ids.push_back(ids);
    out->texts.push_back("");
    out->messages.emplace_back();
  } else if (j.contains("prompt") && j["prompt"].is_string()) {
    if (!tok) throw Error(where + ": text prompts need PpoConfig.tokenizer (or give prompt_ids)");
    out->ids.push_back(policy::encode_prompt(*tok, j["prompt"].get<std::string>()));
    out->texts.push_back(j["prompt"].get<std::string>());
    out->messages.emplace_back();
  } else if (j.contains("messages")) {
    add_messages_prompt(j["messages"], where, tok, chat, out);
  } else {
    throw Error(where +
                ": expected a field \"prompt\" (text), \"prompt_ids\" (list of ids) or "
                "\"messages\" (list of {\"role\", \"content\"})");
  }
}

}  // namespace

PromptSet read_prompt_set(const std::string& path, const std::optional<policy::Tokenizer>& tok) {
  if (ends_with(path, ".db") || ends_with(path, ".sqlite")) return database_prompts(path, tok);
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot open the prompts file");
  PromptSet out;
  std::unique_ptr<ChatSide> chat;
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    read_prompt_line(line, path + ":" + std::to_string(n), tok, &chat, &out);
  }
  if (out.ids.empty()) throw Error(path + ": no prompts");
  if (chat) out.stop_ids = chat->stop_ids();
  return out;
}

}  // namespace rlhf::pipelines
