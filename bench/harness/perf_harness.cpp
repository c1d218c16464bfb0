#include "bench/harness/perf_harness.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/error.h"
#include "common/files.h"
#include "common/launch.h"
#include "common/process.h"
#include "common/unique_fd.h"
#include "policy/decoding/generation.h"
#include "policy/kernels/loop_pool.h"
#include "policy/model/checkpoint.h"
#include "policy/model/fused_ops.h"
#include "policy/model/llama2c_export.h"
#include "policy/model/model.h"
#include "policy/runtime/distributed.h"
#include "policy/training/optimizer_config.h"
#include "policy/training/training.h"

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
  // Ids 3 .. 1002 (fewer for a vocabulary under 1003 tokens).
  const int span = std::max(1, std::min(1000, model->config().vocab_size - 3));
  for (int b = 0; b < batch; ++b)
    for (int t = 0; t < prompt_len; ++t) prompts[b].push_back(3 + (b * 31 + t * 7) % span);
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

Transformer build_perf_model(const PerfOptions& o) {
  if (!o.model_dir.empty()) {
    LoadedModel loaded = load_checkpoint(o.model_dir);
    return loaded.model;
  }
  Transformer model(perf_model_config(o));
  init_weights(model);
  return model;
}

namespace {

// The training measurement's global batch and timed steps (smaller with --quick); the sequence
// fits the model's context (a loaded model's may be shorter than train_seq).
struct TrainShape {
  int batch, seq, steps;
};

TrainShape train_shape(const PerfOptions& o, const ModelConfig& cfg) {
  TrainShape s =
      o.quick ? TrainShape{4, 64, 2} : TrainShape{o.train_batch, o.train_seq, o.train_steps};
  s.seq = std::max(1, std::min(s.seq, cfg.max_seq_len - 1));
  return s;
}

// Progress lines on stderr ("bench: WHAT...") when enabled.
struct Progress {
  bool enabled;
  void operator()(const char* what) const {
    if (enabled) std::fprintf(stderr, "bench: %s...\n", what);
  }
};

// Throws rlhf::Error for an `only` that names no measurement.
void check_only(const std::string& only) {
  static const std::vector<std::string> kOnly = {
      "",      "gemm",     "gen_b1_cache", "gen_b1_nocache", "gen_b32_cache", "gen_b256_cache",
      "train", "train_dp2"};
  if (std::find(kOnly.begin(), kOnly.end(), only) == kOnly.end())
    throw Error("bench: unknown measurement '" + only +
                "' (expected gemm, gen_b1_cache, gen_b1_nocache, gen_b32_cache, gen_b256_cache "
                "(CUDA), train or train_dp2)");
}

// The generation measurements that `o.only` asks for (gen_b256_cache on CUDA only), into r.
void measure_generations(Transformer& model, const PerfOptions& o, const torch::Device& device,
                         const Progress& say, std::map<std::string, double>& r) {
  auto want = [&](const char* key) { return o.only.empty() || o.only == key; };
  // Prompt and new tokens within the model's context (a loaded model's may be short).
  const int new_tokens = std::max(
      1, std::min(o.quick ? 16 : o.gen_new_tokens, model->config().max_seq_len - o.gen_prompt_len));
  struct Case {
    const char* key;
    const char* what;
    int batch;
    bool cache;
    bool cuda_only;
  };
  static const Case kCases[] = {
      {"gen_b1_cache", "generation batch 1 with KV cache", 1, true, false},
      {"gen_b1_nocache", "generation batch 1 without KV cache", 1, false, false},
      {"gen_b32_cache", "generation batch 32 with KV cache", 32, true, false},
      {"gen_b256_cache", "generation batch 256 with KV cache", 256, true, true},
  };
  for (const Case& c : kCases) {
    if (c.cuda_only ? !(device.is_cuda() && want(c.key)) : !want(c.key)) continue;
    say(c.what);
    r[c.key] = measure_generation(model, c.batch, o.gen_prompt_len, new_tokens, c.cache, o.seed,
                                  o.repeat, o.precision);
  }
}

// The single-process training measurement: train_tokens_per_s, train_gflops and (with
// gemm_gflops in r) train_peak_fraction, into r.
void measure_training(Transformer& model, const ModelConfig& cfg, const PerfOptions& o,
                      const torch::Device& device, std::map<std::string, double>& r) {
  model->train();
  const TrainShape shape = train_shape(o, cfg);
  const int B = shape.batch, T = shape.seq;
  // The trainers' optimizer (policy/training/training.h): decay / no-decay groups, clipping at 1.0.
  training::NamedTensors params;
  for (const auto& p : model->named_parameters()) params.emplace_back(p.key(), p.value());
  training::Optimizer opt(params,
                          training::optimizer_defaults(training::OptimizerDefaults::kSupervised));
  auto data = torch::randint(3, cfg.vocab_size, {B, T + 1}, torch::kLong).to(device);
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
}

}  // namespace

