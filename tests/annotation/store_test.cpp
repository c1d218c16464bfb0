#include <gtest/gtest.h>
#include <sqlite3.h>

#include "annotation/sqlite_store.h"
#include "common/error.h"
#include "common/files.h"
#include "tests/test_support.h"

namespace ann = rlhf::annotation;
using rlhf::testing::TempDir;

namespace {
std::string pragma(const std::string& db, const std::string& sql) {
  sqlite3* h = nullptr;
  sqlite3_open(db.c_str(), &h);
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(h, sql.c_str(), -1, &s, nullptr);
  std::string out;
  if (sqlite3_step(s) == SQLITE_ROW) out = reinterpret_cast<const char*>(sqlite3_column_text(s, 0));
  sqlite3_finalize(s);
  sqlite3_close(h);
  return out;
}

// Removes what migrations v3 and v4 added (a file as version 2 left it).
const char* const kDowngradeToVersion2 =
    "ALTER TABLE prompts DROP COLUMN messages;"
    " DROP TRIGGER tasks_done_within_overlap_insert; DROP TRIGGER tasks_done_within_overlap_update;"
    " DROP TABLE quarantined_tasks; DROP TABLE import_progress; PRAGMA user_version=2;";
}  // namespace

TEST(Store, CreatesCurrentSchemaWithWalAndForeignKeys) {
  TempDir dir("store");
  std::string path = dir / "a.db";
  {
    ann::Store store(path);
    EXPECT_EQ(store.schema_version(), ann::Store::kSchemaVersion);
    sqlite3_stmt* s = nullptr;
    sqlite3_prepare_v2(store.db(), "PRAGMA foreign_keys", -1, &s, nullptr);
    ASSERT_EQ(sqlite3_step(s), SQLITE_ROW);
    EXPECT_EQ(sqlite3_column_int(s, 0), 1);
    sqlite3_finalize(s);
    sqlite3_prepare_v2(store.db(), "PRAGMA synchronous", -1, &s, nullptr);
    ASSERT_EQ(sqlite3_step(s), SQLITE_ROW);
    EXPECT_EQ(sqlite3_column_int(s, 0), 2);  // FULL
    sqlite3_finalize(s);
    // A foreign key violation is refused.
    EXPECT_NE(sqlite3_exec(store.db(),
                           "INSERT INTO tasks(prompt_id, overlap, created_at) VALUES(999, 1, 'x')",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
  }
  EXPECT_EQ(pragma(path, "PRAGMA journal_mode"), "wal");
  EXPECT_EQ(pragma(path, "PRAGMA user_version"), std::to_string(ann::Store::kSchemaVersion));
}

TEST(Store, MigratesAnOlderSchemaAndRefusesANewerOne) {
  TempDir dir("store");
  std::string old_db = dir / "old.db";
  {  // a version-0 database (an empty SQLite file someone created)
    sqlite3* h = nullptr;
    sqlite3_open(old_db.c_str(), &h);
    sqlite3_exec(h, "CREATE TABLE unrelated(x); PRAGMA user_version=0;", nullptr, nullptr, nullptr);
    sqlite3_close(h);
  }
  {
    ann::Store store(old_db);
    EXPECT_EQ(store.schema_version(), ann::Store::kSchemaVersion);
    EXPECT_EQ(store.task_count(), 0);
  }
  std::string new_db = dir / "new.db";
  {
    sqlite3* h = nullptr;
    sqlite3_open(new_db.c_str(), &h);
    sqlite3_exec(h, "PRAGMA user_version=99;", nullptr, nullptr, nullptr);
    sqlite3_close(h);
  }
  try {
    ann::Store store(new_db);
    FAIL() << "a newer schema must be refused";
  } catch (const rlhf::Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("newer"), std::string::npos) << msg;
    EXPECT_NE(msg.find(new_db), std::string::npos) << msg;
  }
  ann::StoreOptions no_create;
  no_create.create = false;
  EXPECT_THROW(ann::Store(dir / "missing.db", no_create), rlhf::Error);
  EXPECT_FALSE(rlhf::file_exists(dir / "missing.db"));
}

TEST(Store, DeliveriesOutliveLeasesAndAreBackfilledFromAVersion1File) {
  TempDir dir("store");
  std::string path = dir / "a.db";
  {
    ann::Store store(path);
    ann::Store::Transaction txn(store);
    int64_t t = store.add_task({"p", {"a", "b"}, "", "", "test"}, 1);
    int64_t a = store.import_annotator("a");
    int64_t b = store.import_annotator("b");
    store.put_lease(t, a, 100);
    EXPECT_EQ(store.lease_expiry(t, a), 100);
    EXPECT_TRUE(store.was_delivered(t, a));
    EXPECT_FALSE(store.was_delivered(t, b));
    EXPECT_EQ(store.live_leases_of_others(t, b, 50), 1);
    EXPECT_EQ(store.live_leases_of_others(t, b, 100), 0);  // expired at 100
    store.drop_expired_leases(200);
    EXPECT_FALSE(store.lease_expiry(t, a));
    EXPECT_TRUE(store.was_delivered(t, a));  // the delivery stays
    store.put_lease(t, b, 300);
    txn.commit();
    // Back to a version-1 file: no deliveries table, b's lease still there.
    ASSERT_EQ(sqlite3_exec(store.db(),
                           (std::string(kDowngradeToVersion2) +
                            "DROP TABLE deliveries; PRAGMA user_version=1;")
                               .c_str(),
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
  }
  ann::Store store(path);
  EXPECT_EQ(store.schema_version(), ann::Store::kSchemaVersion);
  EXPECT_TRUE(store.was_delivered(1, 2));   // backfilled from b's lease
  EXPECT_FALSE(store.was_delivered(1, 1));  // a's lease was gone before the upgrade
}

TEST(Store, TokensAreRandomAndStoredOnlyAsSha256) {
  TempDir dir("store");
  std::string path = dir / "a.db";
  ann::Store store(path);
  std::string t1 = store.add_annotator("alice", "annotator");
  std::string t2 = store.add_annotator("bob", "expert");
  EXPECT_EQ(t1.size(), 64u);
  EXPECT_NE(t1, t2);
  EXPECT_THROW(store.add_annotator("alice", "annotator"), rlhf::Error);
  auto a = store.annotator_by_token(t1);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->name, "alice");
  EXPECT_FALSE(store.annotator_by_token("not-a-token"));
  EXPECT_EQ(pragma(path, "SELECT token_sha256 FROM annotators WHERE name='alice'"),
            rlhf::sha256_hex(t1));
  EXPECT_EQ(pragma(path, "SELECT count(*) FROM annotators WHERE token_sha256='" + t1 + "'"), "0");
  store.set_annotator_active("alice", false);
  EXPECT_FALSE(store.annotator_by_token(t1)->active);
  EXPECT_THROW(store.set_annotator_active("carol", false), rlhf::Error);
}

TEST(Store, TasksKeepAnswersInOrderWithTheirOrigin) {
  TempDir dir("store");
  ann::Store store(dir / "a.db");
  ann::TaskInput t{"What is 2+2?", {"4", "5", "four"}, "sft-v1", "{\"temperature\":0.7}", "test"};
  int64_t id;
  {
    ann::Store::Transaction txn(store);
    id = store.add_task(t, 2);
    store.add_task({"What is 2+2?", {"x", "y"}, "", "", "test"}, 1);  // same prompt, shared row
    txn.commit();
  }
  auto v = store.task(id);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->prompt, "What is 2+2?");
  EXPECT_EQ(v->answers, (std::vector<std::string>{"4", "5", "four"}));
  EXPECT_EQ(v->overlap, 2);
  EXPECT_EQ(pragma(dir / "a.db", "SELECT count(*) FROM prompts"), "1");
  EXPECT_EQ(pragma(dir / "a.db", "SELECT model || sampling FROM answers LIMIT 1"),
            "sft-v1{\"temperature\":0.7}");
  EXPECT_THROW(store.add_task({"p", {"only one"}, "", "", ""}, 1), rlhf::Error);
  EXPECT_THROW(store.add_task({"p", {"a", "b"}, "", "", ""}, 0), rlhf::Error);
  EXPECT_FALSE(store.task(12345));
}

TEST(Store, PromptsAreDistinctAndInTheOrderFirstAdded) {
  TempDir dir("store");
  ann::Store store(dir / "a.db");
  EXPECT_TRUE(store.prompts().empty());
  {
    ann::Store::Transaction txn(store);
    store.add_task({"zebra?", {"a", "b"}, "", "", "test"}, 1);
    store.add_task({"apple?", {"a", "b"}, "", "", "test"}, 1);
    store.add_task({"zebra?", {"c", "d"}, "", "", "test"}, 1);  // shares the first prompt row
    store.add_task({"line one\nline two", {"a", "b"}, "", "", "test"}, 1);
    txn.commit();
  }
  EXPECT_EQ(store.prompts(), (std::vector<std::string>{"zebra?", "apple?", "line one\nline two"}));
  // A second connection (read-only use, as the ppo stage opens it) sees the same list.
  ann::StoreOptions so;
  so.create = false;
  ann::Store reader(dir / "a.db", so);
  EXPECT_EQ(reader.prompts().size(), 3u);
}

TEST(Store, TransactionRollsBackUnlessCommitted) {
  TempDir dir("store");
  ann::Store store(dir / "a.db");
  {
    ann::Store::Transaction txn(store);
    store.add_task({"p", {"a", "b"}, "", "", ""}, 1);
  }
  EXPECT_EQ(store.task_count(), 0);
  EXPECT_EQ(store.integrity_check(), "ok");
}

TEST(Store, DoneCountCannotExceedOverlap) {
  TempDir dir("store");
  ann::Store store(dir / "a.db");
  ann::Store::Transaction txn(store);
  int64_t t = store.add_task({"p", {"a", "b"}, "", "", "test"}, 1);
  int64_t a = store.import_annotator("a");
  int64_t b = store.import_annotator("b");
  ann::RankingRecord r;
  r.task_id = t;
  r.annotator_id = a;
  r.groups = {{0}, {1}};
  store.insert_ranking(r);
  r.annotator_id = b;
  try {
    store.insert_ranking(r);  // a second counted ranking on an overlap-1 task
    FAIL() << "expected the constraint to refuse it";
  } catch (const rlhf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("done_count <= tasks.overlap"), std::string::npos)
        << e.what();
  }
  EXPECT_NE(sqlite3_exec(store.db(), "UPDATE tasks SET done_count = 5", nullptr, nullptr, nullptr),
            SQLITE_OK);
  EXPECT_NE(sqlite3_exec(store.db(),
                         "INSERT INTO tasks(prompt_id, overlap, done_count, created_at) "
                         "VALUES(1, 1, 2, 'now')",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  EXPECT_EQ(store.task(t)->done_count, 1);
}

TEST(Store, MigrationToVersion3RepairsTasksOverTheirOverlapAndAddsTheConstraint) {
  TempDir dir("store");
  std::string path = dir / "a.db";
  {
    ann::Store store(path);
    ann::Store::Transaction txn(store);
    store.add_task({"p", {"a", "b"}, "", "", "test"}, 1);
    store.add_task({"q", {"a", "b"}, "", "", "test"}, 3);
    txn.commit();
    // A version-2 file written by older code that let a task go over its overlap.
    ASSERT_EQ(sqlite3_exec(store.db(),
                           (std::string(kDowngradeToVersion2) +
                            "UPDATE tasks SET done_count = 3 WHERE id = 1;"
                            "UPDATE tasks SET done_count = 2 WHERE id = 2;")
                               .c_str(),
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
  }
  ::testing::internal::CaptureStderr();
  ann::Store store(path);
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(
      log.find("1 task(s) (the first: task 1) had more counted judgements than their overlap"),
      std::string::npos)
      << log;
  EXPECT_EQ(store.schema_version(), ann::Store::kSchemaVersion);
  EXPECT_EQ(store.task(1)->overlap, 3);  // raised to what was done: the task is complete
  EXPECT_EQ(store.task(2)->overlap, 3);  // untouched
  EXPECT_NE(sqlite3_exec(store.db(), "UPDATE tasks SET done_count = 4 WHERE id = 2", nullptr,
                         nullptr, nullptr),
            SQLITE_OK);
  EXPECT_EQ(store.integrity_check(), "ok");
}

TEST(Store, SavepointRefusesToRunOutsideATransactionAndReportsALostOne) {
  TempDir dir("store");
  ann::Store store(dir / "a.db");
  EXPECT_THROW(ann::Store::Savepoint sp(store), rlhf::Error);  // would start its own transaction
  EXPECT_FALSE(store.in_transaction());
  ann::Store::Transaction txn(store);
  {
    ann::Store::Savepoint sp(store);
    store.add_task({"p", {"a", "b"}, "", "", "test"}, 1);
    EXPECT_TRUE(sp.roll_back());  // undone, the transaction goes on
  }
  EXPECT_EQ(store.task_count(), 0);
  ann::Store::Savepoint sp(store);
  store.add_task({"q", {"a", "b"}, "", "", "test"}, 1);
  ASSERT_EQ(sqlite3_exec(store.db(), "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  EXPECT_FALSE(sp.roll_back());  // the whole transaction is gone: nothing may be committed
}

TEST(Store, QuarantinedTasksAreNeverOfferedAgain) {
  TempDir dir("store");
  ann::Store store(dir / "a.db");
  ann::Store::Transaction txn(store);
  int64_t t1 = store.add_task({"p", {"a", "b"}, "", "", "test"}, 1);
  int64_t t2 = store.add_task({"q", {"a", "b"}, "", "", "test"}, 1);
  int64_t a = store.import_annotator("a");
  store.put_lease(t1, a, 100);
  store.quarantine_task(t1, "task_too_large: test");
  store.quarantine_task(t1, "second reason is ignored");
  EXPECT_FALSE(store.held_lease(a, 50));  // its lease was dropped
  EXPECT_EQ(store.next_open_task(a, 50), t2);
  EXPECT_EQ(store.remaining_for(a), 1);
  ASSERT_EQ(store.quarantined_tasks().size(), 1u);
  EXPECT_EQ(store.quarantined_tasks()[0].task_id, t1);
  EXPECT_EQ(store.quarantined_tasks()[0].reason, "task_too_large: test");
}
