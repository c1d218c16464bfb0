#include "annotation/sqlite_store.h"

#include <openssl/rand.h>

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "common/error.h"
#include "common/files.h"

namespace rlhf::annotation {

using internal::exec;
using internal::Statement;

namespace {

// Migration i (0-based) brings the schema from version i to i+1. Append; never edit a shipped one.
const char* const kMigrations[] = {
    // v1
    R"sql(
CREATE TABLE annotators (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  role TEXT NOT NULL DEFAULT 'annotator',
  token_sha256 TEXT NOT NULL UNIQUE,
  active INTEGER NOT NULL DEFAULT 1,
  created_at TEXT NOT NULL
);
CREATE TABLE prompts (
  id INTEGER PRIMARY KEY,
  text TEXT NOT NULL UNIQUE
);
CREATE TABLE answers (
  id INTEGER PRIMARY KEY,
  prompt_id INTEGER NOT NULL REFERENCES prompts(id),
  text TEXT NOT NULL,
  model TEXT NOT NULL DEFAULT '',
  sampling TEXT NOT NULL DEFAULT ''
);
CREATE TABLE tasks (
  id INTEGER PRIMARY KEY,
  prompt_id INTEGER NOT NULL REFERENCES prompts(id),
  overlap INTEGER NOT NULL CHECK (overlap >= 1),
  done_count INTEGER NOT NULL DEFAULT 0 CHECK (done_count >= 0),
  source TEXT NOT NULL DEFAULT '',
  created_at TEXT NOT NULL
);
CREATE INDEX tasks_open ON tasks(id) WHERE done_count < overlap;
CREATE TABLE task_answers (
  task_id INTEGER NOT NULL REFERENCES tasks(id),
  position INTEGER NOT NULL,
  answer_id INTEGER NOT NULL REFERENCES answers(id),
  PRIMARY KEY (task_id, position)
) WITHOUT ROWID;
CREATE TABLE leases (
  task_id INTEGER NOT NULL REFERENCES tasks(id),
  annotator_id INTEGER NOT NULL REFERENCES annotators(id),
  expires_at REAL NOT NULL,
  PRIMARY KEY (task_id, annotator_id)
) WITHOUT ROWID;
CREATE INDEX leases_by_annotator ON leases(annotator_id, expires_at);
CREATE TABLE rankings (
  id INTEGER PRIMARY KEY,
  task_id INTEGER NOT NULL REFERENCES tasks(id),
  annotator_id INTEGER NOT NULL REFERENCES annotators(id),
  groups TEXT NOT NULL DEFAULT '[]',
  none_acceptable INTEGER NOT NULL DEFAULT 0,
  skipped INTEGER NOT NULL DEFAULT 0,
  flag TEXT NOT NULL DEFAULT '',
  seconds REAL NOT NULL DEFAULT 0,
  created_at TEXT NOT NULL,
  created_unix REAL NOT NULL,
  UNIQUE (task_id, annotator_id)
);
CREATE INDEX rankings_by_annotator ON rankings(annotator_id, id);
)sql",
    // v2: which annotators were ever given which task (a lease, now or in the past). A submission
    // needs a live lease or a delivery; rows of existing leases and rankings are backfilled.
    R"sql(
CREATE TABLE deliveries (
  task_id INTEGER NOT NULL REFERENCES tasks(id),
  annotator_id INTEGER NOT NULL REFERENCES annotators(id),
  PRIMARY KEY (task_id, annotator_id)
) WITHOUT ROWID;
INSERT OR IGNORE INTO deliveries(task_id, annotator_id)
  SELECT task_id, annotator_id FROM leases UNION SELECT task_id, annotator_id FROM rankings;
)sql",
    // v3: (1) done_count <= overlap as a constraint. SQLite cannot add a CHECK to an existing
    // table, so two triggers refuse any insert or update that breaks it. Rows that already break
    // it (written by older code) get their overlap raised to done_count first: the rankings are
    // real work, and the task simply counts as complete. (2) Tasks taken out of the queue with a
    // named reason (e.g. too large to send in a frame). (3) The resume point of an interrupted
    // chunked add-tasks/import, keyed by the file's SHA-256 and the command's settings.
    R"sql(
UPDATE tasks SET overlap = done_count WHERE done_count > overlap;
CREATE TRIGGER tasks_done_within_overlap_insert BEFORE INSERT ON tasks
  WHEN NEW.done_count > NEW.overlap
  BEGIN SELECT RAISE(ABORT, 'constraint tasks.done_count <= tasks.overlap failed'); END;
CREATE TRIGGER tasks_done_within_overlap_update BEFORE UPDATE OF done_count, overlap ON tasks
  WHEN NEW.done_count > NEW.overlap
  BEGIN SELECT RAISE(ABORT, 'constraint tasks.done_count <= tasks.overlap failed'); END;
CREATE TABLE quarantined_tasks (
  task_id INTEGER PRIMARY KEY REFERENCES tasks(id),
  reason TEXT NOT NULL,
  created_at TEXT NOT NULL
);
CREATE TABLE import_progress (
  import_key TEXT PRIMARY KEY,
  items_done INTEGER NOT NULL CHECK (items_done >= 0),
  updated_at TEXT NOT NULL
) WITHOUT ROWID;
)sql",
    // v4: conversation prompts keep their messages (JSON list) beside the text annotators see.
    R"sql(