std::map<std::string, double> run_perf_harness(const PerfOptions& o, bool print_progress) {
  const Progress say{print_progress};
  check_only(o.only);
  std::map<std::string, double> r;
  torch::manual_seed(static_cast<int64_t>(o.seed));
  r["threads"] = torch::get_num_threads();
  r["decode_threads"] = shared_loop_pool().threads();  // the decoding engine's (fast_decode.h)

  const torch::Device device = resolve_device(o.device, "bench --device");
  if (o.only.empty() || o.only == "gemm") {
    say("gemm peak");
    r["gemm_gflops"] = measure_gemm(o.quick ? 512 : o.gemm_size, device, o.precision);
  }

  Transformer model = build_perf_model(o);
  const ModelConfig cfg = model->config();
  model->to(device);
  model->eval();
  r["params"] = static_cast<double>(cfg.num_parameters());

  measure_generations(model, o, device, say, r);
  if (!(o.only.empty() || o.only == "train")) return r;
  say("training throughput");
  measure_training(model, cfg, o, device, r);
  return r;
}

// ---- Qwen3-shaped vs Llama-shaped decoding -----------------------------------------------------

double decode_flops_per_token(const ModelConfig& c, double context) {
  const double d = c.dim, hd = c.head_dim(), q = double(c.n_heads) * hd, kv = c.n_kv_heads * hd;
  const double per_layer = d * q + 2 * d * kv + q * d + 3 * d * c.resolved_hidden_dim();
  return 2.0 * (c.n_layers * per_layer + d * c.vocab_size) + 4.0 * c.n_layers * q * context;
}

std::vector<FamilyPair> family_compare_pairs(const PerfOptions& o) {
  PerfOptions base = o;
  if (o.quick) base.gen_new_tokens = 16;
  ModelConfig llama = perf_model_config(base);
  llama.n_kv_heads = std::max(1, llama.n_heads / 2);
  llama.hidden_dim = 3 * llama.dim;
  ModelConfig qwen3 = llama;
  qwen3.model_type = "qwen3";
  qwen3.qk_norm = true;
  qwen3.explicit_head_dim = llama.dim / llama.n_heads;
  llama.validate();
  qwen3.validate();

  ModelConfig wide = qwen3;
  wide.explicit_head_dim = 2 * qwen3.dim / qwen3.n_heads;
  wide.validate();
  ModelConfig wide_llama = llama;
  const double context = base.gen_prompt_len + base.gen_new_tokens / 2.0;
  wide_llama.hidden_dim = 16;  // the FLOPs without the MLP's hidden part; then solve for it
  const double missing = decode_flops_per_token(wide, context) -
                         decode_flops_per_token(wide_llama, context);  // = 2 L 3 d (F - 16)
  const double per_hidden = 2.0 * llama.n_layers * 3.0 * llama.dim;
  wide_llama.hidden_dim = 16 * std::max(1, int(std::lround((16 + missing / per_hidden) / 16.0)));
  wide_llama.validate();
  return {{"cmp_", llama, qwen3}, {"cmp_wide_", wide_llama, wide}};
}

