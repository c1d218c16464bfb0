// Pairwise comparisons: the training data of the reward model.
//
// Sources: the annotation export's pairs JSONL ({"schema_version","prompt","chosen","rejected",
// "task_id","annotator"}), Anthropic HH-RLHF JSONL ({"chosen","rejected"} whole dialogues),
// conversations as TRL / OpenRLHF write them (format "messages", rendered by a chat template the
// caller supplies: see read_messages_jsonl), and rankings (ordered groups of answers with ties)
// expanded into every ordered pair across groups. Files may be gzip-compressed (detected from the
// content).
//
// Torch-free on purpose: this file is its own library (rlhf_comparisons) that both rlhf_reward and
// rlhf_annotation link, so the HH splitter and rankings -> pairs exist once. The annotation
// module may include this header; nothing in reward/ may include an annotation header.
//
// Errors: rlhf::Error naming the file and line (or the format), as each function says; files are
// read through common/files.h (a missing or damaged file names the path). Thread safety: the
// functions keep no state and may be called from any thread at once.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/messages.h"  // check_messages: the conversation format

namespace rlhf::reward {

// One comparison: `chosen` was preferred over `rejected` as answers to `prompt`.
struct Comparison {
  std::string prompt;
  std::string chosen;
  std::string rejected;
  std::string group;  // ranking group: pairs of one ranking share it (task_id, else the prompt)
  int64_t line = 0;   // 1-based source line (0 when not from a file)
};

// A ranking of answers to one prompt: tiers[0] is best; answers within a tier are tied.
struct Ranking {
  std::string prompt;
  std::string group;
  std::vector<std::vector<std::string>> tiers;
};

// Every ordered pair (better tier, worse tier); tied answers produce no pair, nor does the same
// text on both sides. A ranking of K distinct answers in K distinct tiers yields K(K-1)/2
// comparisons. Order: by the better answer's tier, then the worse one's, then position in tier.
// `group` of each comparison is ranking.group (the prompt when that is empty).
std::vector<Comparison> ranking_to_comparisons(const Ranking& ranking);

// Reads the pairs JSONL export. Blank lines are skipped; a line that is not a JSON object with
// string "prompt"/"chosen"/"rejected" fields (or with an unsupported schema_version) throws
// rlhf::Error "<path>:<line>: ...". Pairs with chosen == rejected (ties) are dropped.
std::vector<Comparison> read_pairs_jsonl(const std::string& path);

// Reads HH-RLHF JSONL {"chosen","rejected"}: each side is a whole dialogue, split with
// split_hh_dialogues. Lines that cannot be split, or whose two answers are equal, are left out
// and counted in *skipped (when given). A line that is not a JSON object with string
// "chosen"/"rejected" fields throws rlhf::Error "<path>:<line>: ...".
std::vector<Comparison> read_hh_jsonl(const std::string& path, int64_t* skipped = nullptr);

// Splits an HH pair of dialogues into (prompt, chosen answer, rejected answer). Both dialogues
// must have their final "\n\nAssistant:" at the same offset with identical text before it;
// the prompt is that shared text including the marker, the answers are the final assistant
// turns with leading/trailing spaces and newlines removed. Returns false (outputs untouched)
// when the dialogues do not have that shape (e.g. they diverge in an earlier turn).
bool split_hh_dialogues(const std::string& chosen_dialogue, const std::string& rejected_dialogue,
                        std::string* prompt, std::string* chosen, std::string* rejected);

// Renders a conversation (a JSON array of {"role", "content"} objects) as the model sees it, e.g.
// policy::ChatTemplate::render; add_generation_prompt opens the assistant turn that follows.
// May throw rlhf::Error (read_messages_jsonl adds the file and line).
using ChatRenderer =
    std::function<std::string(const nlohmann::ordered_json& messages, bool add_generation_prompt)>;

// Reads conversation pairs JSONL, one of two shapes per line:
//   {"prompt": [messages], "chosen": [messages], "rejected": [messages]}: chosen / rejected are the
//     assistant continuation(s) of the prompt (each starts with an assistant turn);
//   {"chosen": [messages], "rejected": [messages]}: two whole conversations; the prompt is their
//     longest common prefix of equal messages, which must be followed by an assistant turn on
//     both sides.
// A message is an object with "role" one of "system" / "user" / "assistant" / "tool" and string
// "content" (other keys pass through to the template). Comparison.prompt is
// render(prompt, true); each answer is render(prompt + answer messages, false) with that prompt
// rendering removed from its front (it must be a prefix: a template that is not prefix-consistent
// is refused). Lines whose two answers render equal (ties) are dropped; blank lines are skipped.
// Throws rlhf::Error "<path>:<line>: ..." naming the field and what was expected for anything
// else (not an object, wrong types, unknown role, empty list, no shared prefix, a prefix not
// followed by an assistant turn, a render error).
std::vector<Comparison> read_messages_jsonl(const std::string& path, const ChatRenderer& render);

// Dispatches on format: "pairs", "hh" or "messages" (which needs `render`; throws when it is
// empty); throws naming the format otherwise.
std::vector<Comparison> read_comparisons(const std::string& path, const std::string& format,
                                         const ChatRenderer& render = nullptr);

// Deterministic split by group (all pairs of one ranking stay on one side): about `fraction`
// of the groups go to heldout. Order within each side follows the input.
void split_heldout(const std::vector<Comparison>& all, double fraction, uint64_t seed,
                   std::vector<Comparison>* train, std::vector<Comparison>* heldout);

// Batches of indices into `comparisons`: groups are kept whole (InstructGPT: all pairs of one
// ranking in one batch) and packed until a batch holds >= batch_pairs comparisons. The group order
// is shuffled with `seed` (no shuffle when seed == UINT64_MAX).
std::vector<std::vector<size_t>> make_batches(const std::vector<Comparison>& comparisons,
                                              int batch_pairs, uint64_t seed);

// Writes every distinct prompt and answer of `comparisons` as one line of `path` (newlines and
// tabs become spaces), e.g. the training text of a tokenizer, atomically. Returns the lines
// written; throws rlhf::Error naming the path when it cannot be written.
int64_t write_text_corpus(const std::vector<Comparison>& comparisons, const std::string& path);

}  // namespace rlhf::reward
