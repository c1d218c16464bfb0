// policy/runtime/distributed.h: the torchrun environment contract, shard ranges, and real 2-rank
// Gloo collectives over loopback. The multi-rank cases run this test binary twice more as workers
// (DistributedWorker.*, which does nothing unless RLHF_DIST_WORKER_OUT is set).
#include "policy/runtime/distributed.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/launch.h"
#include "common/process.h"
#include "tests/test_support.h"

namespace rlhf::policy::dist {
namespace {

WorldEnv env_of(const std::map<std::string, std::string>& vars) {
  return parse_world_env([&](const char* n) -> const char* {
    auto it = vars.find(n);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

TEST(WorldEnv, UnsetMeansOneProcess) {
  WorldEnv e = env_of({});
  EXPECT_EQ(e.world_size, 1);
  EXPECT_EQ(e.rank, 0);
}

TEST(WorldEnv, ReadsTorchrunContract) {
  WorldEnv e = env_of({{"WORLD_SIZE", "4"},
                       {"RANK", "3"},
                       {"LOCAL_RANK", "1"},
                       {"LOCAL_WORLD_SIZE", "2"},
                       {"MASTER_ADDR", "10.0.0.7"},
                       {"MASTER_PORT", "29123"},
                       {"RLHF_DIST_TIMEOUT_S", "30"}});
  EXPECT_EQ(e.world_size, 4);
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.local_world_size, 2);
  EXPECT_EQ(e.master_addr, "10.0.0.7");
  EXPECT_EQ(e.master_port, 29123);
  EXPECT_EQ(e.timeout.count(), 30);
}

// torchrun's agent hosts the store: every rank (rank 0 too) joins it as a client, under the
// attempt's prefix, as PyTorch's own workers do.
TEST(WorldEnv, TorchrunAgentStoreIsJoinedAsAClient) {
  EXPECT_FALSE(env_of({{"WORLD_SIZE", "2"}, {"RANK", "0"}}).agent_store);
  EXPECT_FALSE(
      env_of({{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"TORCHELASTIC_USE_AGENT_STORE", "False"}})
          .agent_store);
  WorldEnv e = env_of({{"WORLD_SIZE", "2"},
                       {"RANK", "0"},
                       {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                       {"TORCHELASTIC_RESTART_COUNT", "3"}});
  EXPECT_TRUE(e.agent_store);
  EXPECT_EQ(e.store_prefix, "/worker/attempt_3");
}

TEST(WorldEnv, ReadsTheLocalAddress) {
  EXPECT_EQ(env_of({{"WORLD_SIZE", "2"}, {"RANK", "1"}}).local_addr, "");
  EXPECT_EQ(
      env_of({{"WORLD_SIZE", "2"}, {"RANK", "1"}, {"RLHF_DIST_LOCAL_ADDR", "10.0.0.2"}}).local_addr,
      "10.0.0.2");
}

TEST(WorldEnv, BadValuesNameTheVariable) {
  auto message = [](const std::map<std::string, std::string>& vars) {
    try {
      env_of(vars);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({{"WORLD_SIZE", "2"}, {"RANK", "2"}}).find("RANK=\"2\""), std::string::npos);
  EXPECT_NE(message({{"WORLD_SIZE", "two"}}).find("WORLD_SIZE=\"two\""), std::string::npos);
  EXPECT_NE(message({{"WORLD_SIZE", "2"}}).find("RANK is unset"), std::string::npos);
  EXPECT_NE(message({{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_PORT", "70000"}})
                .find("MASTER_PORT=\"70000\": expected an integer in 1..65535"),
            std::string::npos);
}

using Range = std::pair<int64_t, int64_t>;

TEST(ShardRange, ContiguousAndBalanced) {
  EXPECT_EQ(shard_range(10, 0, 3), Range(0, 4));
  EXPECT_EQ(shard_range(10, 1, 3), Range(4, 7));
  EXPECT_EQ(shard_range(10, 2, 3), Range(7, 10));
  EXPECT_EQ(shard_range(1, 1, 2), Range(1, 1));
  EXPECT_EQ(shard_range(5, 0, 1), Range(0, 5));
}

TEST(Comm, AloneReturnsInputs) {
  Comm c;
  EXPECT_TRUE(c.alone());
  EXPECT_EQ(c.sum(2.5), 2.5);
  std::vector<torch::Tensor> ts{torch::ones({3})};
  c.all_reduce_sum(ts);
  EXPECT_EQ(ts[0].sum().item<float>(), 3.0f);
  EXPECT_EQ(c.all_gather_bytes("x"), std::vector<std::string>{"x"});
}

// ---- two real ranks ---------------------------------------------------------------------------

int free_port() { return rlhf::launch::free_loopback_port(); }

// Starts this binary as rank `rank` of 2 running DistributedWorker.<mode>, with only the
// variables below as its environment.
rlhf::process::Child spawn_worker(int rank, int port, const std::string& mode,
                                  const std::string& out) {
  rlhf::process::Options o;
  o.argv = {"/proc/self/exe", "--gtest_filter=DistributedWorker." + mode};
  o.clear_env = true;
  o.env = {{"WORLD_SIZE", "2"},
           {"RANK", std::to_string(rank)},
           {"LOCAL_RANK", std::to_string(rank)},
           {"LOCAL_WORLD_SIZE", "2"},
           {"MASTER_ADDR", "127.0.0.1"},
           {"MASTER_PORT", std::to_string(port)},
           {"RLHF_DIST_TIMEOUT_S", "20"},
           {"OMP_NUM_THREADS", "1"},
           {"RLHF_DIST_WORKER_OUT", out}};
  return rlhf::process::Child::start(o);
}

int wait_exit(rlhf::process::Child& child) { return child.wait().code(); }

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(Comm, TwoRanksSumGatherAndBucketGradients) {
  rlhf::testing::TempDir dir("dist");
  const int port = free_port();
  auto a = spawn_worker(0, port, "Collectives", dir / "r0.txt");
  auto b = spawn_worker(1, port, "Collectives", dir / "r1.txt");
  EXPECT_EQ(wait_exit(a), 0);
  EXPECT_EQ(wait_exit(b), 0);
  for (const char* f : {"r0.txt", "r1.txt"}) {
    const std::string got = slurp(dir / f);
    EXPECT_NE(got.find("sum 3 30"), std::string::npos) << f << ": " << got;
    EXPECT_NE(got.find("gather rank0|rank1-xx"), std::string::npos) << f << ": " << got;
    EXPECT_NE(got.find("grads 1 3 5 7 9 | 4 4"), std::string::npos) << f << ": " << got;
    EXPECT_NE(got.find("broadcast 42"), std::string::npos) << f << ": " << got;
    EXPECT_NE(got.find("max 2\n"), std::string::npos) << f << ": " << got;
  }
}

TEST(Comm, DeadRankFailsItsPeerQuickly) {
  rlhf::testing::TempDir dir("dist");
  const int port = free_port();
  const auto t0 = std::chrono::steady_clock::now();
  auto a = spawn_worker(0, port, "DieOnRankOne", dir / "r0.txt");
  auto b = spawn_worker(1, port, "DieOnRankOne", dir / "r1.txt");
  const int rb = wait_exit(b);
  const int ra = wait_exit(a);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(rb, 128 + SIGKILL);
  EXPECT_NE(ra, 0);
  EXPECT_LT(s, 20.0) << "the surviving rank waited for the dead one";
  EXPECT_NE(slurp(dir / "r0.txt").find("error"), std::string::npos);
}

// ---- worker side (only with RLHF_DIST_WORKER_OUT) ----------------------------------------------

const char* worker_out() { return std::getenv("RLHF_DIST_WORKER_OUT"); }

TEST(DistributedWorker, Collectives) {
  if (!worker_out()) GTEST_SKIP() << "runs as a spawned rank only";
  Comm& c = world();
  std::ofstream out(worker_out());
  const int r = c.rank();
  auto s = c.sum(std::vector<double>{1.0 + r, 10.0 * (1 + r)});
  out << "sum " << s[0] << " " << s[1] << "\n";
  out << "max " << c.max(-5.0 + 7 * r) << "\n";
  auto g = c.all_gather_bytes(r == 0 ? "rank0" : "rank1-xx");
  out << "gather " << g[0] << "|" << g[1] << "\n";
  // Two parameters: [5] with gradient 0..4 (rank 0) / 1..5 (rank 1), and [2] with none on rank 0.
  auto p1 = torch::zeros({5}, torch::requires_grad());
  auto p2 = torch::zeros({2}, torch::requires_grad());
  p1.mutable_grad() = r == 0 ? torch::arange(5, torch::kFloat32) : torch::arange(5) + 1.0;
  if (r == 1) p2.mutable_grad() = torch::full({2}, 4.0f);
  all_reduce_gradients(c, {p1, p2}, /*bucket_bytes=*/8);  // forces one bucket per tensor
  out << "grads";
  for (int i = 0; i < 5; ++i) out << " " << p1.grad()[i].item<float>();
  out << " | " << p2.grad()[0].item<float>() << " " << p2.grad()[1].item<float>() << "\n";
  std::vector<torch::Tensor> bt{torch::full({1}, r == 0 ? 42.0f : -1.0f)};
  c.broadcast(bt, 0);
  out << "broadcast " << bt[0].item<float>() << "\n";
  c.barrier();
}

TEST(DistributedWorker, DieOnRankOne) {
  if (!worker_out()) GTEST_SKIP() << "runs as a spawned rank only";
  Comm& c = world();
  std::ofstream out(worker_out());
  c.barrier();
  if (c.rank() == 1) ::kill(::getpid(), SIGKILL);
  try {
    c.sum(1.0);
    c.barrier();
    out << "no error\n";
  } catch (const std::exception& e) {
    out << "error " << e.what() << "\n";
    out.flush();
    std::exit(3);
  }
}

}  // namespace
}  // namespace rlhf::policy::dist
