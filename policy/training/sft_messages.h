// SFT on conversations: JSON lines {"messages": [{"role", "content"}, ...]} (the format of TRL's
// SFTTrainer and OpenRLHF), rendered with the model's chat template, the loss on the assistant
// turns only.
//
// Rules of a messages line:
//   - "messages": a conversation as common/messages.h checks it (roles system, user, assistant,
//     tool; string content; other keys of a message go to the template as they are); other keys
//     of the line are ignored. At least one message is an assistant's.
//   - ids = Tokenizer::encode(template.render(messages, add_generation_prompt = false),
//     add_special_tokens = false): exactly the tokens of the rendering, as transformers'
//     apply_chat_template(tokenize=True); no BOS / EOS of our own (the template writes its own).
//   - Assistant spans. For assistant message i (0-based) the span starts after the rendering of
//     messages[:i] with add_generation_prompt = true (the role header the generation prompt
//     writes is not in it), which must be a prefix of the whole rendering and whose tokens must be
//     a prefix of the whole rendering's tokens. It ends with the first end-of-turn token after
//     that start (ChatFormat::end_ids: ChatML <|im_end|>, Llama 3 <|eot_id|>), included: the
//     reply and the token that ends it, what the model must learn to write before generation
//     stops there. Whatever the template writes around a reply belongs to it as rendered in the
//     whole conversation (Qwen3's empty <think></think> block of the last turn is a target; the
//     "\n" after ChatML's <|im_end|> and Llama 3's trailing assistant header are not). The span
//     must end before the next assistant span starts. A template that breaks a rule is refused,
//     naming the assistant message and the rule.
//
// Errors: rlhf::Error saying what was expected; callers prefix FILE:LINE.
// Thread safety: pure functions over an immutable ChatTemplate and Tokenizer (Tokenizer's rules).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "policy/tokenizer/chat_template.h"
#include "policy/tokenizer/tokenizer.h"

namespace rlhf::policy {

// One rendered conversation: ids and, per token, whether it is a training target (1: an
// assistant span's token).
struct ConversationTokens {
  std::vector<int64_t> ids;
  std::vector<uint8_t> target;
};

// How conversations of one tokenizer are rendered: its chat template and the ids that end an
// assistant turn (policy/tokenizer/chat_stop.h chat_stop_ids of its folder: the template's own
// end of turn, eos_token, generation_config.json's eos_token_id; the tokenizer's EOS too).
struct ChatFormat {
  ChatTemplate chat_template;
  std::vector<int> end_ids;  // sorted
};

// Checks `messages` against the rules above; throws rlhf::Error naming the message index and
// what was expected.
void check_sft_messages(const nlohmann::ordered_json& messages);

// Renders and tokenises a checked conversation and marks its assistant spans (the rules above).
ConversationTokens tokenize_conversation(const nlohmann::ordered_json& messages,
                                         const ChatFormat& format, const Tokenizer& tok);

// The chat format of tokenizer `tok`: tokenizer_config.json (and generation_config.json) in the
// folder of tok.path(). Throws rlhf::Error naming the file when it is missing, has no
// "chat_template", or no end-of-turn id can be found.
ChatFormat chat_format_of(const Tokenizer& tok);

}  // namespace rlhf::policy
