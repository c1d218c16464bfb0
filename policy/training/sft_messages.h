// SFT on conversations: JSON lines {"messages": [{"role", "content"}, ...]} (the format of TRL's
// SFTTrainer and OpenRLHF), rendered with the model's chat template, the loss on the assistant
// turns only.
//
// Rules of a messages line:
//   - "messages": a non-empty list of objects, each with "role" one of "system", "user",
//     "assistant" and "content" a string; other keys of a message go to the template as they are;
//     other keys of the line are ignored. At least one message is an assistant's.
//   - ids = Tokenizer::encode(template.render(messages, add_generation_prompt = false),
//     add_special_tokens = false): exactly the tokens of the rendering, as transformers'
//     apply_chat_template(tokenize=True); no BOS / EOS of our own (the template writes its own).
//   - Assistant spans. For assistant message i (0-based): start = the rendering of messages[:i]
//     with add_generation_prompt = true, end = the rendering of messages[:i+1] without it. The
//     span is the text between the two: the reply and what the template writes after it up to the
//     next message (ChatML: "reply<|im_end|>\n"); the role header the generation prompt writes is
//     not in it. Both renderings must be prefixes of the whole rendering (start no longer than
//     end), and the tokens of each such text prefix must be a prefix of the whole rendering's
//     tokens; a template or tokenizer that breaks either (e.g. Qwen3's, which drops the reasoning
//     of earlier turns; Llama 3's, which writes the assistant header after every conversation) is
//     refused, naming the assistant message. Targets: the tokens of the spans.
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

// Checks `messages` against the rules above; throws rlhf::Error naming the message index and
// what was expected.
void check_messages(const nlohmann::ordered_json& messages);

// Renders and tokenises a checked conversation and marks its assistant spans (the rules above).
ConversationTokens tokenize_conversation(const nlohmann::ordered_json& messages,
                                         const ChatTemplate& chat_template, const Tokenizer& tok);

// The chat template of tokenizer `tok`: tokenizer_config.json in the folder of tok.path().
// Throws rlhf::Error naming that file when it is missing or has no "chat_template".
ChatTemplate chat_template_of(const Tokenizer& tok);

}  // namespace rlhf::policy
