// Load and durability: 16 simulated annotators through real sockets; overlap 2; a SIGKILLed
// server process restarted under load.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "annotation/server.h"
#include "annotation/simulator.h"
#include "common/files.h"
#include "common/process.h"
#include "tests/fixtures/annotation_server.h"
#include "tests/test_support.h"

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

// annotation_test_server on `socket`; `replace_stale`: a socket file left there is the server's
// to replace (the wait for the socket then ends at once, and the clients retry).
std::unique_ptr<ann::testing::ServerProcess> spawn_server(const std::string& db,
                                                          const std::string& socket,
                                                          bool replace_stale = false) {
  ann::testing::ServerProcessOptions o;
  o.remove_stale_socket = !replace_stale;
  return std::make_unique<ann::testing::ServerProcess>(
      std::vector<std::string>{RLHF_TEST_SERVER, "--db", db, "--socket", socket}, socket, o);
}

}  // namespace

TEST(Load, SixteenAnnotatorsTwoThousandRankingsOverlapTwo) {
  TempDir dir("load");
  std::string db = dir / "a.db", socket = dir / "s.sock";
  auto tokens = seed(db);
  ann::ServerOptions o = ann::testing::test_server_options(dir);
  std::vector<Ack> acks;
  ann::GroupCommitStats stats;
  double seconds;
  {
    ann::testing::RunningServer rs(o);
    std::atomic<int64_t> count{0};
    auto t0 = std::chrono::steady_clock::now();
    acks = run_simulators(socket, tokens, &count);
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    stats = rs.server.stats();
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
  auto server = spawn_server(db, socket);
  ASSERT_TRUE(server->alive());
  std::atomic<int64_t> count{0};
  std::vector<Ack> acks;
  std::thread clients([&] { acks = run_simulators(socket, tokens, &count); });
  // Kill the server mid-load (after ~1/4 of the rankings), without any chance to clean up.
  for (int i = 0; i < 3000 && count < kTasks * kOverlap / 4; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  int64_t at_kill = count;
  const rlhf::process::ExitStatus killed = server->kill();
  ASSERT_EQ(killed.signal(), SIGKILL) << killed.describe();
  EXPECT_TRUE(rlhf::file_exists(socket));  // the stale socket file stays behind
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // Replaces the stale socket; clients reconnect and resume.
  server = spawn_server(db, socket, /*replace_stale=*/true);
  clients.join();
  EXPECT_EQ(server->stop(), 0);
  EXPECT_FALSE(rlhf::file_exists(socket));
  EXPECT_GT(at_kill, 0);
  EXPECT_LT(at_kill, kTasks * kOverlap);
  std::printf("durability: killed after %lld acks; %zu acknowledged in total\n",
              static_cast<long long>(at_kill), acks.size());
  check_store(db, acks);
}
