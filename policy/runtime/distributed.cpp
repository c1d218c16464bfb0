#include "policy/runtime/distributed.h"

// Gloo ships with Debian's libtorch (and libgloo-dev has its headers); c10d only declares its
// Gloo process group when USE_C10D_GLOO is defined, which libtorch's CMake files do not pass on.
#if __has_include(<gloo/algorithm.h>) && \
    __has_include(<torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>)
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1
#endif
#define RLHF_HAVE_GLOO 1
#endif

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef RLHF_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
// CUDA builds of libtorch export USE_C10D_NCCL with their torch_cuda target; the header also needs
// NCCL's own nccl.h (PyTorch wheels: site-packages/nvidia/nccl/include, found by CMakeLists.txt).
#if defined(USE_C10D_NCCL) && __has_include(<torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>) && \
    __has_include(<nccl.h>)
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#define RLHF_HAVE_NCCL 1
#endif

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include "common/error.h"

namespace rlhf::policy::dist {

// ---- environment --------------------------------------------------------------------------------

namespace {

// A whole decimal integer in [lo, hi], or an Error naming the variable.
int env_int(const char* name, const char* value, int lo, int hi) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(value, &end, 10);
  if (*value == '\0' || *end != '\0' || errno != 0 || v < lo || v > hi)
    throw Error(std::string("environment variable ") + name + "=\"" + value +
                "\": expected an integer in " + std::to_string(lo) + ".." + std::to_string(hi));
  return static_cast<int>(v);
}

}  // namespace

WorldEnv parse_world_env(const std::function<const char*(const char*)>& get) {
  WorldEnv env;
  const char* world = get("WORLD_SIZE");
  if (world == nullptr) return env;
  env.world_size = env_int("WORLD_SIZE", world, 1, 1 << 20);
  const char* rank = get("RANK");
  if (rank == nullptr && env.world_size > 1)
    throw Error("environment variable RANK is unset while WORLD_SIZE=" + std::string(world) +
                ": expected the rank of this process (0.." + std::to_string(env.world_size - 1) +
                ")");
  if (rank) env.rank = env_int("RANK", rank, 0, env.world_size - 1);
  if (const char* v = get("LOCAL_WORLD_SIZE"))
    env.local_world_size = env_int("LOCAL_WORLD_SIZE", v, 1, env.world_size);
  else
    env.local_world_size = env.world_size;
  if (const char* v = get("LOCAL_RANK"))
    env.local_rank = env_int("LOCAL_RANK", v, 0, env.local_world_size - 1);
  else
    env.local_rank = env.rank % env.local_world_size;
  if (const char* v = get("MASTER_ADDR"); v && *v) env.master_addr = v;
  if (const char* v = get("MASTER_PORT")) env.master_port = env_int("MASTER_PORT", v, 1, 65535);
  if (const char* v = get("RLHF_DIST_TIMEOUT_S"))
    env.timeout = std::chrono::seconds(env_int("RLHF_DIST_TIMEOUT_S", v, 1, 1 << 30));
  if (const char* v = get("RLHF_DIST_LOCAL_ADDR"); v && *v) env.local_addr = v;
  if (const char* v = get("TORCHELASTIC_USE_AGENT_STORE"); v && std::string(v) == "True") {
    env.agent_store = true;
    const char* attempt = get("TORCHELASTIC_RESTART_COUNT");
    env.store_prefix =
        "/worker/attempt_" +
        std::to_string(attempt ? env_int("TORCHELASTIC_RESTART_COUNT", attempt, 0, 1 << 30) : 0);
  }
  return env;
}

// ---- backends
// -------------------------------------------------------------------------------------

class Backend {
 public:
  virtual ~Backend() = default;
  virtual void all_reduce(std::vector<at::Tensor>& tensors, c10d::ReduceOp op) = 0;
  virtual void broadcast(std::vector<at::Tensor>& tensors, int root) = 0;
  virtual void all_gather(std::vector<at::Tensor>& out, at::Tensor& in) = 0;
  virtual void barrier() = 0;
  virtual torch::Device device() const = 0;
};

namespace {

// The same calls on ProcessGroupGloo and ProcessGroupNCCL (whose common base class differs
// between libtorch 1.x and 2.x, hence the template).
template <class PG>
class BackendOf : public Backend {
 public:
  BackendOf(c10::intrusive_ptr<PG> pg, torch::Device device, std::chrono::milliseconds timeout)
      : pg_(std::move(pg)), device_(device), timeout_(timeout) {}