ALTER TABLE prompts ADD COLUMN messages TEXT NOT NULL DEFAULT '';
)sql",
};
constexpr int kNumMigrations = sizeof(kMigrations) / sizeof(kMigrations[0]);
static_assert(kNumMigrations == Store::kSchemaVersion, "one migration per schema version");

std::string random_token() {
  unsigned char buf[32];
  if (RAND_bytes(buf, sizeof buf) != 1) throw Error("OpenSSL RAND_bytes failed to make a token");
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : buf) {
    out += hex[c >> 4];
    out += hex[c & 15];
  }
  return out;
}

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

Store::Store(const std::string& path, StoreOptions options) : path_(path) {
  bool exists = std::filesystem::exists(path);
  if (!exists && !options.create)
    throw Error("annotation database " + path + " does not exist (create it with add-tasks)");
  sqlite3* raw = nullptr;
  int flags =
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (options.create ? SQLITE_OPEN_CREATE : 0);
  int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  db_.reset(raw);
  if (rc != SQLITE_OK) internal::throw_sqlite(raw, "opening annotation database " + path);
  sqlite3_busy_timeout(db_.get(), options.busy_timeout_ms);
  try {
    exec(db_.get(), "PRAGMA foreign_keys=ON");
    {
      Statement wal(db_.get(), "PRAGMA journal_mode=WAL");
      if (!wal.step() || wal.text(0) != "wal") throw Error("could not switch to WAL mode");
    }
    exec(db_.get(),
         options.synchronous_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
    migrate();
  } catch (const Error& e) {
    throw Error("annotation database " + path + ": " + e.what());
  }
}

Store::~Store() {
  stmts_.clear();  // finalize before closing
}

int Store::schema_version() {
  Statement s(db_.get(), "PRAGMA user_version");
  s.step();
  return static_cast<int>(s.int64(0));
}

void Store::migrate() {
  int version = schema_version();
  if (version > kSchemaVersion)
    throw Error("schema version " + std::to_string(version) +
                " is newer than this rlhf supports (" + std::to_string(kSchemaVersion) +
                "); use a newer rlhf");
  if (version == kSchemaVersion) return;
  exec(db_.get(), "BEGIN IMMEDIATE");
  try {
    version = schema_version();  // re-read under the write lock (another process may have won)
    for (int v = version; v < kSchemaVersion; ++v) {
      if (v == 2) report_tasks_over_overlap();
      exec(db_.get(), kMigrations[v]);
    }
    if (version < kSchemaVersion)
      exec(db_.get(), "PRAGMA user_version=" + std::to_string(kSchemaVersion));
    exec(db_.get(), "COMMIT");
  } catch (...) {
    sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

void Store::report_tasks_over_overlap() {
  Statement s(db_.get(), "SELECT count(*), min(id) FROM tasks WHERE done_count > overlap");
  if (!s.step() || s.int64(0) == 0) return;
  std::fprintf(stderr,
               "annotation database %s: %lld task(s) (the first: task %lld) had more counted "
               "judgements than their overlap; migration v3 raises their overlap to match\n",
               path_.c_str(), static_cast<long long>(s.int64(0)),
               static_cast<long long>(s.int64(1)));
}

Statement& Store::stmt(const char* sql) {
  auto it = stmts_.find(sql);
  if (it != stmts_.end()) return *it->second;
  auto s = std::make_unique<Statement>(db_.get(), sql);
  Statement& ref = *s;
  stmts_.emplace(sql, std::move(s));
  return ref;
}

bool Store::in_transaction() { return sqlite3_get_autocommit(db_.get()) == 0; }

Store::Transaction::Transaction(Store& store) : store_(store) {
  store_.stmt("BEGIN IMMEDIATE").run();
}
Store::Transaction::~Transaction() {
  if (!done_) sqlite3_exec(store_.db(), "ROLLBACK", nullptr, nullptr, nullptr);
}
void Store::Transaction::commit() {
  store_.stmt("COMMIT").run();
  done_ = true;
}

Store::Savepoint::Savepoint(Store& store) : store_(store) {
  if (!store_.in_transaction())
    throw Error("a savepoint needs an open transaction (the transaction was rolled back)");
  store_.stmt("SAVEPOINT req").run();
}
Store::Savepoint::~Savepoint() {
  if (!done_) roll_back();
}
bool Store::Savepoint::roll_back() noexcept {
  done_ = true;
  if (!store_.in_transaction()) return false;  // SQLite rolled everything back already
  if (sqlite3_exec(store_.db(), "ROLLBACK TO req", nullptr, nullptr, nullptr) != SQLITE_OK)
    return false;
  if (sqlite3_exec(store_.db(), "RELEASE req", nullptr, nullptr, nullptr) != SQLITE_OK)
    return false;
  return store_.in_transaction();
}
void Store::Savepoint::release() {
  store_.stmt("RELEASE req").run();
  done_ = true;
}

// ---------------- annotators ----------------

std::string Store::add_annotator(const std::string& name, const std::string& role) {
  if (name.empty()) throw Error("annotator name is empty");
  if (annotator_by_name(name))
    throw Error("annotator '" + name + "' already exists (revoke it or pick another name)");
  std::string token = random_token();
  stmt("INSERT INTO annotators(name, role, token_sha256, active, created_at) VALUES(?,?,?,1,?)")
      .bind(1, name)
      .bind(2, role)
      .bind(3, sha256_hex(token))
      .bind(4, utc_now_iso8601())
      .run();
  return token;
}

void Store::set_annotator_active(const std::string& name, bool active) {
  const auto annotator = annotator_by_name(name);
  if (!annotator) throw Error("no annotator named '" + name + "'");
  stmt("UPDATE annotators SET active=? WHERE name=?").bind(1, active ? 1 : 0).bind(2, name).run();
  // A revoked annotator cannot submit: its reservations go back to the queue at once instead of
  // blocking other annotators until they expire.
  if (!active) stmt("DELETE FROM leases WHERE annotator_id=?").bind(1, annotator->id).run();
}

namespace {
Annotator read_annotator(Statement& s) {
  Annotator a;
  a.id = s.int64(0);
  a.name = s.text(1);
  a.role = s.text(2);
  a.active = s.int64(3) != 0;
  return a;
}
}  // namespace

std::optional<Annotator> Store::annotator_by_token(const std::string& token) {
  if (token.empty()) return std::nullopt;
  auto& s = stmt("SELECT id, name, role, active FROM annotators WHERE token_sha256=?");
  s.bind(1, sha256_hex(token));
  std::optional<Annotator> out;
  if (s.step()) out = read_annotator(s);
  s.reset();
  return out;
}

std::optional<Annotator> Store::annotator_by_id(int64_t id) {
  auto& s = stmt("SELECT id, name, role, active FROM annotators WHERE id=?");
  s.bind(1, id);
  std::optional<Annotator> out;
  if (s.step()) out = read_annotator(s);
  s.reset();
  return out;
}

std::optional<Annotator> Store::annotator_by_name(const std::string& name) {
  auto& s = stmt("SELECT id, name, role, active FROM annotators WHERE name=?");
  s.bind(1, name);
  std::optional<Annotator> out;
  if (s.step()) out = read_annotator(s);
  s.reset();
  return out;
}

int64_t Store::import_annotator(const std::string& name) {
  if (auto a = annotator_by_name(name)) return a->id;
  stmt("INSERT INTO annotators(name, role, token_sha256, active, created_at) VALUES(?,?,?,0,?)")
      .bind(1, name)
      .bind(2, std::string("import"))
      .bind(3, sha256_hex(random_token()))
      .bind(4, utc_now_iso8601())
      .run();
  return sqlite3_last_insert_rowid(db_.get());
}

std::vector<Annotator> Store::annotators() {
  auto& s = stmt("SELECT id, name, role, active FROM annotators ORDER BY id");
  std::vector<Annotator> out;
  while (s.step()) out.push_back(read_annotator(s));
  s.reset();
  return out;
}

// ---------------- tasks ----------------

int64_t Store::add_task(const TaskInput& t, int overlap, const std::string& messages_json) {
  if (overlap < 1) throw Error("overlap must be >= 1, got " + std::to_string(overlap));
  if (t.answers.size() < 2 || t.answers.size() > 26)
    throw Error("a task needs 2..26 answers, got " + std::to_string(t.answers.size()));
  stmt("INSERT OR IGNORE INTO prompts(text, messages) VALUES(?,?)")
      .bind(1, t.prompt)
      .bind(2, messages_json)
      .run();
  auto& q = stmt("SELECT id FROM prompts WHERE text=?");
  q.bind(1, t.prompt);
  q.step();
  int64_t prompt_id = q.int64(0);
  q.reset();
  stmt("INSERT INTO tasks(prompt_id, overlap, done_count, source, created_at) VALUES(?,?,0,?,?)")
      .bind(1, prompt_id)
      .bind(2, overlap)
      .bind(3, t.source)
      .bind(4, utc_now_iso8601())
      .run();
  int64_t task_id = sqlite3_last_insert_rowid(db_.get());
  for (size_t i = 0; i < t.answers.size(); ++i) {
    stmt("INSERT INTO answers(prompt_id, text, model, sampling) VALUES(?,?,?,?)")
        .bind(1, prompt_id)
        .bind(2, t.answers[i])
        .bind(3, t.model)
        .bind(4, t.sampling_json)
        .run();
    int64_t answer_id = sqlite3_last_insert_rowid(db_.get());
    stmt("INSERT INTO task_answers(task_id, position, answer_id) VALUES(?,?,?)")
        .bind(1, task_id)
        .bind(2, static_cast<int64_t>(i))
        .bind(3, answer_id)
        .run();
  }
  return task_id;
}

std::optional<TaskView> Store::task(int64_t task_id) {
  auto& s = stmt(
      "SELECT t.id, p.text, t.overlap, t.done_count, p.messages FROM tasks t JOIN prompts p ON "
      "p.id = t.prompt_id WHERE t.id=?");
  s.bind(1, task_id);
  if (!s.step()) {
    s.reset();
    return std::nullopt;
  }
  TaskView v;
  v.id = s.int64(0);
  v.prompt = s.text(1);
  v.overlap = static_cast<int>(s.int64(2));
  v.done_count = static_cast<int>(s.int64(3));
  v.messages_json = s.text(4);
  s.reset();
  auto& a = stmt(
      "SELECT a.text FROM task_answers ta JOIN answers a ON a.id = ta.answer_id WHERE "
      "ta.task_id=? ORDER BY ta.position");
  a.bind(1, task_id);
  while (a.step()) v.answers.push_back(a.text(0));
  a.reset();
  return v;
}

int64_t Store::task_count() {
  auto& s = stmt("SELECT count(*) FROM tasks");
  s.step();
  int64_t n = s.int64(0);
  s.reset();
  return n;
}

std::vector<std::string> Store::prompts() {
  auto& s = stmt("SELECT text FROM prompts ORDER BY id");
  std::vector<std::string> out;
  while (s.step()) out.push_back(s.text(0));
  s.reset();
  return out;
}

std::vector<std::pair<std::string, std::string>> Store::prompts_with_messages() {
  auto& s = stmt("SELECT text, messages FROM prompts ORDER BY id");
  std::vector<std::pair<std::string, std::string>> out;
  while (s.step()) out.emplace_back(s.text(0), s.text(1));
  s.reset();
  return out;
}

// ---------------- queue ----------------

std::optional<int64_t> Store::held_lease(int64_t annotator_id, double now) {
  auto& s = stmt(
      "SELECT task_id FROM leases WHERE annotator_id=? AND expires_at>? ORDER BY task_id LIMIT 1");
  s.bind(1, annotator_id).bind(2, now);
  std::optional<int64_t> out;
  if (s.step()) out = s.int64(0);
  s.reset();
  return out;
}

std::optional<int64_t> Store::next_open_task(int64_t annotator_id, double now) {
  auto& s = stmt(
      "SELECT t.id FROM tasks t INDEXED BY tasks_open WHERE t.done_count < t.overlap "
      "AND NOT EXISTS (SELECT 1 FROM rankings r WHERE r.task_id=t.id AND r.annotator_id=?1) "
      "AND NOT EXISTS (SELECT 1 FROM quarantined_tasks q WHERE q.task_id=t.id) "
      "AND t.done_count + (SELECT count(*) FROM leases l WHERE l.task_id=t.id AND "
      "l.annotator_id<>?1 AND l.expires_at>?2) < t.overlap "
      "ORDER BY t.id LIMIT 1");
  s.bind(1, annotator_id).bind(2, now);
  std::optional<int64_t> out;
  if (s.step()) out = s.int64(0);
  s.reset();
  return out;
}

int64_t Store::remaining_for(int64_t annotator_id) {
  auto& s = stmt(
      "SELECT count(*) FROM tasks t INDEXED BY tasks_open WHERE t.done_count < t.overlap "
      "AND NOT EXISTS (SELECT 1 FROM rankings r WHERE r.task_id=t.id AND r.annotator_id=?1) "
      "AND NOT EXISTS (SELECT 1 FROM quarantined_tasks q WHERE q.task_id=t.id)");
  s.bind(1, annotator_id);
  s.step();
  int64_t n = s.int64(0);
  s.reset();
  return n;
}

std::optional<double> Store::earliest_blocking_lease(int64_t annotator_id, double now) {
  auto& s = stmt(
      "SELECT min(l.expires_at) FROM tasks t INDEXED BY tasks_open JOIN leases l ON "
      "l.task_id=t.id WHERE t.done_count < t.overlap AND l.annotator_id<>?1 AND l.expires_at>?2 "
      "AND NOT EXISTS (SELECT 1 FROM rankings r WHERE r.task_id=t.id AND r.annotator_id=?1) "
      "AND NOT EXISTS (SELECT 1 FROM quarantined_tasks q WHERE q.task_id=t.id)");
  s.bind(1, annotator_id).bind(2, now);
  std::optional<double> out;
  if (s.step() && !s.is_null(0)) out = s.real(0);
  s.reset();
  return out;
}

void Store::put_lease(int64_t task_id, int64_t annotator_id, double expires_at) {
  stmt("INSERT OR REPLACE INTO leases(task_id, annotator_id, expires_at) VALUES(?,?,?)")
      .bind(1, task_id)
      .bind(2, annotator_id)
      .bind(3, expires_at)
      .run();
  stmt("INSERT OR IGNORE INTO deliveries(task_id, annotator_id) VALUES(?,?)")
      .bind(1, task_id)
      .bind(2, annotator_id)
      .run();
}

std::optional<double> Store::lease_expiry(int64_t task_id, int64_t annotator_id) {
  auto& s = stmt("SELECT expires_at FROM leases WHERE task_id=? AND annotator_id=?");
  s.bind(1, task_id).bind(2, annotator_id);
  std::optional<double> out;
  if (s.step()) out = s.real(0);
  s.reset();
  return out;
}

bool Store::was_delivered(int64_t task_id, int64_t annotator_id) {
  auto& s = stmt("SELECT 1 FROM deliveries WHERE task_id=? AND annotator_id=?");
  s.bind(1, task_id).bind(2, annotator_id);
  bool out = s.step();
  s.reset();
  return out;
}

int64_t Store::live_leases_of_others(int64_t task_id, int64_t annotator_id, double now) {
  auto& s =
      stmt("SELECT count(*) FROM leases WHERE task_id=? AND annotator_id<>? AND expires_at>?");
  s.bind(1, task_id).bind(2, annotator_id).bind(3, now);
  s.step();
  int64_t n = s.int64(0);
  s.reset();
  return n;
}

void Store::drop_lease(int64_t task_id, int64_t annotator_id) {
  stmt("DELETE FROM leases WHERE task_id=? AND annotator_id=?")
      .bind(1, task_id)
      .bind(2, annotator_id)
      .run();
}

void Store::drop_expired_leases(double now) {
  stmt("DELETE FROM leases WHERE expires_at<=?").bind(1, now).run();
}

void Store::quarantine_task(int64_t task_id, const std::string& reason) {
  stmt("INSERT OR IGNORE INTO quarantined_tasks(task_id, reason, created_at) VALUES(?,?,?)")
      .bind(1, task_id)
      .bind(2, reason)
      .bind(3, utc_now_iso8601())
      .run();
  stmt("DELETE FROM leases WHERE task_id=?").bind(1, task_id).run();
}

std::vector<QuarantinedTask> Store::quarantined_tasks() {
  auto& s = stmt("SELECT task_id, reason FROM quarantined_tasks ORDER BY task_id");
  std::vector<QuarantinedTask> out;
  while (s.step()) out.push_back({s.int64(0), s.text(1)});
  s.reset();
  return out;
}

// ---------------- chunked imports ----------------

int64_t Store::import_progress(const std::string& key) {
  auto& s = stmt("SELECT items_done FROM import_progress WHERE import_key=?");
  s.bind(1, key);
  int64_t n = s.step() ? s.int64(0) : 0;
  s.reset();
  return n;
}

void Store::set_import_progress(const std::string& key, int64_t items_done) {
  if (items_done <= 0) {
    stmt("DELETE FROM import_progress WHERE import_key=?").bind(1, key).run();
    return;
  }
  stmt("INSERT OR REPLACE INTO import_progress(import_key, items_done, updated_at) VALUES(?,?,?)")
      .bind(1, key)
      .bind(2, items_done)
      .bind(3, utc_now_iso8601())
      .run();
}

// ---------------- rankings ----------------

int64_t Store::insert_ranking(const RankingRecord& r) {
  double created = r.created_unix > 0 ? r.created_unix : unix_now();
  std::string created_at = r.created_at.empty() ? utc_now_iso8601() : r.created_at;
  stmt(
      "INSERT INTO rankings(task_id, annotator_id, groups, none_acceptable, skipped, flag, "
      "seconds, created_at, created_unix) VALUES(?,?,?,?,?,?,?,?,?)")
      .bind(1, r.task_id)
      .bind(2, r.annotator_id)
      .bind(3, groups_to_json(r.groups))
      .bind(4, r.none_acceptable ? 1 : 0)
      .bind(5, r.skipped ? 1 : 0)
      .bind(6, r.flag)
      .bind(7, r.seconds)
      .bind(8, created_at)
      .bind(9, created)
      .run();
  int64_t id = sqlite3_last_insert_rowid(db_.get());
  if (r.counts())
    stmt("UPDATE tasks SET done_count = done_count + 1 WHERE id=?").bind(1, r.task_id).run();
  return id;
}

namespace {
const char* const kRankingColumns =
    "r.id, r.task_id, r.annotator_id, a.name, r.groups, r.none_acceptable, r.skipped, r.flag, "
    "r.seconds, r.created_at, r.created_unix";

RankingRecord read_ranking(Statement& s) {
  RankingRecord r;
  r.id = s.int64(0);
  r.task_id = s.int64(1);
  r.annotator_id = s.int64(2);
  r.annotator = s.text(3);
  r.groups = groups_from_json(s.text(4));
  r.none_acceptable = s.int64(5) != 0;
  r.skipped = s.int64(6) != 0;
  r.flag = s.text(7);
  r.seconds = s.real(8);
  r.created_at = s.text(9);
  r.created_unix = s.real(10);
  return r;
}
}  // namespace

std::optional<RankingRecord> Store::ranking_of(int64_t task_id, int64_t annotator_id) {
  static const std::string sql = std::string("SELECT ") + kRankingColumns +
                                 " FROM rankings r JOIN annotators a ON a.id=r.annotator_id "
                                 "WHERE r.task_id=? AND r.annotator_id=?";
  auto& s = stmt(sql.c_str());
  s.bind(1, task_id).bind(2, annotator_id);
  std::optional<RankingRecord> out;
  if (s.step()) out = read_ranking(s);
  s.reset();
  return out;
}

std::optional<RankingRecord> Store::latest_ranking_of(int64_t annotator_id) {
  static const std::string sql = std::string("SELECT ") + kRankingColumns +
                                 " FROM rankings r JOIN annotators a ON a.id=r.annotator_id "
                                 "WHERE r.annotator_id=? ORDER BY r.id DESC LIMIT 1";
  auto& s = stmt(sql.c_str());
  s.bind(1, annotator_id);
  std::optional<RankingRecord> out;
  if (s.step()) out = read_ranking(s);
  s.reset();
  return out;
}

void Store::delete_ranking(const RankingRecord& r) {
  stmt("DELETE FROM rankings WHERE id=?").bind(1, r.id).run();
  if (r.counts() && sqlite3_changes(db_.get()) >= 0)
    stmt("UPDATE tasks SET done_count = done_count - 1 WHERE id=?").bind(1, r.task_id).run();
}

std::vector<RankingRecord> Store::all_rankings() {
  static const std::string sql = std::string("SELECT ") + kRankingColumns +
                                 " FROM rankings r JOIN annotators a ON a.id=r.annotator_id "
                                 "ORDER BY r.id";
  auto& s = stmt(sql.c_str());
  std::vector<RankingRecord> out;
  while (s.step()) out.push_back(read_ranking(s));
  s.reset();
  return out;
}

int64_t Store::ranking_count() {
  auto& s = stmt("SELECT count(*) FROM rankings");
  s.step();
  int64_t n = s.int64(0);
  s.reset();
  return n;
}

std::vector<double> Store::seconds_of(int64_t annotator_id) {
  auto& s = stmt("SELECT seconds FROM rankings WHERE annotator_id=?");
  s.bind(1, annotator_id);
  std::vector<double> out;
  while (s.step()) out.push_back(s.real(0));
  s.reset();
  return out;
}

std::string Store::integrity_check() {
  Statement s(db_.get(), "PRAGMA integrity_check");
  return s.step() ? s.text(0) : std::string("no result");
}

}  // namespace rlhf::annotation
