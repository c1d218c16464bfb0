#include "tests/annotation/injected_failure.h"

#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <thread>
#include <tuple>

#include "annotation/client.h"
#include "annotation/server.h"
#include "tests/fixtures/annotation_server.h"

namespace rlhf::annotation::testing {

namespace {

std::atomic<InjectedFailure> g_kind{InjectedFailure::kDiskFull};

// sqlite3_auto_extension entry point: runs on every connection opened while it is registered.
int inject_failure(sqlite3* db, const char**, const sqlite3_api_routines*) {
  const char* sql =
      g_kind == InjectedFailure::kDiskFull
          ? "PRAGMA max_page_count=1"  // clamped to the current size: no page may be added
          : "CREATE TEMP TRIGGER inject_rollback BEFORE INSERT ON main.rankings "
            "WHEN NEW.task_id % 5 = 0 AND NEW.skipped = 0 "
            "BEGIN SELECT RAISE(ROLLBACK, 'injected failure: transaction rolled back'); END";
  return sqlite3_exec(db, sql, nullptr, nullptr, nullptr);
}

void seed(const std::string& db, int tasks, int annotators, std::vector<std::string>* tokens) {
  Store store(db);
  Store::Transaction txn(store);
  for (int i = 0; i < tasks; ++i)
    store.add_task({"prompt " + std::to_string(i), {"a", "bb", "ccc"}, "", "", "test"}, 2);
  for (int i = 0; i < annotators; ++i)
    tokens->push_back(store.add_annotator("ann" + std::to_string(i), "annotator"));
  // A few free pages, so that some writes fit before the "disk" is full.
  internal::exec(store.db(),
                 "CREATE TABLE junk(x); INSERT INTO junk WITH RECURSIVE n(i) AS (SELECT 1 UNION "
                 "ALL SELECT i+1 FROM n WHERE i<4) SELECT zeroblob(3000) FROM n; DROP TABLE junk;");
  txn.commit();
}

// A Server constructed with the failure injected into its connection (and no other).
std::unique_ptr<Server> injected_server(const ServerOptions& o, InjectedFailure kind) {
  g_kind = kind;
  auto entry = reinterpret_cast<void (*)(void)>(&inject_failure);
  sqlite3_auto_extension(entry);
  std::unique_ptr<Server> server;
  try {
    server = std::make_unique<Server>(o);  // opens exactly one connection
  } catch (...) {
    sqlite3_cancel_auto_extension(entry);
    throw;
  }
  sqlite3_cancel_auto_extension(entry);
  return server;
}

using Key = std::tuple<int64_t, std::string, bool>;  // task, annotator, skipped

struct Annotator {
  std::unique_ptr<Connection> conn;
  std::string name;
  int64_t task = 0;  // the task being judged (0: ask for one)
  bool skip = false;
  bool done = false;
  int internal_in_a_row = 0;
  proto::Request next;
};

proto::Request next_request(const Annotator& a) {
  proto::Request r;
  r.set_schema_version(1);
  if (a.task == 0) {
    r.mutable_get_task();
  } else if (a.skip) {
    r.mutable_submit()->set_task_id(a.task);
    r.mutable_submit()->set_skip(true);
  } else {
    r.mutable_submit()->set_task_id(a.task);
    for (int i : {0, 1, 2}) r.mutable_submit()->add_groups()->add_answers(i);
  }
  return r;
}

// Updates the annotator after an answer; records acknowledgements and broken promises.
void take_answer(Annotator& a, const proto::Response& r, InjectedFailure kind, std::set<Key>* acked,
                 InjectedFailureReport* report) {
  if (r.has_error() && r.error().code() == proto::Error::INTERNAL) {
    ++report->internal_answers;
    const std::string& m = r.error().message();
    report->batch_aborts += m.find("batch's transaction was rolled back") != std::string::npos;
    report->disk_full_answers += m.find("full") != std::string::npos;
    // A ranking the injected trigger refuses is skipped instead; anything else is sent again.
    if (kind == InjectedFailure::kRollbackInBatch && a.task % 5 == 0 &&
        m.find("injected failure") != std::string::npos)
      a.skip = true;
    if (++a.internal_in_a_row >= 20) a.done = true;  // the disk stays full: give up
    return;
  }
  a.internal_in_a_row = 0;
  if (r.has_task()) {
    a.task = r.task().task_id();
    a.skip = false;
  } else if (r.has_no_task()) {
    a.done = true;
  } else if (r.has_submitted()) {
    if (!acked->insert(Key{a.task, a.name, a.skip}).second)
      report->problems.push_back("acknowledged twice: task " + std::to_string(a.task));
    a.task = 0;
  } else {
    // e.g. ALREADY_SUBMITTED for a ranking that was answered "nothing was stored"
    report->problems.push_back(a.name + " on task " + std::to_string(a.task) + ": " +
                               r.ShortDebugString());
    a.task = 0;
  }
}

void compare_with_file(const std::string& db, InjectedFailure kind, const std::set<Key>& acked,
                       InjectedFailureReport* report) {
  Store store(db);  // a fresh connection: no injected failure
  report->integrity = store.integrity_check();
  if (report->integrity != "ok") report->problems.push_back("integrity: " + report->integrity);
  std::set<Key> stored;
  for (const auto& r : store.all_rankings()) {
    stored.insert(Key{r.task_id, r.annotator, r.skipped});
    if (kind == InjectedFailure::kRollbackInBatch && r.task_id % 5 == 0 && r.counts())
      report->problems.push_back("a ranking the trigger refused is stored: task " +
                                 std::to_string(r.task_id));
  }
  report->stored = static_cast<int64_t>(stored.size());
  for (const auto& k : acked)
    if (!stored.count(k))
      report->problems.push_back("acknowledged but not stored: task " +
                                 std::to_string(std::get<0>(k)) + " by " + std::get<1>(k));
  for (const auto& k : stored)
    if (!acked.count(k))
      report->problems.push_back("stored but never acknowledged: task " +
                                 std::to_string(std::get<0>(k)) + " by " + std::get<1>(k));
}

// A new annotator connection: Hello and GetProgress (reads only, so they work on a full disk).
void serve_fresh_client(const std::string& socket, const std::string& token,
                        InjectedFailureReport* report) {
  const auto start = std::chrono::steady_clock::now();
  try {
    Connection c(socket);
    proto::Request hello;
    hello.set_schema_version(1);
    hello.mutable_hello()->set_token(token);
    proto::Response h = c.call(hello);
    proto::Request progress;
    progress.set_schema_version(1);
    progress.mutable_get_progress();
    proto::Response p = h.has_hello() ? c.call(progress) : proto::Response();
    report->fresh_client = !h.has_hello()      ? "Hello: " + h.ShortDebugString()
                           : !p.has_progress() ? "GetProgress: " + p.ShortDebugString()
                                               : "";
  } catch (const std::exception& e) {
    report->fresh_client = e.what();
  }
  report->fresh_client_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

InjectedFailureReport run_injected_failure_case(const std::string& dir, InjectedFailure kind,
                                                int annotators) {
  ServerOptions o;
  o.db_path = dir + "/case.db";
  o.socket_path = dir + "/case.sock";
  o.handle_signals = false;
  std::vector<std::string> tokens;
  // More work than the few free pages hold when the disk fills up.
  seed(o.db_path, kind == InjectedFailure::kDiskFull ? 200 : 40, annotators, &tokens);
  InjectedFailureReport report;
  std::set<Key> acked;
  {
    RunningServer server(injected_server(o, kind));
    std::vector<Annotator> team(annotators);
    for (int i = 0; i < annotators; ++i) {
      team[i].conn = std::make_unique<Connection>(o.socket_path);
      team[i].name = "ann" + std::to_string(i);
      proto::Request hello;
      hello.set_schema_version(1);
      hello.mutable_hello()->set_token(tokens[i]);
      for (int tries = 0; tries < 20; ++tries)
        if (team[i].conn->call(hello).has_hello()) break;
    }
    for (int round = 0; round < 400; ++round) {
      bool any = false;
      for (auto& a : team) {  // all requests of the round are in flight together
        if (a.done) continue;
        any = true;
        a.next = next_request(a);
        a.conn->send(a.next);
      }
      if (!any) break;
      for (auto& a : team)
        if (!a.done) take_answer(a, a.conn->receive(), kind, &acked, &report);
    }
    serve_fresh_client(o.socket_path, tokens.front(), &report);
  }
  report.acknowledged = static_cast<int64_t>(acked.size());
  compare_with_file(o.db_path, kind, acked, &report);
  return report;
}

}  // namespace rlhf::annotation::testing
