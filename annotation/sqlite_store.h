// The annotation database: prompts, answers, tasks, leases, deliveries (who was ever given which
// task), rankings, annotators, quarantined tasks and resume points of chunked imports in one
// SQLite file, with versioned migrations (PRAGMA user_version).
//
// Constraints kept by the database itself: overlap >= 1, 0 <= done_count <= overlap (triggers
// since schema v3), one judgement per (task, annotator), foreign keys.
//
// Opening sets WAL mode, foreign keys, a busy timeout and the synchronous level. Every method runs
// prepared statements (prepared once per Store and cached). Methods that change several rows
// (add_task, insert_ranking, delete_ranking) must run inside the caller's Transaction so they are
// atomic; the request handler and the import/add-tasks commands do that.
//
// Thread safety: none. A Store (one connection) is used from one thread at a time; other
// processes may open the same file concurrently (WAL + busy timeout).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "annotation/internal/sqlite.h"
#include "annotation/ranking.h"

namespace rlhf::annotation {

struct StoreOptions {
  // true: PRAGMA synchronous=FULL (an acknowledged commit survives a power cut; one fsync per
  // commit). false: NORMAL (survives a process crash; may lose the last commits on power loss).
  bool synchronous_full = true;
  // How long a write waits for another connection's lock before failing, in milliseconds.
  int busy_timeout_ms = 10000;
  // Create the file (with the current schema) when it does not exist. Read-only commands pass
  // false and get a clear error for a missing file.
  bool create = true;
};

struct Annotator {
  int64_t id = 0;
  std::string name;
  std::string role;
  bool active = false;
};

// One task as an annotator sees it.
struct TaskView {
  int64_t id = 0;
  std::string prompt;         // what annotators see (a conversation as common/messages.h writes it)
  std::string messages_json;  // the conversation as a JSON list when the prompt is one, else
  std::vector<std::string> answers;
  int overlap = 0;     // rankings the task needs
  int done_count = 0;  // rankings counted toward overlap (skips and flags do not count)
};

// A task to add: a prompt with its K answers and where they came from.
struct TaskInput {
  std::string prompt;  // the text annotators see
  std::vector<std::string> answers;
  std::string model;          // producing model ("" when unknown)
  std::string sampling_json;  // sampling settings as a JSON object text ("" when unknown)
  std::string source;         // e.g. "add-tasks", "import:hh"
};

// A task taken out of the queue for good (see Store::quarantine_task).
struct QuarantinedTask {
  int64_t task_id = 0;
  std::string reason;  // starts with a name, e.g. "task_too_large: ..."
};

// A stored judgement of one task by one annotator.
struct RankingRecord {
  int64_t id = 0;
  int64_t task_id = 0;
  int64_t annotator_id = 0;
  std::string annotator;  // name
  Groups groups;          // empty unless it is a ranking
  bool none_acceptable = false;
  bool skipped = false;
  std::string flag;  // "" unless flagged
  double seconds = 0;
  std::string created_at;  // ISO 8601 UTC
  double created_unix = 0;
  // True when the judgement counts toward the task's overlap (a ranking or none-acceptable).
  bool counts() const { return !skipped && flag.empty(); }
};

class Store {
 public:
  static constexpr int kSchemaVersion = 4;

  // Opens `path`, creating and/or migrating it. Throws rlhf::Error naming the file when it is
  // missing (and options.create is false), is not a database, or has a newer schema.
  explicit Store(const std::string& path, StoreOptions options = {});
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  const std::string& path() const { return path_; }
  sqlite3* db() { return db_.get(); }
  int schema_version();

  // An explicit write transaction (BEGIN IMMEDIATE). Rolls back in the destructor unless
  // commit() succeeded. Nested use is not supported; use Savepoint inside.
  class Transaction {
   public:
    explicit Transaction(Store& store);
    ~Transaction();
    void commit();
    Transaction(const Transaction&) = delete;
    Transaction& operator=(const Transaction&) = delete;

   private:
    Store& store_;
    bool done_ = false;
  };

  // A savepoint inside a transaction: release() keeps its changes, roll_back() or the destructor
  // otherwise undo them (used to undo one failed request inside a group commit). The constructor
  // throws rlhf::Error when no transaction is open: a SAVEPOINT there would start (and RELEASE
  // commit) a transaction of its own.
  class Savepoint {
   public:
    explicit Savepoint(Store& store);
    ~Savepoint();
    void release();
    // Undoes the changes since the savepoint. Returns true when that worked and the enclosing
    // transaction is still open; false when SQLite already rolled the whole transaction back
    // (disk full, I/O error, RAISE(ROLLBACK)) or the rollback failed: then nothing of the
    // transaction may be committed.
    bool roll_back() noexcept;
    Savepoint(const Savepoint&) = delete;
    Savepoint& operator=(const Savepoint&) = delete;

