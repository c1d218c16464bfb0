// A self-contained case for hostile-client suites: a real Server on a real Unix socket whose SQLite
// connection fails part-way through group-commit batches, driven by many concurrent annotators.
// The claim under test (annotation/group_commit.h): what was acknowledged is exactly what is
// stored, nothing answered INTERNAL is stored, and the file stays intact.
//
// The failure is injected into the server's own connection only, with a real SQLite mechanism
// (sqlite3_auto_extension, registered just while the Server opens its store):
//  - kDiskFull:       PRAGMA max_page_count pinned to the file's size (a few free pages left), so
//                     writes fail with SQLITE_FULL once those are used, as on a full disk;
//  - kRollbackInBatch: a temp trigger that fails every counted ranking of a task whose id is a
//                     multiple of 5 with RAISE(ROLLBACK): SQLite rolls the whole transaction back
//                     in the middle of a batch (as an I/O error does). Annotators skip such tasks
//                     after their ranking is refused, so the run ends.
//
// The server runs in this process (the injection needs its connection). While it starts, no other
// thread of the process may open an SQLite connection (the auto-extension would apply to it too).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rlhf::annotation::testing {

enum class InjectedFailure { kDiskFull, kRollbackInBatch };

struct InjectedFailureReport {
  int64_t acknowledged = 0;       // SubmitOk answers
  int64_t stored = 0;             // rankings in the file afterwards
  int64_t internal_answers = 0;   // INTERNAL answers seen by the annotators
  int64_t batch_aborts = 0;       // of which "the batch's transaction was rolled back"
  int64_t disk_full_answers = 0;  // of which mention a full database or disk
  std::string integrity;          // PRAGMA integrity_check afterwards
  // A new connection after the annotators stopped, with the failure still in place: "" when it
  // was served (Hello, then GetProgress answered), else what went wrong; and how long it took.
  std::string fresh_client = "not tried";
  double fresh_client_seconds = 0;
  // Every broken promise found, e.g. "acknowledged but not stored: task 4 by ann2". Empty means
  // the case passed.
  std::vector<std::string> problems;
};

// Seeds `dir`/case.db (40 tasks of overlap 2; 200 for kDiskFull), starts the server on
// `dir`/case.sock with the failure injected, runs `annotators` annotators in lock-step rounds (each
// sends one request per round, so requests of many connections share batches) until the queue is
// done or stuck, serves a fresh client (fresh_client), stops the server and compares the answers
// with the file.
InjectedFailureReport run_injected_failure_case(const std::string& dir, InjectedFailure kind,
                                                int annotators = 16);

}  // namespace rlhf::annotation::testing
