// The token ids that end an assistant turn of a chat model, for generation from chat-template
// prompts (PPO prompts in the messages format): the union of
//   - tokenizer_config.json's eos_token (a string or {"content": string}): chat models name their
//     end-of-turn token there (Qwen2.5 / Qwen3 instruct: <|im_end|>; Llama 3.x instruct:
//     <|eot_id|>), and
//   - generation_config.json's eos_token_id (an integer or a list of integers) when the folder
//     has one: what transformers' generate() stops at (Llama 3.1 instruct: <|end_of_text|>,
//     <|eom_id|>, <|eot_id|>).
// The model's own eos_id stops generation anyway; these ids come on top of it.
//
// Errors: rlhf::Error naming the file and field for a file that is not JSON, a field of the wrong
// type, a token that is not one token of `tok`, or an id outside [0, tok.vocab_size()).
// Thread safety: no state; may be called from any thread.
#pragma once

#include <string>
#include <vector>

#include "policy/tokenizer/tokenizer.h"

namespace rlhf::policy {

// The end-of-turn ids of the tokenizer folder `dir` (see above), sorted, without duplicates;
// empty when neither file names one.
std::vector<int> chat_stop_ids(const std::string& dir, const Tokenizer& tok);

}  // namespace rlhf::policy
