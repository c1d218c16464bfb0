// The conversation format people write for TRL and OpenRLHF: a JSON list of messages
// {"role": ..., "content": ...}. One checker for every reader (SFT data, preference pairs, prompt
// sets, annotation tasks), so a file accepted by one stage is accepted by the next.
//
// Rules: a non-empty list; each message an object with a string "role", one of "system", "user",
// "assistant" or "tool", and a string "content". Other keys of a message (e.g. "name",
// "reasoning_content") are kept and passed to the chat template as they are.
//
// Errors: rlhf::Error "<what> ..." / "<what>[i]: ..." saying what was expected and what was found.
// Thread safety: pure functions.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace rlhf {

// Throws rlhf::Error unless `messages` follows the rules above; `what` names the field, e.g.
// "data.jsonl:3: field \"messages\"".
void check_messages(const nlohmann::ordered_json& messages, const std::string& what);

// The conversation as a person reads it, without template markup: each message as
// "<Role>: <content>" (System, User, Assistant, Tool), separated by a blank line. What annotators
// see of a conversation prompt.
std::string conversation_text(const nlohmann::ordered_json& messages);

}  // namespace rlhf
