// Load and durability: 16 simulated annotators through real sockets; overlap 2; a SIGKILLed
// server process restarted under load.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "annotation/server.h"
#include "annotation/simulator.h"
#include "common/files.h"
#include "tests/test_support.h"

extern char** environ;

namespace ann = rlhf::annotation;
using rlhf::testing::TempDir;

namespace {

constexpr int kAnnotators = 16;
constexpr int kTasks = 1000;  // x overlap 2 = 2,000 rankings
constexpr int kOverlap = 2;

struct Ack {
  int64_t annotator;  // index
  int64_t task_id;
  int64_t ranking_id;
};

std::vector<std::string> seed(const std::string& db) {
  ann::Store store(db);
  ann::Store::Transaction txn(store);
  for (int i = 0; i < kTasks; ++i)
    store.add_task({"prompt " + std::to_string(i),
                    {std::string(1 + i % 5, 'a'), std::string(1 + i % 3, 'b'), "ccc", "dddd"},
                    "",
                    "",
                    "load"},
                   kOverlap);
  std::vector<std::string> tokens;
  for (int i = 0; i < kAnnotators; ++i)
    tokens.push_back(store.add_annotator("sim" + std::to_string(i), "simulated"));
  txn.commit();
  return tokens;
}

// Runs 16 simulators to completion; returns every acknowledgement.
std::vector<Ack> run_simulators(const std::string& socket, const std::vector<std::string>& tokens,
                                std::atomic<int64_t>* ack_count) {
  std::mutex mu;
  std::vector<Ack> acks;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int i = 0; i < kAnnotators; ++i) {
    threads.emplace_back([&, i] {
      ann::SimulateOptions o;
      o.socket_path = socket;
      o.token = tokens[i];
      o.teacher = "length";
      o.noise = 0.2;
      o.seed = static_cast<uint64_t>(i);
      o.retry_seconds = 30;
      try {
        ann::simulate(o, [&](int64_t task, int64_t ranking) {
          std::lock_guard<std::mutex> l(mu);
          acks.push_back({i, task, ranking});
          ++*ack_count;
        });
      } catch (const std::exception& e) {
        ADD_FAILURE() << "simulator " << i << ": " << e.what();
        ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures, 0);
  return acks;
}

// Checks the invariants against the database file.
void check_store(const std::string& db, const std::vector<Ack>& acks) {
  ann::Store store(db);
  EXPECT_EQ(store.integrity_check(), "ok");
  auto rankings = store.all_rankings();
  std::map<int64_t, ann::RankingRecord> by_id;
  for (auto& r : rankings) by_id[r.id] = r;
  // Every acknowledged ranking is stored, exactly once, as acknowledged.
  std::set<int64_t> acked_ids;
  for (const auto& a : acks) {
    EXPECT_TRUE(acked_ids.insert(a.ranking_id).second) << "ranking acked twice " << a.ranking_id;
    auto it = by_id.find(a.ranking_id);
    ASSERT_NE(it, by_id.end()) << "acknowledged ranking " << a.ranking_id << " is missing";
    EXPECT_EQ(it->second.task_id, a.task_id);
    EXPECT_EQ(it->second.annotator, "sim" + std::to_string(a.annotator));
  }
  // No task over its overlap, no annotator twice on a task, and the queue is finished.
  std::map<int64_t, int> per_task;
  std::set<std::pair<int64_t, int64_t>> seen;
  for (auto& r : rankings) {
    ++per_task[r.task_id];
    EXPECT_TRUE(seen.insert({r.task_id, r.annotator_id}).second)
        << "annotator " << r.annotator << " ranked task " << r.task_id << " twice";
  }
  EXPECT_EQ(static_cast<int>(per_task.size()), kTasks);
  for (auto& [task, n] : per_task) EXPECT_EQ(n, kOverlap) << "task " << task;
  EXPECT_EQ(store.ranking_count(), kTasks * kOverlap);
}

pid_t spawn_server(const std::string& db, const std::string& socket) {
  std::string bin = RLHF_TEST_SERVER;
  std::vector<std::string> args = {bin, "--db", db, "--socket", socket};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  EXPECT_EQ(posix_spawn(&pid, bin.c_str(), nullptr, nullptr, argv.data(), environ), 0);
  for (int i = 0; i < 500 && !rlhf::file_exists(socket); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return pid;
}

}  // namespace

TEST(Load, SixteenAnnotatorsTwoThousandRankingsOverlapTwo) {
  TempDir dir("load");
  std::string db = dir / "a.db", socket = dir / "s.sock";
  auto tokens = seed(db);
  ann::ServerOptions o;
  o.db_path = db;
  o.socket_path = socket;
  o.handle_signals = false;
  std::vector<Ack> acks;
  ann::GroupCommitStats stats;
  double seconds;
  {
    ann::Server server(o);
    std::thread th([&] { server.run(); });
    std::atomic<int64_t> count{0};
    auto t0 = std::chrono::steady_clock::now();
    acks = run_simulators(socket, tokens, &count);
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    stats = server.stats();
    server.stop();
    th.join();
  }
  EXPECT_EQ(static_cast<int>(acks.size()), kTasks * kOverlap);
  check_store(db, acks);
  std::printf(
      "load: %zu acknowledged rankings in %.2f s (%.0f/s) at synchronous=FULL, "
      "%lld requests in %lld transactions (largest batch %lld)\n",
      acks.size(), seconds, acks.size() / seconds, static_cast<long long>(stats.requests),
      static_cast<long long>(stats.batches), static_cast<long long>(stats.max_batch));
}

TEST(Durability, SigkillDuringLoadLosesNoAcknowledgedRanking) {
  TempDir dir("dur");
  std::string db = dir / "a.db", socket = dir / "s.sock";
  auto tokens = seed(db);
  pid_t pid = spawn_server(db, socket);
  ASSERT_GT(pid, 0);
  std::atomic<int64_t> count{0};
  std::vector<Ack> acks;
  std::thread clients([&] { acks = run_simulators(socket, tokens, &count); });
  // Kill the server mid-load (after ~1/4 of the rankings), without any chance to clean up.
  for (int i = 0; i < 3000 && count < kTasks * kOverlap / 4; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  int64_t at_kill = count;
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_TRUE(rlhf::file_exists(socket));  // the stale socket file stays behind
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  pid = spawn_server(db, socket);  // replaces the stale socket; clients reconnect and resume
  clients.join();
  ASSERT_EQ(::kill(pid, SIGTERM), 0);
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_FALSE(rlhf::file_exists(socket));
  EXPECT_GT(at_kill, 0);
  EXPECT_LT(at_kill, kTasks * kOverlap);
  std::printf("durability: killed after %lld acks; %zu acknowledged in total\n",
              static_cast<long long>(at_kill), acks.size());
  check_store(db, acks);
}