  void all_reduce(std::vector<at::Tensor>& tensors, c10d::ReduceOp op) override {
    for (auto& t : tensors) {  // one tensor per call: c10d's multi-tensor form means multi-device
      std::vector<at::Tensor> one{t};
      c10d::AllreduceOptions o;
      o.reduceOp = op;
      pg_->allreduce(one, o)->wait(timeout_);
    }
  }
  void broadcast(std::vector<at::Tensor>& tensors, int root) override {
    for (auto& t : tensors) {
      std::vector<at::Tensor> one{t};
      c10d::BroadcastOptions o;
      o.rootRank = root;
      pg_->broadcast(one, o)->wait(timeout_);
    }
  }
  void all_gather(std::vector<at::Tensor>& out, at::Tensor& in) override {
    std::vector<std::vector<at::Tensor>> outs{out};
    std::vector<at::Tensor> ins{in};
    pg_->allgather(outs, ins)->wait(timeout_);
    out = outs[0];
  }
  void barrier() override {
    c10d::BarrierOptions o;
    if (device_.is_cuda() && device_.has_index()) o.device_ids = {device_.index()};  // NCCL's GPU
    pg_->barrier(o)->wait(timeout_);
  }
  torch::Device device() const override { return device_; }

 private:
  c10::intrusive_ptr<PG> pg_;
  torch::Device device_;
  std::chrono::milliseconds timeout_;
};

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

// The local address this machine sends to host:port from (a connected UDP socket's own address;
// connect() on UDP only picks the route, nothing is sent); "" when it cannot tell.
std::string local_address_toward(const std::string& host, int port) {
  addrinfo hints = {};
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0) return "";
  std::string local;
  for (addrinfo* a = found; a && local.empty(); a = a->ai_next) {
    const int fd = ::socket(a->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    sockaddr_storage mine = {};
    socklen_t len = sizeof mine;
    char text[INET6_ADDRSTRLEN] = {};
    if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&mine), &len) == 0 &&
        ::getnameinfo(reinterpret_cast<sockaddr*>(&mine), len, text, sizeof text, nullptr, 0,
                      NI_NUMERICHOST) == 0)
      local = text;
    ::close(fd);
  }
  ::freeaddrinfo(found);
  return local;
}

}  // namespace

// ---- Comm
// -------------------------------------------------------------------------------------------

std::unique_ptr<Comm> Comm::join(const WorldEnv& env, const torch::Device& device) {
  auto comm = std::make_unique<Comm>();
  comm->env_ = env;
  comm->rank_ = env.rank;
  comm->size_ = env.world_size;
  if (env.world_size == 1) return comm;

  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(env.master_port);
  so.isServer = env.rank == 0 && !env.agent_store;
  so.numWorkers = env.world_size;
  so.waitWorkers = true;
  so.timeout = env.timeout;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
    if (env.agent_store) store = c10::make_intrusive<c10d::PrefixStore>(env.store_prefix, store);
  } catch (const std::exception& e) {
    throw Error("rank " + std::to_string(env.rank) + ": cannot join the process group at " +
                env.master_addr + ":" + std::to_string(env.master_port) + " (MASTER_ADDR, " +
                "MASTER_PORT) within " + std::to_string(env.timeout.count()) + " s: " + e.what());
  }
  const auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(env.timeout);
  if (device.is_cuda()) {
#ifdef RLHF_HAVE_NCCL
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = timeout;
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, env.rank, env.world_size, opts);
    comm->backend_ = std::make_shared<BackendOf<c10d::ProcessGroupNCCL>>(pg, device, timeout);
    return comm;
#else
    throw Error("device \"" + device.str() +
                "\" with WORLD_SIZE > 1 needs NCCL, and this libtorch was built without it");
#endif
  }
#ifdef RLHF_HAVE_GLOO
  auto opts = c10d::ProcessGroupGloo::Options::create();
  opts->timeout = timeout;
  const std::string toward =
      is_loopback(env.master_addr) ? "" : local_address_toward(env.master_addr, env.master_port);
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname)
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
  else if (!env.local_addr.empty())
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(env.local_addr));
  else if (is_loopback(env.master_addr))
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(env.master_addr));
  else if (!toward.empty())
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(toward));
  else
    opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, env.rank, env.world_size, opts);
  comm->backend_ = std::make_shared<BackendOf<c10d::ProcessGroupGloo>>(pg, device, timeout);
  return comm;
#else
  throw Error(
      "WORLD_SIZE > 1 needs c10d's Gloo backend, and this build has no Gloo headers "
      "(install libgloo-dev and rebuild)");
#endif
}

void Comm::all_reduce_sum(std::vector<torch::Tensor>& tensors) {
  if (alone() || tensors.empty()) return;
  backend_->all_reduce(tensors, c10d::ReduceOp::SUM);
}