namespace {

// Median, minimum and maximum of `v` (not empty) as KEY, KEY_min, KEY_max.
void put_spread(std::map<std::string, double>& r, const std::string& key, std::vector<double> v) {
  std::sort(v.begin(), v.end());
  r[key] = v[v.size() / 2];
  r[key + "_min"] = v.front();
  r[key + "_max"] = v.back();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// `rounds` rounds of measure(0) (llama) and measure(1) (qwen3), the order swapped every round:
// PREFIX{llama,qwen3}_WHAT = the medians, PREFIXratio_WHAT (+ _min, _max) = qwen3 / llama per
// round.
void alternate(const std::string& prefix, const std::string& what, int rounds,
               const std::function<double(int)>& measure, std::map<std::string, double>& r) {
  std::vector<double> rate[2], ratio;
  for (int round = 0; round < rounds; ++round) {
    double got[2];
    for (int k = 0; k < 2; ++k) {
      const int m = (round + k) % 2;
      got[m] = measure(m);
    }
    for (int m = 0; m < 2; ++m) rate[m].push_back(got[m]);
    ratio.push_back(got[1] / got[0]);
  }
  r[prefix + "llama_" + what] = median(rate[0]);
  r[prefix + "qwen3_" + what] = median(rate[1]);
  put_spread(r, prefix + "ratio_" + what, ratio);
}

// One pair's decoding (batch 1 and 32) and training measurements into r.
void compare_pair(const FamilyPair& pair, const PerfOptions& o, int rounds, bool train,
                  const Progress& say, std::map<std::string, double>& r) {
  torch::manual_seed(static_cast<int64_t>(o.seed));
  Transformer models[2] = {Transformer(pair.llama), Transformer(pair.qwen3)};
  for (auto& m : models) {
    init_weights(m);
    m->eval();
  }
  const int new_tokens = o.quick ? 16 : o.gen_new_tokens;
  const double context = o.gen_prompt_len + new_tokens / 2.0;
  r[pair.prefix + "llama_flops_per_token"] = decode_flops_per_token(pair.llama, context);
  r[pair.prefix + "qwen3_flops_per_token"] = decode_flops_per_token(pair.qwen3, context);
  for (int batch : {1, 32}) {
    say((pair.prefix + "decode batch " + std::to_string(batch) + ", alternately").c_str());
    alternate(
        pair.prefix, "b" + std::to_string(batch), rounds,
        [&](int m) {
          return measure_generation(models[m], batch, o.gen_prompt_len, new_tokens, true, o.seed, 1,
                                    Precision::kFp32);
        },
        r);
  }
  if (!train) return;
  say((pair.prefix + "training step, alternately").c_str());
  PerfOptions t = o;
  t.quick = false;
  t.train_batch = 4;
  t.train_seq = o.quick ? 32 : 128;
  t.train_steps = 2;
  alternate(
      pair.prefix, "train", rounds,
      [&](int m) {
        std::map<std::string, double> one;
        measure_training(models[m], models[m]->config(), t, torch::kCPU, one);
        return one.at("train_tokens_per_s");
      },
      r);
}

}  // namespace

std::map<std::string, double> run_family_comparison(const PerfOptions& o, int rounds, bool train,
                                                    bool print_progress) {
  if (rounds < 1)
    throw Error("bench: --repeat: expected >= 1 rounds, got " + std::to_string(rounds));
  std::map<std::string, double> r;
  r["cmp_rounds"] = rounds;
  for (const FamilyPair& pair : family_compare_pairs(o))
    compare_pair(pair, o, rounds, train, Progress{print_progress}, r);
  return r;
}

bool wants_train_dp(const PerfOptions& o) {
  return o.only.empty() || o.only == "train" || o.only == "train_dp2";
}

// ---- data-parallel training -------------------------------------------------------------------

namespace {

// This process's CPU time (user + system, every thread) and minor page faults so far.
struct ProcessUsage {
  double cpu_s = 0;
  double minor_faults = 0;
  ProcessUsage operator-(const ProcessUsage& b) const {
    return {cpu_s - b.cpu_s, minor_faults - b.minor_faults};
  }
};

ProcessUsage process_usage() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  auto secs = [](const timeval& t) { return t.tv_sec + t.tv_usec * 1e-6; };
  return {secs(u.ru_utime) + secs(u.ru_stime), static_cast<double>(u.ru_minflt)};
}

}  // namespace

