// Data in and out of the annotation store: tasks to rank (JSON lines), existing preference data
// (pairs JSONL, Anthropic HH-RLHF), and exports of the stored judgements.
//
// Export formats (one JSON object per line, UTF-8; `schema_version` is kExportSchemaVersion):
//   pairs:    {"schema_version","prompt","chosen","rejected","task_id","annotator"}: every ordered
//             pair across tie groups of every ranking (reward::ranking_to_comparisons; skips,
//             flags and none-acceptable give none, nor do two answers with the same text).
//   rankings: {"schema_version","task_id","annotator","prompt","answers","messages","groups",
//             "none_acceptable","skipped","flag","seconds","created_at"}: one line per judgement;
//             groups are answer indices, best first, ties in one inner list; "messages" is a
//             conversation prompt's message list, null for a text prompt.
//   messages: the pairs of `pairs` as conversations, the format of TRL / OpenRLHF preference
//             data that the reward trainer reads with format "messages":
//             {"schema_version","prompt": [messages],"chosen": [{"role": "assistant",
//             "content"}],"rejected": [...],"task_id","annotator"}; a text prompt becomes one
//             user turn.
// Both are ordered by ranking id. The reward trainer reads `pairs`; keep the fields stable.
//
// Errors: every function throws rlhf::Error: bad input names the file and line (or the field),
// an unknown format names the accepted ones, and store failures pass on Store's rlhf::Error
// (sqlite_store.h).
// Thread safety: as the Store passed in (one thread at a time per Store); other processes may
// write the same database meanwhile.
#pragma once

#include <cstdint>
#include <functional>
#include <ostream>
#include <string>

#include "annotation/sqlite_store.h"

namespace rlhf::annotation {

constexpr int kExportSchemaVersion = 1;

// Throws rlhf::Error when the task could not be sent to an annotator: its Task message (prompt and
// answers) in a reply would exceed the protocol's frame limit (annotation/frame.h, kMaxFrameBytes).
// The message says by how much and what to shorten. add-tasks and import call it for every task.
void check_task_fits_frame(const TaskInput& task);

// How add-tasks and import write: in chunks, so a long run never holds the database's write lock
// longer than about max_seconds (a server waiting on it gives up after its busy timeout, 10 s).
//
// Atomicity: every line of the file is read and checked first, so a bad line adds nothing. Then
// the items are written in transactions of at most max_rows items or max_seconds each; each
// transaction also stores how far it got under a key made of the command, its settings and the
// file's SHA-256 (table import_progress). A run that stops half-way (crash, disk full, killed)
// leaves a prefix of the file stored and that resume point; running the same command on the
// same file again skips the stored prefix and completes it, so nothing is added twice. The last
// chunk removes the record, so once a run completed, running it again adds everything again
// (as it always did). Readers may see a partly imported file while it runs.
struct ChunkOptions {
  int64_t max_rows = 500;     // items per transaction
  double max_seconds = 0.25;  // or this long, whichever comes first
  // Called after each committed chunk with the items stored so far (tests use it).
  std::function<void(int64_t items_done)> after_commit;
};

// Adds one task per line `{"prompt": "...", "answers": ["...", ...]}` (optional: "model",
// "sampling" (object), "overlap" (overrides `overlap`)), or a conversation prompt
// `{"messages": [...], "answers": [...]}` (what `rlhf sample` writes for chat prompts): messages
// checked by common/messages.h and ending with a user turn; annotators see
// conversation_text(messages), the messages are stored beside it and come back in exports. Blank
// lines are skipped. Errors name the file and line; a bad line adds nothing. Written in chunks (see
// ChunkOptions). Returns the tasks added by this run (a resumed run: those after the resume point).
int64_t add_tasks_jsonl(Store& store, const std::string& path, int overlap,
                        const ChunkOptions& chunk = {});

struct ImportResult {
  int64_t imported = 0;      // tasks created by this run, each with one stored ranking
  int64_t skipped = 0;       // lines that could not be split into a shared prompt + two answers
  int64_t resumed_from = 0;  // items an interrupted earlier run had already stored
};

// Imports preference data as completed tasks (overlap 1) ranked by an inactive annotator:
//   "pairs": lines {"prompt","chosen","rejected"[,"annotator"]} (our own export is accepted);
//            the author is "import:pairs" unless the line names one.
//   "hh":    Anthropic HH-RLHF lines {"chosen","rejected"}, split by
//            reward::split_hh_dialogues (the shared text up to the final "\n\nAssistant:" is the
//            prompt, the final assistant turns are the answers); author "import:hh".
// Written in chunks (see ChunkOptions). Files may be gzip-compressed
// (rlhf::read_file_maybe_gzip).
ImportResult import_preferences(Store& store, const std::string& path, const std::string& format,
                                const ChunkOptions& chunk = {});

// Writes the export (see above) to `out`; returns the lines written. Throws rlhf::Error for an
// unknown format or when writing to `out` failed.
int64_t export_jsonl(Store& store, const std::string& format, std::ostream& out);

}  // namespace rlhf::annotation
