// The prompt set of the ppo stage (PpoConfig.prompts) and of `rlhf sample`: a JSON-lines file,
// or an annotation database (*.db, *.sqlite: its prompts in id order; a conversation prompt
// (annotation add-tasks with "messages") as the messages line below). One prompt per non-blank
// line:
//   {"prompt": "text"}        encoded as policy::encode_prompt does (BOS first when the tokenizer
//                             has one, then the text's ids);
//   {"prompt_ids": [ids]}     used as given;
//   {"messages": [messages]}  the conversation so far (TRL / OpenRLHF), ending with a user turn:
//                             the chat_template of tokenizer_config.json beside the tokenizer
//                             renders it with add_generation_prompt=true, and the rendering's ids
//                             are the prompt with no BOS added (the template writes its own, as
//                             transformers' apply_chat_template(tokenize=True) does). A set with
//                             messages lines also stops generation at the folder's end-of-turn
//                             ids (policy/tokenizer/chat_stop.h).
// Messages are checked as common/messages.h check_messages says.
//
// Errors: rlhf::Error "<path>:<line>: ..." naming the field and what was expected (not an object,
// no known field, ids that are not integers, a bad message list, a conversation that does not end
// with a user turn, text or messages without a tokenizer, a template render error); "<path>: ..."
// for a file that cannot be opened, holds no prompts, or a tokenizer folder without
// tokenizer_config.json / chat_template (that file named). Thread safety: no shared state.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "policy/tokenizer/tokenizer.h"

namespace rlhf::pipelines {

struct PromptSet {
  std::vector<std::vector<int64_t>> ids;  // one per prompt, in file order
  std::vector<std::string> texts;         // the prompt text; for messages its rendering; "" for ids
  std::vector<nlohmann::ordered_json> messages;  // a conversation prompt's messages, else null
  // Ids that end a response besides the model's eos_id: the chat stop ids when any line is a
  // conversation, else empty.
  std::vector<int64_t> stop_ids;
};

// Reads a prompt set (see above). `tok` is needed for text, messages and databases.
PromptSet read_prompt_set(const std::string& path, const std::optional<policy::Tokenizer>& tok);

}  // namespace rlhf::pipelines