   private:
    Store& store_;
    bool done_ = false;
  };

  bool in_transaction();

  // --- annotators ---
  // Creates an annotator with a fresh random token (32 bytes from the OS's CSPRNG, hex) and
  // stores only its SHA-256. Returns the token. Throws if the name is taken.
  std::string add_annotator(const std::string& name, const std::string& role);
  // Sets `active` for the named annotator; throws when there is no such annotator. Deactivating
  // (revoking) also drops the annotator's leases, so their tasks are free for others at once.
  void set_annotator_active(const std::string& name, bool active);
  std::optional<Annotator> annotator_by_token(const std::string& token);
  std::optional<Annotator> annotator_by_id(int64_t id);
  std::optional<Annotator> annotator_by_name(const std::string& name);
  // An inactive annotator used as the author of imported judgements (created on first use).
  int64_t import_annotator(const std::string& name);
  std::vector<Annotator> annotators();

  // --- tasks ---
  // messages_json: a conversation prompt's messages (a JSON list; "" for a text prompt), stored
  // with the prompt when its text is new (TaskView::messages_json).
  int64_t add_task(const TaskInput& task, int overlap, const std::string& messages_json = "");
  std::optional<TaskView> task(int64_t task_id);
  int64_t task_count();
  // Every distinct prompt text (table prompts), in id order (the order they were first added).
  std::vector<std::string> prompts();
  // The same prompts with their conversation (TaskView::messages_json; "" for plain text).
  std::vector<std::pair<std::string, std::string>> prompts_with_messages();

  // --- queue and leases (times are Unix seconds) ---
  // The task this annotator holds an unexpired lease on, if any (the lowest id).
  std::optional<int64_t> held_lease(int64_t annotator_id, double now);
  // The first task that still needs rankings, that this annotator has not judged, and whose
  // open slots (overlap - done - other annotators' live leases) are not all leased.
  std::optional<int64_t> next_open_task(int64_t annotator_id, double now);
  // Whether some task still needs rankings that this annotator has not judged (leased or not).
  int64_t remaining_for(int64_t annotator_id);
  // Earliest expiry of another annotator's live lease on a task this annotator could take.
  std::optional<double> earliest_blocking_lease(int64_t annotator_id, double now);
  // Creates or renews a lease and records the delivery (see was_delivered).
  void put_lease(int64_t task_id, int64_t annotator_id, double expires_at);
  // When this annotator's lease on the task expires (possibly in the past: expired rows linger
  // until drop_expired_leases), or nullopt when there is no lease row.
  std::optional<double> lease_expiry(int64_t task_id, int64_t annotator_id);
  // Whether the task was ever leased to this annotator (table deliveries, written by put_lease
  // and never deleted: it outlives expired, dropped and submitted leases).
  bool was_delivered(int64_t task_id, int64_t annotator_id);
  // Unexpired leases on the task held by annotators other than this one.
  int64_t live_leases_of_others(int64_t task_id, int64_t annotator_id, double now);
  void drop_lease(int64_t task_id, int64_t annotator_id);
  void drop_expired_leases(double now);
  // Takes a task out of the queue for good (it is never leased again; next_open_task,
  // remaining_for and earliest_blocking_lease skip it) and drops its leases. `reason` starts
  // with a name ("task_too_large: ..."). Idempotent: the first reason stays.
  void quarantine_task(int64_t task_id, const std::string& reason);
  std::vector<QuarantinedTask> quarantined_tasks();

  // --- resume points of chunked add-tasks/import runs (annotation/import_export.h) ---
  // Items an interrupted run with this key committed (0 when none is recorded).
  int64_t import_progress(const std::string& key);
  // Records the resume point inside the chunk's transaction; items_done <= 0 removes it.
  void set_import_progress(const std::string& key, int64_t items_done);

  // --- rankings ---
  // Inserts a judgement and, when it counts, increments the task's done_count. Does not check
  // overlap or permissions (the request handler does). Returns the ranking id.
  int64_t insert_ranking(const RankingRecord& r);
  std::optional<RankingRecord> ranking_of(int64_t task_id, int64_t annotator_id);
  std::optional<RankingRecord> latest_ranking_of(int64_t annotator_id);
  void delete_ranking(const RankingRecord& r);
  // Every judgement, in id order.
  std::vector<RankingRecord> all_rankings();
  int64_t ranking_count();
  std::vector<double> seconds_of(int64_t annotator_id);

  // PRAGMA integrity_check: "ok" or the first problem.
  std::string integrity_check();

 private:
  internal::Statement& stmt(const char* sql);
  void migrate();
  // Logs (stderr) how many tasks break done_count <= overlap before migration v3 repairs them.
  void report_tasks_over_overlap();

  std::string path_;
  internal::DbHandle db_;
  std::map<const char*, std::unique_ptr<internal::Statement>> stmts_;
};

}  // namespace rlhf::annotation