std::map<std::string, double> run_train_dp_worker(const PerfOptions& o) {
  dist::Comm& comm = dist::world();
  torch::set_num_threads(1);  // one intra-op thread per rank, 1 rank or N: the same per-rank setup
  // Every rank builds the same weights and draws the same global batch from the same seed; the
  // summed gradients then keep the replicas identical step after step.
  torch::manual_seed(static_cast<int64_t>(o.seed));
  Transformer model = build_perf_model(o);
  const ModelConfig cfg = model->config();
  model->train();
  training::NamedTensors params;
  for (const auto& p : model->named_parameters()) params.emplace_back(p.key(), p.value());
  training::Optimizer opt(params,
                          training::optimizer_defaults(training::OptimizerDefaults::kSupervised));

  const TrainShape shape = train_shape(o, cfg);
  const int B = shape.batch, T = shape.seq;
  auto data = torch::randint(3, cfg.vocab_size, {B, T + 1}, torch::kLong);
  const std::pair<int64_t, int64_t> range = dist::shard_range(B, comm.rank(), comm.size());
  const int64_t lo = range.first, hi = range.second;
  auto rows = data.slice(0, lo, hi);
  auto inputs = rows.slice(1, 0, T), targets = rows.slice(1, 1, T + 1);
  // The sum over this rank's targets divided by the global count: summed over ranks, the
  // gradient of the single-process mean loss.
  const double global_targets = static_cast<double>(B) * T;
  // Where a step's time goes (rank 0): forward + backward, the in-step all-reduce (with any wait
  // for the slower rank) and the optimizer.
  double compute_s = 0, reduce_s = 0, optimizer_s = 0;
  auto step = [&] {
    const double t0 = now_s();
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
    const double t1 = now_s();
    dist::all_reduce_gradients(comm, opt.parameters());
    const double t2 = now_s();
    opt.step(3e-4);
    const double t3 = now_s();
    compute_s += t1 - t0;
    reduce_s += t2 - t1;
    optimizer_s += t3 - t2;
  };
  step();  // warm-up
  compute_s = reduce_s = optimizer_s = 0;
  comm.barrier();
  const ProcessUsage usage_before = process_usage();
  const double start = now_s();
  for (int s = 0; s < shape.steps; ++s) step();
  comm.barrier();
  const double secs = now_s() - start;
  const ProcessUsage usage = process_usage() - usage_before;

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
          {key + "_allreduce_s", reduce_secs},
          {key + "_compute_s", compute_s / shape.steps},
          {key + "_reduce_wait_s", reduce_s / shape.steps},
          {key + "_optimizer_s", optimizer_s / shape.steps},
          {key + "_cpu_s", usage.cpu_s / shape.steps},
          {key + "_minor_faults", usage.minor_faults / shape.steps}};
}

