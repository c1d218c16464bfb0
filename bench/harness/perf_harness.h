// The performance harness behind `rlhf bench` and bench/policy_bench: measures, in one process,
// the machine's practical GEMM peak and the policy's generation and training throughput, so the
// figures can be read as ratios against that peak; and data-parallel training throughput with
// several local ranks (processes) over Gloo on loopback.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "policy/model/model.h"
#include "policy/runtime/device.h"

namespace rlhf::policy {

struct PerfOptions {
  int dim = 256;
  int n_layers = 4;
  int n_heads = 8;
  int vocab = 4096;
  int gen_new_tokens = 128;  // per generation measurement
  int gen_prompt_len = 8;
  int train_batch = 16;
  int train_seq = 256;
  int train_steps = 6;  // timed steps (after 1 warm-up step)
  int gemm_size = 2048;
  uint64_t seed = 0;
  bool quick = false;  // smaller settings for smoke tests
  // Only this measurement (a key below, e.g. "gen_b32_cache", or "train" for the training pair);
  // "" = all. For profilers: `perf record rlhf bench --only gen_b32_cache --repeat 20`.
  // "train_dp2" names the data-parallel measurement, which run_perf_harness leaves to
  // measure_train_dp (it needs other processes); "train" means both training measurements.
  std::string only;
  int repeat = 1;  // generation runs per measurement; the median is reported
  // Where and how run_perf_harness computes (policy/runtime/device.h): "cpu" | "cuda" | "cuda:N",
  // and fp32 or bf16 (the GEMM in bf16, generation and training under bf16 autocast). On CUDA the
  // generation figures add batch 256 (gen_b256_cache); train_dp2 stays a CPU (Gloo) measurement.
  std::string device = "cpu";
  Precision precision = Precision::kFp32;
  // A model folder (native checkpoint or Hugging Face: policy/model/checkpoint.h) to measure
  // instead of the built-in shape; "" = the built-in one. Its config sets the shape and vocabulary
  // (dim, n_layers, n_heads and vocab above are then unused); the training sequence is capped at
  // its max_seq_len - 1.
  std::string model_dir;
};

// Keys: gemm_gflops, gen_b1_cache, gen_b1_nocache, gen_b32_cache (tokens/s; gen_b256_cache on
// CUDA), train_tokens_per_s, train_gflops, train_peak_fraction, threads, decode_threads (the
// decoding engine's, policy/kernels/loop_pool.h), params. Throws rlhf::Error for an unknown `only`.
std::map<std::string, double> run_perf_harness(const PerfOptions& options,
                                               bool print_progress = true);

// The model run_perf_harness measures: options.model_dir loaded (weights as stored, float32), or
// perf_model_config(options) with init_weights from the current torch seed. Throws rlhf::Error
// naming the folder when it cannot be loaded.
Transformer build_perf_model(const PerfOptions& options);

// The measured model's shape: dim, n_layers, n_heads (as many kv heads), vocab from the options,
// SwiGLU hidden size by the LLaMA rule, max_seq_len = max(train_seq, prompt + new tokens) + 8.
ModelConfig perf_model_config(const PerfOptions& options);

// Writes the measured model in llama2.c's format (policy/model/llama2c_export.h): dir/model.bin and
// dir/tokenizer.bin, weights from torch::manual_seed(options.seed) and init_weights, the ones the
// generation measurements run when measured alone (`--only gen_b1_cache`; a full run draws the
// GEMM operands first). For bench/peer/compare_llama2c.sh. Throws rlhf::Error naming the path.
void export_llama2c(const PerfOptions& options, const std::string& dir);

// ---- Qwen3-shaped vs Llama-shaped decoding at equal FLOPs (issue #27) ----------------------

// Matrix-multiply FLOPs per generated token (2 per multiply-add) of one decoding step at a context
// of `context` tokens: the projections of every layer (q, k, v, o, gate, up, down), the output
// projection, and attention (q.k and p.v: 4 * n_heads * head_dim * context per layer). Biases,
// norms, RoPE and softmax are left out (O(dim) per token).
double decode_flops_per_token(const ModelConfig& config, double context);

// Two pairs of shapes, each a llama and a qwen3 (model_type qwen3: per-head q/k RMSNorm, explicit
// head_dim) of equal decode_flops_per_token, from options.dim / n_layers / n_heads / vocab (the
// bench default: d = 256, 4 layers, 8 heads, vocab 4096), all with n_heads / 2 kv heads and
// untied embeddings:
//   prefix "cmp_": the Qwen3-8B / 1.7B layout (heads x head_dim = dim; 8B: 32 x 128 on d = 4096)
//     against the same Llama layout: head_dim = dim / n_heads and SwiGLU hidden 3 * dim for both,
//     so they differ only by the q/k norms and their FLOPs are equal at every context;
//   prefix "cmp_wide_": the Qwen3-0.6B / 4B layout (head_dim = 2 * dim / n_heads: q and attention
//     twice as wide; 0.6B: 16 x 128 on d = 1024), SwiGLU hidden 3 * dim, against a Llama of
//     head_dim dim / n_heads whose SwiGLU hidden (a multiple of 16) makes the FLOPs equal at the
//     generation's mean context (prompt + new_tokens / 2).
// docs/performance.md works the numbers out.
struct FamilyPair {
  std::string prefix;
  ModelConfig llama, qwen3;
};
std::vector<FamilyPair> family_compare_pairs(const PerfOptions& options);

// Throughput of each pair of family_compare_pairs (random weights from options.seed), the two
// models measured alternately in this process: `rounds` rounds, each timing one generation
// (options.gen_new_tokens new tokens; 16 with quick) of each model at batch 1 and at batch 32 (KV
// cache, so the fast decode engine on CPU float32), the order of the two swapped every round.
// Keys (P = the pair's prefix, B = 1, 32): P + "llama_bB", P + "qwen3_bB" (median
// tokens/s), P + "ratio_bB" (median over rounds of qwen3 / llama measured back to back), with
// "_min" and "_max" (spread), P + "llama_flops_per_token", P + "qwen3_flops_per_token" (at the
// mean context), cmp_rounds; with `train`, the same for a training step (P + "llama_train", ...,
// P + "ratio_train"; batch 4 x 128 tokens, 2 timed steps a round).
std::map<std::string, double> run_family_comparison(const PerfOptions& options, int rounds,
                                                    bool train, bool print_progress = true);

// Whether `options.only` asks for the data-parallel training measurement ("", "train",
// "train_dp2").
bool wants_train_dp(const PerfOptions& options);

// Data-parallel training throughput: the model, global batch (train_batch x train_seq), optimizer
// and steps of run_perf_harness's training measurement, the batch rows split over `ranks` local
// processes (dist::shard_range) with one intra-op and one OpenBLAS thread each (ranks = 1 too: the
// scaling baseline), gradients summed over Gloo on 127.0.0.1 (policy/runtime/distributed.h).
//
// Starts `ranks` copies of worker_argv (worker_argv[0] = the program; it must call
// run_train_dp_worker with the caller's options and print the result as one JSON line) as child
// processes (common/process.h), the caller's environment plus torchrun's variables (RANK,
// WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT = a free port),
// OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1 and RLHF_DIST_TIMEOUT_S=120 (unless set). The workers'
// stderr is inherited; rank 0's stdout must end with one JSON object line of numbers, which is
// returned. Keys (N = ranks):
//   train_dpN_tokens_per_s   global tokens per second (all ranks' rows)
//   train_dpN_step_s         seconds per timed step (rank 0)
//   train_dpN_allreduce_s    seconds for one gradient all-reduce alone (both ranks past a barrier)
//   train_dpN_compute_s      of a timed step on rank 0: forward + backward (seconds)
//   train_dpN_reduce_wait_s  the in-step gradient all-reduce, incl. waiting for the slower rank
//   train_dpN_optimizer_s    the optimizer step
//   train_dpN_cpu_s          rank 0's CPU time (user + system, all its threads) per timed step:
//                            above step_s, other threads of the rank also ran; below, it waited
//   train_dpN_minor_faults   rank 0's minor page faults per timed step
// Throws rlhf::Error naming the rank and how it ended (process::describe_wait_status) when a
// worker fails; the other rank is then killed after a grace period, so a failure never hangs the
// caller. The workers are killed and reaped on every way out (an exception included).
std::map<std::string, double> measure_train_dp(const std::vector<std::string>& worker_argv,
                                               int ranks = 2);

// The worker side of measure_train_dp: joins dist::world() from the environment, sets one
// intra-op thread, builds the model with options.seed,
// runs 1 warm-up and train_steps timed steps (barriers around the timing) on its rows of the
// global batch, and returns the keys above (every rank computes them; rank 0's are reported).
std::map<std::string, double> run_train_dp_worker(const PerfOptions& options);

}  // namespace rlhf::policy