namespace {
std::vector<double> reduce_values(Backend& backend, const std::vector<double>& values,
                                  c10d::ReduceOp op) {
  auto t = torch::tensor(values, torch::kFloat64).to(backend.device());
  std::vector<torch::Tensor> ts{t};
  backend.all_reduce(ts, op);
  auto host = ts[0].cpu();
  return std::vector<double>(host.data_ptr<double>(), host.data_ptr<double>() + host.numel());
}
}  // namespace

std::vector<double> Comm::sum(const std::vector<double>& values) {
  if (alone() || values.empty()) return values;
  return reduce_values(*backend_, values, c10d::ReduceOp::SUM);
}

std::vector<double> Comm::max(const std::vector<double>& values) {
  if (alone() || values.empty()) return values;
  return reduce_values(*backend_, values, c10d::ReduceOp::MAX);
}

std::vector<std::string> Comm::all_gather_bytes(const std::string& mine) {
  if (alone()) return {mine};
  const auto dev = backend_->device();
  // Lengths first, then every rank's bytes padded to the longest.
  auto len = torch::tensor({static_cast<int64_t>(mine.size())}, torch::kInt64).to(dev);
  std::vector<at::Tensor> lens(size_);
  for (auto& l : lens) l = torch::empty_like(len);
  backend_->all_gather(lens, len);
  int64_t longest = 1;
  std::vector<int64_t> sizes;
  for (auto& l : lens) {
    sizes.push_back(l.cpu().item<int64_t>());
    longest = std::max(longest, sizes.back());
  }
  auto buf = torch::zeros({longest}, torch::kUInt8);
  std::memcpy(buf.data_ptr<uint8_t>(), mine.data(), mine.size());
  buf = buf.to(dev);
  std::vector<at::Tensor> bufs(size_);
  for (auto& b : bufs) b = torch::empty_like(buf);
  backend_->all_gather(bufs, buf);
  std::vector<std::string> out;
  for (int r = 0; r < size_; ++r) {
    auto host = bufs[r].cpu();
    out.emplace_back(reinterpret_cast<const char*>(host.data_ptr<uint8_t>()), sizes[r]);
  }
  return out;
}

void Comm::broadcast(std::vector<torch::Tensor>& tensors, int root) {
  if (alone() || tensors.empty()) return;
  backend_->broadcast(tensors, root);
}

void Comm::barrier() {
  if (!alone()) backend_->barrier();
}

Comm& world(const torch::Device& device) {
  static std::once_flag once;
  static std::unique_ptr<Comm> comm;
  std::call_once(once, [&] {
    comm = Comm::join(parse_world_env([](const char* n) { return std::getenv(n); }), device);
  });
  return *comm;
}

// ---- helpers
// --------------------------------------------------------------------------------------

void all_reduce_gradients(Comm& comm, const std::vector<torch::Tensor>& params,
                          int64_t bucket_bytes) {
  if (comm.alone()) return;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  for (const auto& p : params) {
    auto& g = p.mutable_grad();
    if (!g.defined()) g = torch::zeros_like(p);
    grads.push_back(g);
  }
  // Consecutive gradients of one dtype and device go into one flat bucket.
  size_t i = 0;
  while (i < grads.size()) {
    size_t j = i;
    int64_t bytes = 0;
    while (j < grads.size() && grads[j].scalar_type() == grads[i].scalar_type() &&
           grads[j].device() == grads[i].device() &&
           (j == i || bytes + grads[j].nbytes() <= static_cast<size_t>(bucket_bytes))) {
      bytes += static_cast<int64_t>(grads[j].nbytes());
      ++j;
    }
    std::vector<torch::Tensor> flat_parts;
    for (size_t k = i; k < j; ++k) flat_parts.push_back(grads[k].reshape({-1}));
    std::vector<torch::Tensor> bucket{torch::cat(flat_parts)};
    comm.all_reduce_sum(bucket);
    int64_t off = 0;
    for (size_t k = i; k < j; ++k) {
      const int64_t n = grads[k].numel();
      grads[k].copy_(bucket[0].narrow(0, off, n).view_as(grads[k]));
      off += n;
    }
    i = j;
  }
}

std::pair<int64_t, int64_t> shard_range(int64_t n, int rank, int size) {
  const int64_t base = n / size, extra = n % size;
  const int64_t begin = rank * base + std::min<int64_t>(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

int threads_per_rank(int local_world_size) {
  const int cores = std::max(1u, std::thread::hardware_concurrency());
  return std::max(1, cores / std::max(1, local_world_size));
}

}  // namespace rlhf::policy::dist
