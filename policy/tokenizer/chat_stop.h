// The token ids that end an assistant turn of a chat model, for generation from chat-template
// prompts (PPO prompts in the messages format): the union of
//   - tokenizer_config.json's eos_token (a string or {"content": string}): chat models name their
//     end-of-turn token there (Qwen2.5 / Qwen3 instruct: <|im_end|>; Llama 3.x instruct:
//     <|eot_id|>), and
//   - generation_config.json's eos_token_id (an integer or a list of integers) when the folder
//     has one: what transformers' generate() stops at (Llama 3.1 instruct: <|end_of_text|>,
//     <|eom_id|>, <|eot_id|>), and
//   - the chat template's own end of turn (template_end_of_turn below), when tokenizer_config.json
//     has a `chat_template`: a folder without generation_config.json whose eos_token is the base
//     model's (Llama 3: <|end_of_text|>) still stops where its template ends a reply (<|eot_id|>).
// The model's own eos_id stops generation anyway; these ids come on top of it.
//
// Errors: rlhf::Error naming the file and field for a file that is not JSON, a field of the wrong
// type, a token that is not one token of `tok`, or an id outside [0, tok.vocab_size()).
// Thread safety: no state; may be called from any thread.
#pragma once

#include <string>
#include <vector>

#include "policy/tokenizer/chat_template.h"
#include "policy/tokenizer/tokenizer.h"

namespace rlhf::policy {

// The end-of-turn ids of the tokenizer folder `dir` (see above), sorted, without duplicates;
// empty when neither file names one.
std::vector<int> chat_stop_ids(const std::string& dir, const Tokenizer& tok);

// The token a chat template writes right after an assistant's reply: the template renders
// [{"role": "user"}, {"role": "assistant"}] with a probe reply, and the first special token
// (Tokenizer::is_special) of the text after the reply is the answer (ChatML: <|im_end|>; Llama 3:
// <|eot_id|>; Gemma: <end_of_turn>; Llama 2 / Mistral: </s>). -1 when the template writes no
// special token there, leaves the probe reply out, or fails to render the probe conversation.
int template_end_of_turn(const ChatTemplate& chat_template, const Tokenizer& tok);

}  // namespace rlhf::policy