namespace {

// The worker ranks: started together, and on every way out killed (if still running) and reaped
// (process::Child).
class RankProcesses {
 public:
  // Starts `argv` as rank `rank` with `env` set on top of this process's environment; its stdout
  // goes to `stdout_redirect`, its stderr is inherited.
  void start(int rank, const std::vector<std::string>& argv,
             std::vector<std::pair<std::string, std::string>> env,
             const process::Redirect& stdout_redirect) {
    process::Options o;
    o.argv = argv;
    o.env = std::move(env);
    o.stdout_redirect = stdout_redirect;
    try {
      ranks_.push_back({rank, process::Child::start(o)});
    } catch (const Error& e) {
      throw Error("bench: cannot start data-parallel rank " + std::to_string(rank) + " (" +
                  argv[0] + "): " + e.what());
    }
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
        if (r.child.status()) continue;
        const std::optional<process::ExitStatus> status = r.child.poll();
        if (!status) {
          running = true;
        } else if (!status->success() && failure.empty()) {
          failure = "rank " + std::to_string(r.rank) + " " + status->describe();
          deadline = std::chrono::steady_clock::now() + grace;
        }
      }
      if (!running) break;
      if (!failure.empty() && std::chrono::steady_clock::now() > deadline)
        for (auto& r : ranks_) r.child.signal(SIGKILL);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!failure.empty())
      throw Error("bench: data-parallel training worker " + failure +
                  " (its messages are on stderr above)");
  }

 private:
  struct Rank {
    int rank;
    process::Child child;
  };
  std::vector<Rank> ranks_;
};

// The last non-empty line of text, without its newline.
std::string last_line(const std::string& text) {
  const size_t end = text.find_last_not_of("\r\n");
  if (end == std::string::npos) return "";
  const size_t nl = text.rfind('\n', end);
  const size_t begin = nl == std::string::npos ? 0 : nl + 1;
  return text.substr(begin, end + 1 - begin);
}

// A temporary file (created empty, private) removed when the object goes away.
class TempFile {
 public:
  TempFile() {
    path_ = (std::filesystem::temp_directory_path() / "rlhf_bench_dp_XXXXXX").string();
    UniqueFd fd(::mkostemp(path_.data(), O_CLOEXEC));
    if (!fd)
      throw Error("bench: cannot create a temporary file in " +
                  std::filesystem::temp_directory_path().string() + ": " + std::strerror(errno));
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile() {
    std::error_code ec;
    std::filesystem::remove(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The ranks' variables (torchrun's contract on 127.0.0.1, one thread each) on top of the caller's
// environment (OPENBLAS_CORETYPE included).
std::vector<std::pair<std::string, std::string>> rank_env(int rank, int ranks,
                                                          const std::string& port) {
  const std::string n = std::to_string(ranks);
  std::vector<std::pair<std::string, std::string>> env;
  if (!std::getenv("RLHF_DIST_TIMEOUT_S")) env.emplace_back("RLHF_DIST_TIMEOUT_S", "120");
  env.insert(env.end(), {{"WORLD_SIZE", n},
                         {"LOCAL_WORLD_SIZE", n},
                         {"MASTER_ADDR", "127.0.0.1"},
                         {"MASTER_PORT", port},
                         {"OMP_NUM_THREADS", "1"},
                         {"OPENBLAS_NUM_THREADS", "1"},
                         {"RANK", std::to_string(rank)},
                         {"LOCAL_RANK", std::to_string(rank)}});
  return env;
}

}  // namespace

std::map<std::string, double> measure_train_dp(const std::vector<std::string>& worker_argv,
                                               int ranks) {
  if (worker_argv.empty()) throw Error("bench: measure_train_dp needs a worker command");
  if (ranks < 1) throw Error("bench: measure_train_dp: ranks must be >= 1");
  const std::string port = std::to_string(launch::free_loopback_port());

  // Rank 0's stdout goes to a temporary file (read after it ends); the others' to /dev/null.
  const TempFile out;
  RankProcesses procs;
  for (int r = 0; r < ranks; ++r)
    procs.start(r, worker_argv, rank_env(r, ranks, port),
                r == 0 ? process::Redirect::file(out.path()) : process::Redirect::null());
  procs.wait_all(std::chrono::seconds(10));

  const std::string line = last_line(read_file(out.path()));
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
