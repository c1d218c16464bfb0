// How a (prompt, response) pair becomes token ids — one convention shared by SFT, sampling,
// the reward model and PPO, so the student is scored on exactly what it was trained to produce:
//
//   prompt ids   = [bos] + encode(prompt)          (bos left out when the tokenizer has none)
//   response ids = encode(response) + [eos]
//
// The two parts are encoded separately (SentencePiece adds its word-boundary marker at the start
// of each), so a generated response decodes back to the text the reward model reads.
//
// Pure functions over a Tokenizer: they throw what Tokenizer::encode / decode throw (rlhf::Error,
// policy/tokenizer/tokenizer.h) and share its thread safety.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "policy/tokenizer/tokenizer.h"

namespace rlhf::policy {

inline std::vector<int64_t> encode_prompt(const Tokenizer& tok, const std::string& prompt) {
  std::vector<int64_t> ids;
  if (tok.bos_id() >= 0) ids.push_back(tok.bos_id());
  for (int id : tok.encode(prompt)) ids.push_back(id);
  return ids;
}

inline std::vector<int64_t> encode_response(const Tokenizer& tok, const std::string& response,
                                            bool add_eos = true) {
  std::vector<int64_t> ids;
  for (int id : tok.encode(response)) ids.push_back(id);
  if (add_eos && tok.eos_id() >= 0) ids.push_back(tok.eos_id());
  return ids;
}

// Shortens prompt ids to at most max_tokens (>= 1) by dropping tokens from the left (the end of
// a prompt matters most), keeping a leading bos_id: [bos] + the last max_tokens - 1 tokens.
// Prompts without a leading BOS (or bos_id < 0) keep their last max_tokens tokens.
inline std::vector<int64_t> truncate_prompt(std::vector<int64_t> ids, int64_t max_tokens,
                                            int64_t bos_id) {
  if (max_tokens < 1 || static_cast<int64_t>(ids.size()) <= max_tokens) return ids;
  const bool keep_bos = bos_id >= 0 && ids.front() == bos_id;
  const int64_t tail = keep_bos ? max_tokens - 1 : max_tokens;
  ids.erase(ids.begin() + (keep_bos ? 1 : 0), ids.end() - tail);
  return ids;
}

// Whether a generated id has a token: a model's embedding may have rows past the tokenizer's
// vocabulary (Qwen2.5: 151,936 rows for 151,665 ids), and Hugging Face's decode skips such ids.
inline bool has_token(const Tokenizer& tok, int64_t id) { return id >= 0 && id < tok.vocab_size(); }

// Decodes generated response ids (EOS and anything after it dropped, pads and ids without a
// token skipped).
inline std::string decode_response(const Tokenizer& tok, const std::vector<int64_t>& ids) {
  std::vector<int> out;
  for (int64_t id : ids) {
    if (id == tok.eos_id()) break;
    if (id == tok.pad_id() || id == tok.bos_id() || !has_token(tok, id)) continue;
    out.push_back(static_cast<int>(id));
  }
  return tok.decode(out);
}

// A generated reply's text: ids up to (not including) the first `eos_id` or stop id (a chat
// template's end of turn), ids without a token skipped; BOS / EOS / pad skipped as decode does.
inline std::string decode_reply(const Tokenizer& tok, const std::vector<int64_t>& ids,
                                int64_t eos_id, const std::vector<int64_t>& stop_ids) {
  std::vector<int> kept;
  for (int64_t id : ids) {
    if (id == eos_id || std::find(stop_ids.begin(), stop_ids.end(), id) != stop_ids.end()) break;
    if (has_token(tok, id)) kept.push_back(static_cast<int>(id));
  }
  return tok.decode(kept);
}

}  // namespace rlhf::policy
