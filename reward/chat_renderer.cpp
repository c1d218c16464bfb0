#include "reward/chat_renderer.h"

#include <filesystem>
#include <memory>

#include "common/error.h"
#include "policy/tokenizer/chat_template.h"

namespace rlhf::reward {

ChatRenderer chat_renderer_beside(const policy::Tokenizer& tok, const std::string& what) {
  const std::string config_path =
      (std::filesystem::path(tok.path()).parent_path() / "tokenizer_config.json").string();
  if (!std::filesystem::exists(config_path))
    throw Error(what + ": format \"messages\" renders conversations with the chat template of " +
                config_path + ", which does not exist");
  auto chat = std::make_shared<const policy::ChatTemplate>(policy::ChatTemplate::load(config_path));
  return [chat](const nlohmann::ordered_json& messages, bool add_generation_prompt) {
    return chat->render(messages, add_generation_prompt);
  };
}

std::vector<Comparison> read_comparisons_for(const std::string& path, const std::string& format,
                                             const policy::Tokenizer& tok,
                                             const std::string& what) {
  if (format != "messages") return read_comparisons(path, format);
  return read_comparisons(path, format, chat_renderer_beside(tok, what));
}

}  // namespace rlhf::reward
