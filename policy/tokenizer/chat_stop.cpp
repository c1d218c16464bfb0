#include "policy/tokenizer/chat_stop.h"

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"

namespace rlhf::policy {

namespace {

// The JSON object in `path`; null when the file does not exist.
nlohmann::json read_json_object(const std::string& path) {
  if (!std::filesystem::exists(path)) return nullptr;
  nlohmann::json j = nlohmann::json::parse(read_file(path), nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw Error(path + ": expected a JSON object");
  return j;
}

void add_id(const nlohmann::json& v, const Tokenizer& tok, const std::string& where,
            std::vector<int>* ids) {
  if (!v.is_number_integer())
    throw Error(where + ": expected an integer token id or a list of them, got " + v.dump());
  const int64_t id = v.get<int64_t>();
  if (id < 0 || id >= tok.vocab_size())
    throw Error(where + ": token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                std::to_string(tok.vocab_size()) + ")");
  ids->push_back(static_cast<int>(id));
}

}  // namespace

int template_end_of_turn(const ChatTemplate& chat_template, const Tokenizer& tok) {
  static const std::string kProbe = "rlhf end-of-turn probe reply";
  const nlohmann::ordered_json probe = {{{"role", "user"}, {"content", "Hello."}},
                                        {{"role", "assistant"}, {"content", kProbe}}};
  std::string text;
  try {
    text = chat_template.render(probe, /*add_generation_prompt=*/false);
  } catch (const Error&) {
    return -1;  // e.g. a template that raises on a conversation without a system turn
  }
  const size_t at = text.rfind(kProbe);
  if (at == std::string::npos) return -1;
  for (int id : tok.encode(text.substr(at + kProbe.size()), /*add_special_tokens=*/false))
    if (tok.is_special(id)) return id;
  return -1;
}

std::vector<int> chat_stop_ids(const std::string& dir, const Tokenizer& tok) {
  std::vector<int> ids;
  const std::string config_path = dir + "/tokenizer_config.json";
  const nlohmann::json config = read_json_object(config_path);
  if (config.is_object() && config.contains("eos_token") && !config["eos_token"].is_null()) {
    const std::string where = config_path + ": field 'eos_token'";
    nlohmann::json v = config["eos_token"];
    if (v.is_object() && v.contains("content")) v = v["content"];
    if (!v.is_string())
      throw Error(where + ": expected a token string or an object with a string \"content\"");
    const int id = tok.piece_to_id(v.get<std::string>());
    if (id < 0) throw Error(where + ": '" + v.get<std::string>() + "' is not a token");
    ids.push_back(id);
  }
  const std::string gen_path = dir + "/generation_config.json";
  const nlohmann::json gen = read_json_object(gen_path);
  if (gen.is_object() && gen.contains("eos_token_id") && !gen["eos_token_id"].is_null()) {
    const std::string where = gen_path + ": field 'eos_token_id'";
    const auto& v = gen["eos_token_id"];
    if (v.is_array())
      for (const auto& e : v) add_id(e, tok, where, &ids);
    else
      add_id(v, tok, where, &ids);
  }
  if (config.is_object() && config.contains("chat_template")) {
    const int id = template_end_of_turn(ChatTemplate::load(config_path), tok);
    if (id >= 0) ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

}  // namespace rlhf::policy
