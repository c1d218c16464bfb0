// Sustained acknowledged rankings per second through the annotation server.
//
//   bench_annotation_server [--clients 16] [--tasks 6000] [--overlap 2] [--answers 4]
//                           [--sync FULL|NORMAL|both] [--max-batch 512] [--dir /tmp]
//
// Seeds a fresh database, starts the Server in-process, runs `clients` simulated annotators (the
// `length` teacher, one thread and one socket each) until the queue is finished, and reports
// acknowledged rankings per second (wall time from the first request to the last ack), the number
// of transactions and the mean batch size. --max-batch 1 shows the cost without group commit.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "annotation/server.h"
#include "annotation/simulator.h"

namespace ann = rlhf::annotation;

namespace {

struct Config {
  int clients = 16;
  int tasks = 6000;
  int overlap = 2;
  int answers = 4;
  std::string sync = "both";
  size_t max_batch = 512;
  std::string dir = std::filesystem::temp_directory_path().string();
};

void run(const Config& c, bool full) {
  std::string base = c.dir + "/bench_annotation_" + std::to_string(::getpid());
  std::filesystem::remove_all(base);
  std::filesystem::create_directories(base);
  std::string db = base + "/a.db", socket = base + "/s.sock";
  std::vector<std::string> tokens;
  {
    ann::StoreOptions so;
    so.synchronous_full = full;
    ann::Store store(db, so);
    ann::Store::Transaction txn(store);
    for (int i = 0; i < c.tasks; ++i) {
      ann::TaskInput t;
      t.prompt = "prompt " + std::to_string(i) + ": explain something at moderate length.";
      for (int k = 0; k < c.answers; ++k)
        t.answers.push_back(std::string(20 + (i * 7 + k * 13) % 200, 'a' + k));
      store.add_task(t, c.overlap);
    }
    for (int i = 0; i < c.clients; ++i)
      tokens.push_back(store.add_annotator("bench" + std::to_string(i), "bench"));
    txn.commit();
  }
  ann::ServerOptions o;
  o.db_path = db;
  o.socket_path = socket;
  o.synchronous_full = full;
  o.handle_signals = false;
  o.max_batch = c.max_batch;
  ann::Server server(o);
  std::thread io([&] { server.run(); });
  std::atomic<int64_t> acks{0};
  std::vector<std::thread> threads;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < c.clients; ++i)
    threads.emplace_back([&, i] {
      ann::SimulateOptions so;
      so.socket_path = socket;
      so.token = tokens[i];
      so.seed = static_cast<uint64_t>(i);
      try {
        acks += ann::simulate(so).acknowledged;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "client %d: %s\n", i, e.what());
      }
    });
  for (auto& t : threads) t.join();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto st = server.stats();
  server.stop();
  io.join();
  std::printf(
      "synchronous=%-6s clients=%d max_batch=%zu: %lld acknowledged rankings in %.2f s = %.0f "
      "rankings/s; %lld requests in %lld transactions (mean %.1f, max %lld per transaction)\n",
      full ? "FULL" : "NORMAL", c.clients, c.max_batch, static_cast<long long>(acks.load()), secs,
      acks / secs, static_cast<long long>(st.requests), static_cast<long long>(st.batches),
      st.batches ? static_cast<double>(st.requests) / st.batches : 0.0,
      static_cast<long long>(st.max_batch));
  std::fflush(stdout);
  std::filesystem::remove_all(base);
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--clients")
      c.clients = std::stoi(v);
    else if (k == "--tasks")
      c.tasks = std::stoi(v);
    else if (k == "--overlap")
      c.overlap = std::stoi(v);
    else if (k == "--answers")
      c.answers = std::stoi(v);
    else if (k == "--sync")
      c.sync = v;
    else if (k == "--max-batch")
      c.max_batch = static_cast<size_t>(std::stoul(v));
    else if (k == "--dir")
      c.dir = v;
    else {
      std::fprintf(stderr, "unknown flag %s\n", k.c_str());
      return 2;
    }
  }
  if (c.sync == "FULL" || c.sync == "both") run(c, true);
  if (c.sync == "NORMAL" || c.sync == "both") run(c, false);
  return 0;
}
