#include "bench/harness/perf_harness.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/error.h"
#include "common/files.h"
#include "common/launch.h"
#include "common/loop_pool.h"
#include "policy/decoding/generation.h"
#include "policy/model/fused_ops.h"
#include "policy/model/llama2c_export.h"
#include "policy/model/model.h"
#include "policy/runtime/distributed.h"
#include "policy/training/optimizer_config.h"
#include "policy/training/training.h"

extern char** environ;

namespace rlhf::policy {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Waits for the device's queued work (CUDA kernels run asynchronously); no-op on CPU.
void sync(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

double measure_gemm(int n, const torch::Device& device, Precision precision) {
  torch::NoGradGuard ng;
  const auto opts = torch::TensorOptions().device(device).dtype(activation_dtype(precision));
  auto a = torch::randn({n, n}, opts);
  auto b = torch::randn({n, n}, opts);
  auto c = torch::matmul(a, b);  // warm-up
  sync(device);
  int reps = 0;
  double start = now_s(), elapsed = 0;
  while (elapsed < 1.0 || reps < 3) {
    c = torch::matmul(a, b);
    ++reps;
    if (device.is_cuda() && reps % 10 != 0)
      continue;  // queue kernels, check the clock now and then
    sync(device);
    elapsed = now_s() - start;
  }
  return 2.0 * n * n * static_cast<double>(n) * reps / elapsed / 1e9;
}

double measure_generation(Transformer& model, int batch, int prompt_len, int new_tokens, bool cache,
                          uint64_t seed, int repeat, Precision precision) {
  std::vector<std::vector<int64_t>> prompts(batch);
  for (int b = 0; b < batch; ++b)
    for (int t = 0; t < prompt_len; ++t) prompts[b].push_back(3 + (b * 31 + t * 7) % 1000);
  SamplingOptions opt;
  opt.max_new_tokens = new_tokens;
  opt.temperature = 1.0f;
  opt.seed = seed;
  opt.eos_id = -1;  // never stop early: every sequence produces new_tokens
  opt.use_cache = cache;
  opt.precision = precision;
  SamplingOptions warm_up = opt;
  warm_up.max_new_tokens = 4;
  (void)generate(model, prompts, warm_up);
  std::vector<double> rates;
  for (int r = 0; r < std::max(1, repeat); ++r) {
    double start = now_s();
    auto out = generate(model, prompts, opt);
    rates.push_back(static_cast<double>(batch) * new_tokens / (now_s() - start));
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

}  // namespace

ModelConfig perf_model_config(const PerfOptions& o) {
  ModelConfig cfg;
  cfg.vocab_size = o.vocab;
  cfg.dim = o.dim;
  cfg.n_layers = o.n_layers;
  cfg.n_heads = o.n_heads;
  cfg.n_kv_heads = o.n_heads;
  cfg.max_seq_len = std::max(o.train_seq, o.gen_prompt_len + o.gen_new_tokens) + 8;
  return cfg;
}

namespace {

// The training measurement's global batch and timed steps (smaller with --quick).
struct TrainShape {
  int batch, seq, steps;
};

TrainShape train_shape(const PerfOptions& o) {
  return o.quick ? TrainShape{4, 64, 2} : TrainShape{o.train_batch, o.train_seq, o.train_steps};
}

}  // namespace

std::map<std::string, double> run_perf_harness(const PerfOptions& o, bool print_progress) {
  std::map<std::string, double> r;
  auto say = [&](const char* what) {
    if (print_progress) std::fprintf(stderr, "bench: %s...\n", what);
  };
  static const std::vector<std::string> kOnly = {
      "",      "gemm",     "gen_b1_cache", "gen_b1_nocache", "gen_b32_cache", "gen_b256_cache",
      "train", "train_dp2"};
  if (std::find(kOnly.begin(), kOnly.end(), o.only) == kOnly.end())
    throw Error("bench: unknown measurement '" + o.only +
                "' (expected gemm, gen_b1_cache, gen_b1_nocache, gen_b32_cache, gen_b256_cache "
                "(CUDA), train or train_dp2)");
  auto want = [&](const char* key) { return o.only.empty() || o.only == key; };
  torch::manual_seed(static_cast<int64_t>(o.seed));
  r["threads"] = torch::get_num_threads();
  r["decode_threads"] = shared_loop_pool().threads();  // the decoding engine's (fast_decode.h)

  const torch::Device device = resolve_device(o.device, "bench --device");
  if (want("gemm")) {
    say("gemm peak");
    r["gemm_gflops"] = measure_gemm(o.quick ? 512 : o.gemm_size, device, o.precision);
  }

  const ModelConfig cfg = perf_model_config(o);
  Transformer model(cfg);
  init_weights(model);
  model->to(device);
  model->eval();
  r["params"] = static_cast<double>(cfg.num_parameters());

  int new_tokens = o.quick ? 16 : o.gen_new_tokens;
  if (want("gen_b1_cache")) {
    say("generation batch 1 with KV cache");
    r["gen_b1_cache"] = measure_generation(model, 1, o.gen_prompt_len, new_tokens, true, o.seed,
                                           o.repeat, o.precision);
  }
  if (want("gen_b1_nocache")) {
    say("generation batch 1 without KV cache");
    r["gen_b1_nocache"] = measure_generation(model, 1, o.gen_prompt_len, new_tokens, false, o.seed,
                                             o.repeat, o.precision);
  }
  if (want("gen_b32_cache")) {
    say("generation batch 32 with KV cache");
    r["gen_b32_cache"] = measure_generation(model, 32, o.gen_prompt_len, new_tokens, true, o.seed,
                                            o.repeat, o.precision);
  }
  if (device.is_cuda() && (o.only.empty() || o.only == "gen_b256_cache")) {
    say("generation batch 256 with KV cache");
    r["gen_b256_cache"] = measure_generation(model, 256, o.gen_prompt_len, new_tokens, true, o.seed,
                                             o.repeat, o.precision);
  }
  if (!want("train")) return r;

  say("training throughput");
  model->train();
  const TrainShape shape = train_shape(o);
  const int B = shape.batch, T = shape.seq;
  // The trainers' optimizer (policy/training/training.h): decay / no-decay groups, clipping at 1.0.
  training::NamedTensors params;
  for (const auto& p : model->named_parameters()) params.emplace_back(p.key(), p.value());
  training::Optimizer opt(params,
                          training::optimizer_defaults(training::OptimizerDefaults::kSupervised));
  auto data = torch::randint(3, o.vocab, {B, T + 1}, torch::kLong).to(device);
  auto inputs = data.slice(1, 0, T), targets = data.slice(1, 1, T + 1);
  auto step = [&] {
    opt.zero_grad();
    torch::Tensor loss;
    {
      AutocastScope autocast(device, o.precision);
      auto logits = model->forward(inputs);
      loss = -fused::token_logprobs(logits, targets).mean();  // the token cross-entropy
    }
    loss.backward();
    opt.step(3e-4);
  };
  step();  // warm-up
  sync(device);
  const int steps = shape.steps;
  double start = now_s();
  for (int s = 0; s < steps; ++s) step();
  sync(device);
  double secs = now_s() - start;
  double tokens = static_cast<double>(B) * T * steps;
  r["train_tokens_per_s"] = tokens / secs;
  // PaLM-style accounting: 6 N per token (forward + backward, N = non-embedding-lookup params
  // incl. the output projection), plus attention 12 * L * D * T per token.
  double n_params = static_cast<double>(cfg.num_parameters()) -
                    static_cast<double>(cfg.vocab_size) * cfg.dim *
                        (cfg.tie_embeddings ? 0 : 1);  // the embedding lookup is not a matmul
  double flops_per_token = 6.0 * n_params + 12.0 * cfg.n_layers * cfg.dim * T;
  r["train_gflops"] = flops_per_token * r["train_tokens_per_s"] / 1e9;
  if (r.count("gemm_gflops")) r["train_peak_fraction"] = r["train_gflops"] / r["gemm_gflops"];
  return r;
}

bool wants_train_dp(const PerfOptions& o) {
  return o.only.empty() || o.only == "train" || o.only == "train_dp2";
}

// ---- data-parallel training -------------------------------------------------------------------

std::map<std::string, double> run_train_dp_worker(const PerfOptions& o) {
  dist::Comm& comm = dist::world();
  torch::set_num_threads(dist::threads_per_rank(comm.env().local_world_size));
  // Every rank builds the same weights and draws the same global batch from the same seed; the
  // summed gradients then keep the replicas identical step after step.
  torch::manual_seed(static_cast<int64_t>(o.seed));
  const ModelConfig cfg = perf_model_config(o);
  Transformer model(cfg);
  init_weights(model);
  model->train();
  training::NamedTensors params;
  for (const auto& p : model->named_parameters()) params.emplace_back(p.key(), p.value());
  training::Optimizer opt(params,
                          training::optimizer_defaults(training::OptimizerDefaults::kSupervised));

  const TrainShape shape = train_shape(o);
  const int B = shape.batch, T = shape.seq;
  auto data = torch::randint(3, o.vocab, {B, T + 1}, torch::kLong);
  const std::pair<int64_t, int64_t> range = dist::shard_range(B, comm.rank(), comm.size());
  const int64_t lo = range.first, hi = range.second;
  auto rows = data.slice(0, lo, hi);
  auto inputs = rows.slice(1, 0, T), targets = rows.slice(1, 1, T + 1);
  // The sum over this rank's targets divided by the global count: summed over ranks, the
  // gradient of the single-process mean loss.
  const double global_targets = static_cast<double>(B) * T;
  auto step = [&] {
    opt.zero_grad();
    if (hi > lo) {
      torch::Tensor loss;
      {
        AutocastScope autocast(torch::kCPU, o.precision);
        auto logits = model->forward(inputs);
        loss = -fused::token_logprobs(logits, targets).sum() / global_targets;
      }
      loss.backward();
    }
    dist::all_reduce_gradients(comm, opt.parameters());
    opt.step(3e-4);
  };
  step();  // warm-up
  comm.barrier();
  const double start = now_s();
  for (int s = 0; s < shape.steps; ++s) step();
  comm.barrier();
  const double secs = now_s() - start;

  // The all-reduce alone, both ranks starting together: its cost without the wait for the
  // slower rank that the in-step figure would include.
  const int reduces = 3;
  comm.barrier();
  const double reduce_start = now_s();
  for (int k = 0; k < reduces; ++k) dist::all_reduce_gradients(comm, opt.parameters());
  const double reduce_secs = (now_s() - reduce_start) / reduces;

  const std::string key = "train_dp" + std::to_string(comm.size());
  return {{key + "_tokens_per_s", global_targets * shape.steps / secs},
          {key + "_step_s", secs / shape.steps},
          {key + "_allreduce_s", reduce_secs}};
}

namespace {

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const char* name = ::strsignal(WTERMSIG(status));
    return "was killed by signal " + std::to_string(WTERMSIG(status)) + " (" + (name ? name : "?") +
           ")";
  }
  return "ended with wait status " + std::to_string(status);
}

// The worker ranks: started together, and on every way out killed (if still running) and reaped.
class RankProcesses {
 public:
  RankProcesses() = default;
  RankProcesses(const RankProcesses&) = delete;
  RankProcesses& operator=(const RankProcesses&) = delete;
  ~RankProcesses() {
    for (auto& r : ranks_)
      if (!r.done) {
        ::kill(r.pid, SIGKILL);
        int status = 0;
        while (::waitpid(r.pid, &status, 0) < 0 && errno == EINTR) {
        }
      }
  }

  // Starts argv with envp; stdout goes to stdout_fd.
  void start(int rank, const std::vector<std::string>& argv, const std::vector<std::string>& envp,
             int stdout_fd) {
    std::vector<char*> cargv, cenv;
    for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    for (const auto& e : envp) cenv.push_back(const_cast<char*>(e.c_str()));
    cenv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, stdout_fd, STDOUT_FILENO);
    std::fflush(stdout);
    std::fflush(stderr);
    pid_t pid = -1;
    const int rc =
        ::posix_spawn(&pid, argv[0].c_str(), &actions, nullptr, cargv.data(), cenv.data());
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0)
      throw Error("bench: cannot start data-parallel rank " + std::to_string(rank) + " (" +
                  argv[0] + "): " + std::strerror(rc));
    ranks_.push_back({rank, pid});
  }

