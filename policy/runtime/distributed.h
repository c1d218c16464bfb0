// Data parallelism on PyTorch's c10d: the process group every trainer (SFT, reward, PPO) uses to
// split a global batch across ranks and sum what the ranks computed.
//
// Ranks are started by `rlhf launch`, by `torchrun --no-python`, or by a scheduler, and read only
// torchrun's environment contract (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT). Rank 0 hosts a c10d TCPStore at MASTER_ADDR:MASTER_PORT (under torchrun, whose
// agent hosts it already, rank 0 connects to the agent's store; see WorldEnv::agent_store); the
// collectives run on Gloo (CPU tensors) or, in CUDA builds of libtorch that have it, NCCL (CUDA
// tensors). Without WORLD_SIZE (or with 1) the process is alone and no collective communicates: the
// single-process path is the same code with nothing to sum.
//
// Every collective is a blocking call that every rank must make in the same order with tensors of
// the same shapes (the trainers guarantee it: all ranks hold the whole data set and walk the same
// global batches). A collective that waits longer than the timeout (RLHF_DIST_TIMEOUT_S, default
// 600 s) throws, and a rank that dies closes its connections so its peers' collectives fail at
// once: a dead rank never hangs the others.
//
// Writes that matter (checkpoints, metrics, manifests, rollouts of rank 0) are made by rank 0
// alone; `is_root()` says which rank that is.
//
// Errors: rlhf::Error for a malformed environment, a group that cannot be joined within the
// timeout, or a missing backend (NCCL / Gloo), naming the variable, address or device; a
// collective that fails or times out throws what c10d throws (a std::exception, typically
// c10::Error). Thread safety: a Comm is used from one thread at a time (collectives must be issued
// in the same order on every rank); world() joins once (std::call_once) and may be called from any
// thread. Ownership: join() returns a Comm owned by the caller; world()'s lives until the process
// exits.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace rlhf::policy::dist {

// Where this process sits, from torchrun's environment variables.
struct WorldEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::chrono::seconds timeout{600};  // RLHF_DIST_TIMEOUT_S
  // TORCHELASTIC_USE_AGENT_STORE=True: torchrun's agent already hosts the TCPStore at
  // MASTER_ADDR:MASTER_PORT, so rank 0 connects to it as a client like the others, and every key
  // lives under store_prefix ("/worker/attempt_<TORCHELASTIC_RESTART_COUNT>", as PyTorch's own
  // workers do), so a restarted attempt never reads the keys of an earlier one.
  bool agent_store = false;
  std::string store_prefix;
  // RLHF_DIST_LOCAL_ADDR: the address of this machine the Gloo connections bind to and announce to
  // the other ranks ("" = chosen as Comm::join says).
  std::string local_addr;
};

// Reads the contract through `get` (returns nullptr for an unset variable). WORLD_SIZE unset means
// one process; a malformed or inconsistent value (RANK >= WORLD_SIZE, a port outside 1..65535)
// throws rlhf::Error naming the variable, its value and what was expected.
WorldEnv parse_world_env(const std::function<const char*(const char*)>& get);

class Backend;  // the c10d process group behind a Comm (distributed.cpp)

class Comm {
 public:
  Comm() = default;  // a world of one: every collective returns its input

  // Joins the group described by env (blocks until all world_size ranks have joined, at most
  // env.timeout). `device` picks the backend: CPU -> Gloo, CUDA -> NCCL (throws when this libtorch
  // has no NCCL). Gloo's connections use, in this order: the interface GLOO_SOCKET_IFNAME names;
  // the address env.local_addr (RLHF_DIST_LOCAL_ADDR) names; MASTER_ADDR itself when it is a
  // loopback address (one machine); else the local address this machine reaches MASTER_ADDR from
  // (its route), never the address the hostname resolves to (Debian maps it to 127.0.1.1, which
  // other machines cannot reach).
  static std::unique_ptr<Comm> join(const WorldEnv& env, const torch::Device& device);

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool is_root() const { return rank_ == 0; }
  bool alone() const { return size_ == 1; }
  const WorldEnv& env() const { return env_; }

  // In-place elementwise sum over ranks. The tensors may differ in shape and dtype; each must be
  // contiguous and live on the backend's device.
  void all_reduce_sum(std::vector<torch::Tensor>& tensors);

  // Sums of small host values (statistics: counts, loss sums), in float64.
  std::vector<double> sum(const std::vector<double>& values);
  double sum(double value) { return sum(std::vector<double>{value})[0]; }
  // Elementwise maxima of small host values.
  std::vector<double> max(const std::vector<double>& values);
  double max(double value) { return max(std::vector<double>{value})[0]; }

  // Every rank's bytes, in rank order (rollout records, error texts).
  std::vector<std::string> all_gather_bytes(const std::string& mine);

  // Rank `root`'s tensor values copied into every rank's tensor (same shape everywhere).
  void broadcast(std::vector<torch::Tensor>& tensors, int root = 0);

  void barrier();

 private:
  std::shared_ptr<Backend> backend_;
  WorldEnv env_;
  int rank_ = 0;
  int size_ = 1;
};

// The process's communicator: joined on first use from the environment (parse_world_env over
// getenv) with the given device's backend, then the same object for the life of the process. A
// process that is alone gets a Comm of one.
Comm& world(const torch::Device& device = torch::kCPU);

// Sums the gradients of `params` over ranks in flat buckets of at most bucket_bytes (fewer, larger
// messages; the tensors keep their own storage). A parameter without a gradient on this rank
// counts as a zero gradient and gets one, so every rank sends the same buckets.
void all_reduce_gradients(Comm& comm, const std::vector<torch::Tensor>& params,
                          int64_t bucket_bytes = 16 << 20);

// The [begin, end) share of n items that `rank` of `size` takes: contiguous, in rank order, sizes
// differing by at most one (the first n % size ranks take one more).
std::pair<int64_t, int64_t> shard_range(int64_t n, int rank, int size);

// torch intra-op threads for one of `local_world_size` ranks on this machine when the config
// leaves threads at 0: the cores divided among the local ranks (at least 1).
int threads_per_rank(int local_world_size);

}  // namespace rlhf::policy::dist
