// The chat template that renders conversation comparisons (format "messages",
// reward/comparisons.h) for a reward model: the `chat_template` of the tokenizer_config.json in
// the tokenizer's folder (a training run's `tokenizer` / init_from folder, or a saved reward model,
// which keeps a copy of that file beside its tokenizer.json).
//
// Errors: rlhf::Error "<what>: ..." naming the tokenizer_config.json when it does not exist, and
// ChatTemplate::load's errors (no chat_template, a construct it does not implement) naming it too.
// Thread safety: the returned renderer holds an immutable template and may be called from any
// number of threads at once.
#pragma once

#include <string>

#include "policy/tokenizer/tokenizer.h"
#include "reward/comparisons.h"

namespace rlhf::reward {

// The renderer of the chat template beside `tok` (see above); `what` prefixes the error, e.g.
// "reward config".
ChatRenderer chat_renderer_beside(const policy::Tokenizer& tok, const std::string& what);

// read_comparisons(path, format), with the chat template beside `tok` when format is "messages"
// (loaded only then).
std::vector<Comparison> read_comparisons_for(const std::string& path, const std::string& format,
                                             const policy::Tokenizer& tok, const std::string& what);

}  // namespace rlhf::reward