  // Waits for every rank. After the first failure the others get `grace` to end on their own
  // (a peer's collective fails once the dead rank's connections close) and are then killed.
  // Throws rlhf::Error naming the first rank that failed and how.
  void wait_all(std::chrono::seconds grace) {
    std::string failure;
    std::chrono::steady_clock::time_point deadline{};
    for (;;) {
      bool running = false;
      for (auto& r : ranks_) {
        if (r.done) continue;
        int status = 0;
        const pid_t got = ::waitpid(r.pid, &status, WNOHANG);
        if (got == r.pid) {
          r.done = true;
          const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
          if (!ok && failure.empty()) {
            failure = "rank " + std::to_string(r.rank) + " " + describe_status(status);
            deadline = std::chrono::steady_clock::now() + grace;
          }
        } else {
          running = true;
        }
      }
      if (!running) break;
      if (!failure.empty() && std::chrono::steady_clock::now() > deadline)
        for (auto& r : ranks_)
          if (!r.done) ::kill(r.pid, SIGKILL);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!failure.empty())
      throw Error("bench: data-parallel training worker " + failure +
                  " (its messages are on stderr above)");
  }

 private:
  struct Rank {
    int rank;
    pid_t pid;
    bool done = false;
  };
  std::vector<Rank> ranks_;
};

