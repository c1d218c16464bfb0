// Data in and out of the annotation store: tasks to rank (JSON lines), existing preference data
// (pairs JSONL, Anthropic HH-RLHF), and exports of the stored judgements.
//
// Export formats (one JSON object per line, UTF-8; `schema_version` is kExportSchemaVersion):
//   pairs:    {"schema_version","prompt","chosen","rejected","task_id","annotator"}: every ordered
//             pair across tie groups of every ranking (reward::ranking_to_comparisons; skips,
//             flags and none-acceptable give none, nor do two answers with the same text).
//   rankings: {"schema_version","task_id","annotator","prompt","answers","groups",
//             "none_acceptable","skipped","flag","seconds","created_at"}: one line per judgement;
//             groups are answer indices, best first, ties in one inner list.
// Both are ordered by ranking id. The reward trainer reads `pairs`; keep the fields stable.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "annotation/sqlite_store.h"

namespace rlhf::annotation {

constexpr int kExportSchemaVersion = 1;

// Throws rlhf::Error when the task could not be sent to an annotator: its Task message (prompt and
// answers) in a reply would exceed the protocol's frame limit (annotation/frame.h, kMaxFrameBytes).
// The message says by how much and what to shorten. add-tasks and import call it for every task.
void check_task_fits_frame(const TaskInput& task);

// Adds one task per line `{"prompt": "...", "answers": ["...", ...]}` (optional: "model",
// "sampling" (object), "overlap" (overrides `overlap`)). All lines or none are added (one
// transaction). Blank lines are skipped. Errors name the file and line. Returns tasks added.
int64_t add_tasks_jsonl(Store& store, const std::string& path, int overlap);

struct ImportResult {
  int64_t imported = 0;  // tasks created, each with one stored ranking
  int64_t skipped = 0;   // lines that could not be split into a shared prompt + two answers
};

// Imports preference data as completed tasks (overlap 1) ranked by an inactive annotator:
//   "pairs": lines {"prompt","chosen","rejected"[,"annotator"]} (our own export is accepted);
//            the author is "import:pairs" unless the line names one.
//   "hh":    Anthropic HH-RLHF lines {"chosen","rejected"}, split by
//            reward::split_hh_dialogues (the shared text up to the final "\n\nAssistant:" is the
//            prompt, the final assistant turns are the answers); author "import:hh".
// One transaction. Files may be gzip-compressed (rlhf::read_file_maybe_gzip).
ImportResult import_preferences(Store& store, const std::string& path, const std::string& format);

// Writes the export (see above) to `out`; returns the lines written.
int64_t export_jsonl(Store& store, const std::string& format, std::ostream& out);

}  // namespace rlhf::annotation