// An open file descriptor (or -1), closed when the owner goes away.
class UniqueFd {
 public:
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// The last non-empty line of text, without its newline.
std::string last_line(const std::string& text) {
  const size_t end = text.find_last_not_of("\r\n");
  if (end == std::string::npos) return "";
  const size_t nl = text.rfind('\n', end);
  const size_t begin = nl == std::string::npos ? 0 : nl + 1;
  return text.substr(begin, end + 1 - begin);
}

}  // namespace

std::map<std::string, double> measure_train_dp(const std::vector<std::string>& worker_argv,
                                               int ranks) {
  if (worker_argv.empty()) throw Error("bench: measure_train_dp needs a worker command");
  if (ranks < 1) throw Error("bench: measure_train_dp: ranks must be >= 1");
  const std::string port = std::to_string(launch::free_loopback_port());

  // Rank 0's stdout goes to a temporary file (read after it ends); the others' to /dev/null.
  std::string out_path = (std::filesystem::temp_directory_path() / "rlhf_bench_dp_XXXXXX").string();
  UniqueFd out_fd(::mkostemp(out_path.data(), O_CLOEXEC));
  if (out_fd.get() < 0)
    throw Error("bench: cannot create a temporary file in " +
                std::filesystem::temp_directory_path().string() + ": " + std::strerror(errno));
  struct Remove {
    std::string path;
    ~Remove() {
      std::error_code ec;
      std::filesystem::remove(path, ec);
    }
  } remove_out{out_path};
  UniqueFd null_fd(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  if (null_fd.get() < 0)
    throw Error(std::string("bench: cannot open /dev/null: ") + std::strerror(errno));

  // The caller's environment (OPENBLAS_CORETYPE included) with the ranks' variables replaced.
  const std::vector<std::string> replaced = {
      "RANK",        "WORLD_SIZE",  "LOCAL_RANK",      "LOCAL_WORLD_SIZE",
      "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"};
  std::vector<std::string> base;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    const std::string name = kv.substr(0, kv.find('='));
    if (std::find(replaced.begin(), replaced.end(), name) == replaced.end()) base.push_back(kv);
  }
  if (!std::getenv("RLHF_DIST_TIMEOUT_S")) base.push_back("RLHF_DIST_TIMEOUT_S=120");
  const std::string n = std::to_string(ranks);
  base.insert(base.end(), {"WORLD_SIZE=" + n, "LOCAL_WORLD_SIZE=" + n, "MASTER_ADDR=127.0.0.1",
                           "MASTER_PORT=" + port, "OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1"});

  RankProcesses procs;
  for (int r = 0; r < ranks; ++r) {
    std::vector<std::string> env = base;
    env.push_back("RANK=" + std::to_string(r));
    env.push_back("LOCAL_RANK=" + std::to_string(r));
    procs.start(r, worker_argv, env, r == 0 ? out_fd.get() : null_fd.get());
  }
  procs.wait_all(std::chrono::seconds(10));

  const std::string line = last_line(read_file(out_path));
  std::map<std::string, double> result;
  try {
    const auto j = nlohmann::json::parse(line);
    for (const auto& [k, v] : j.items())
      if (v.is_number()) result[k] = v.get<double>();
  } catch (const nlohmann::json::exception& e) {
    throw Error("bench: data-parallel rank 0 printed no JSON result line (got \"" + line +
                "\"): " + e.what());
  }
  if (result.empty()) throw Error("bench: data-parallel rank 0 returned no figures");
  return result;
}

void export_llama2c(const PerfOptions& o, const std::string& dir) {
  torch::manual_seed(static_cast<int64_t>(o.seed));
  Transformer model(perf_model_config(o));
  init_weights(model);
  write_llama2c(model, dir);
}

}  // namespace rlhf::policy
