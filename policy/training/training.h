// The training toolkit under every trainer (SFT, reward, PPO): where a trainer runs (device,
// precision, process group, threads), its trainable parameters, AdamW with decay / no-decay
// parameter groups built from the config's optimizer section (the one place torch AdamW options
// are built), the learning-rate schedule from the same section, the resumable-state folder with
// its one resume rule, tensor and RNG state files, and model initialisation from a checkpoint or
// from scratch with the tokenizer checks. The optimizer section's checks and defaults are
// policy/training/optimizer_config.h, the schedule's formulas policy/training/lr_schedule.h.
//
// Ownership: an Optimizer owns its torch AdamW and holds (shares) the parameter tensors it was
// given; the model owns them. Thread safety: none of it is thread-safe (one trainer per thread);
// CPU and CUDA alike. Errors: rlhf::Error with the file, field or tensor named.
//
// The resume rule (every trainer and the pipeline): an output folder whose state/ holds a
// checkpoint written under the same config fingerprint resumes from its newest checkpoint; one
// written under a different fingerprint is refused with an error that says how to start afresh;
// no checkpoint starts afresh. On CPU a resumed run ends bit for bit where an uninterrupted one
// does.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "policy/model/checkpoint.h"
#include "policy/model/lora.h"
#include "policy/model/model.h"
#include "policy/runtime/device.h"
#include "policy/tokenizer/tokenizer.h"
#include "policy/training/lr_schedule.h"
#include "policy/training/optimizer_config.h"
#include "proto/model.pb.h"
#include "proto/optimizer.pb.h"

namespace google::protobuf {
class Message;
}

namespace rlhf::policy::dist {
class Comm;
}

namespace rlhf::policy::training {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// ---- where a trainer runs -----------------------------------------------------------------------

// Sets torch's intra-op threads: `threads` > 0 as given; 0 keeps torch's own choice, except in a
// rank of a multi-process run started without OMP_NUM_THREADS, which gets
// dist::threads_per_rank(local world size) (`rlhf launch` sets OMP_NUM_THREADS itself).
void configure_threads(int threads, const dist::Comm& comm);

struct Placement {
  torch::Device device{torch::kCPU};
  Precision precision = Precision::kFp32;  // bf16: autocast forwards (policy/runtime/device.h)
  dist::Comm* comm = nullptr;  // dist::world(device): owned by the process, outlives the trainer
};

// Every trainer's start: `device` and `dtype` resolved (errors name "<what>: device" and
// "<what>: dtype"), the process group joined (dist::world), the threads set (configure_threads).
Placement place_trainer(const std::string& device, const std::string& dtype, int threads,
                        const std::string& what);

// ---- optimizer ----------------------------------------------------------------------------------

// What an Optimizer trains: the parameters of `model` that require a gradient, in
// named_parameters() order, then the LoRA adapters' (`lora` may be null). With LoRA the model's
// own weights are frozen, so only what the trainer left trainable besides the adapters (e.g. the
// reward model's scalar head) comes before them.
NamedTensors trainable_parameters(torch::nn::Module& model, const LoraAdapters* lora = nullptr);

struct ParamGroup {
  std::vector<torch::Tensor> params;
  double weight_decay = 0;  // AdamW decoupled weight decay of this group
  double lr_scale = 1;      // the group's lr is the step's lr times this
};

// Groups as in GPT-2/nanoGPT/LLaMA: "decay" (>= 2 dims: matrices, embeddings) at weight_decay,
// "no_decay" (< 2 dims: norms, biases) without, and, when embedding_lr_scale != 1, "embedding"
// (names containing "embed_tokens": the token embeddings, also the output head when tied) with
// decay at lr * embedding_lr_scale. Empty groups are left out; parameter order is kept within a
// group.
std::vector<ParamGroup> param_groups(const NamedTensors& params, double weight_decay,
                                     double embedding_lr_scale = 1.0);

// The one place torch AdamW options are built: one torch param group per ParamGroup, with the
// config's betas and eps and the group's weight decay (the lr is set at each step). `optimizer`
// must be resolved (resolve_optimizer_config). Throws rlhf::Error when `groups` is empty.
std::unique_ptr<torch::optim::AdamW> make_adamw(const std::vector<ParamGroup>& groups,
                                                const proto::OptimizerConfig& optimizer);

// The learning-rate schedule of a run of `total_steps` steps (PPO: iterations): peak
// optimizer.lr, floor lr * min_lr_ratio, resolved_warmup_steps, the config's shape, from
// applied_settings(optimizer, trainer) (kSupervised: float32 settings and floor, see
// policy/training/optimizer_config.h). `optimizer` must be resolved; throws rlhf::Error on an
// unknown schedule name.
LrSchedule make_schedule(const proto::OptimizerConfig& optimizer, int64_t total_steps,
                         OptimizerDefaults trainer);

// Every trainer's optimizer: AdamW (make_adamw) over param_groups(params, weight_decay,
// embedding_lr_scale), clipping the global gradient norm at grad_clip.
class Optimizer {
 public:
  // `optimizer` must be resolved (resolve_optimizer_config). Throws rlhf::Error when `params` is
  // empty ("optimizer: no trainable parameters").
  Optimizer(const NamedTensors& params, const proto::OptimizerConfig& optimizer,
            double embedding_lr_scale = 1.0);

  // One update: sets every group's lr (times its scale), clips the global L2 norm of the
  // gradients to grad_clip (0: no clipping), steps. Returns the norm before clipping; when it is
  // not finite the weights and moments are left as they were (the caller decides: PPO stops with
  // a named error, SFT and reward log the norm).
  double step(double lr);
  void zero_grad();

  const std::vector<torch::Tensor>& parameters() const { return params_; }
  torch::optim::AdamW& adamw() { return *adamw_; }

  // Optimizer state (moments and step counts) to / from a file; load maps tensors to `device`.
  void save(const std::string& path);
  void load(const std::string& path, const torch::Device& device);

 private:
  std::unique_ptr<torch::optim::AdamW> adamw_;
  std::vector<double> lr_scale_;       // per group
  std::vector<torch::Tensor> params_;  // all trainable, group after group (for clipping)
  double grad_clip_ = 0;
};

// ---- tensors and RNG ----------------------------------------------------------------------------

// Parameters and buffers of a module by name (the same names its named_parameters() uses).
NamedTensors module_tensors(torch::nn::Module& module);

// A trainer's resumable model state: module_tensors(model), then the LoRA adapters' tensors as
// "lora.<name>" (`lora` may be null). What every trainer saves and loads with save_tensors /
// load_tensors.
NamedTensors state_tensors(torch::nn::Module& model, const LoraAdapters* lora);

// Writes named tensors to one file (torch archive). load_tensors copies the stored values into
// the given tensors in place (shapes must match); throws naming the file and the tensor.
void save_tensors(const NamedTensors& tensors, const std::string& path);
void load_tensors(const NamedTensors& tensors, const std::string& path);

// The default CPU generator's state (torch::manual_seed, dropout, randperm on CPU).
void save_cpu_rng(const std::string& path);
void load_cpu_rng(const std::string& path);

// ---- the same start on every rank ---------------------------------------------------------------

// Where a rank starts a run from. Every rank must start from the same: a node that cannot see the
// output folder would otherwise train from other weights and another data position, silently,
// until a collective timed out.
struct StartFingerprint {
  std::string config;         // the run's config_fingerprint
  int64_t step = 0;           // optimizer steps done (PPO: iterations)
  std::string data_position;  // e.g. "epoch 1, row 32" ("finished" for a finished run)
};

// 16 hex digits: a 64-bit hash of the tensors' names, shapes, dtypes and bytes (CUDA tensors are
// copied to the host).
std::string weights_hash(const NamedTensors& tensors);

// With more than one rank: gathers every rank's fingerprint and weights_hash(weights) and compares
// them with rank 0's; on a mismatch every rank throws rlhf::Error "<what>: rank R does not start
// where rank 0 does: step 0 vs 10, data position ..., weights ... (every rank must see the same
// output folder, <out_dir>)", naming each differing rank and field. Alone: returns at once (no
// hashing). Every rank must call it at the same point (it is a collective).
void check_same_start(dist::Comm& comm, const std::string& what, const std::string& out_dir,
                      const StartFingerprint& mine, const NamedTensors& weights);

// ---- the resumable-state folder -----------------------------------------------------------------

// A config's identity for resuming: SHA-256 of its text format with the fields that may change
// between a run and its resumption cleared (e.g. out_dir, threads, device), and of the content of
// the input files (data, tokenizer, initial weights; missing files hash as "-").
std::string config_fingerprint(const google::protobuf::Message& config,
                               const std::vector<std::string>& ignored_fields,
                               const std::vector<std::string>& input_files);

// <root>/<name>/ checkpoints, each written as <root>/.tmp-<name> and renamed when complete;
// <root>/latest names the newest (written atomically after the rename, so it always names a
// complete folder); every checkpoint holds `fingerprint`. Retention keeps the newest `keep`.
class StateFolder {
 public:
  explicit StateFolder(std::string root, int keep = 1);

  // The resume rule: the newest checkpoint when its fingerprint equals `fingerprint`, nullopt when
  // there is none, and rlhf::Error when it was written by a run of another config ("... delete
  // <root> or choose another output folder to start afresh").
  std::optional<std::string> resume_dir(const std::string& fingerprint) const;

  // Writes checkpoint `name`: `write` fills the temp folder it is given; then the fingerprint,
  // the rename, `latest`, retention. Returns the checkpoint folder.
  std::string save(const std::string& name, const std::string& fingerprint,
                   const std::function<void(const std::string& dir)>& write);

  // The folder `latest` names (complete), or nullopt.
  std::optional<std::string> latest() const;
  const std::string& root() const { return root_; }

 private:
  std::string root_;
  int keep_;
};

// "step-00000042": checkpoint names that sort by step.
std::string step_name(int64_t step);

// ---- model initialisation -----------------------------------------------------------------------

struct ModelSource {
  std::string init_from;       // native checkpoint or Hugging Face folder; "" = from scratch
  std::string tokenizer;       // .model, tokenizer.json or a folder (tokenizer.h); "" = the
                               // tokenizer file in <init_from> (tokenizer.model or .json)
  proto::ModelConfig scratch;  // from scratch: the architecture (vocab/bos/eos/pad from the
                               // tokenizer; unset fields keep policy::ModelConfig's defaults)
  int64_t seq_len = 0;         // tokens per training row: from scratch max_seq_len grows to it;
                               // from a checkpoint it must fit (fail_on_long_rows) or is capped
  bool fail_on_long_rows = false;
  bool value_head = false;      // add a scalar head when the model has none
  std::string what = "config";  // names the config in messages ("sft config")
  // How a checkpoint is read (init_from only): e.g. a frozen LoRA base in bfloat16
  // (frozen_base_load_options, policy/model/checkpoint.h); a model from scratch is float32.
  LoadOptions load;
};

struct InitialModel {
  Transformer model{nullptr};
  Tokenizer tokenizer;
  std::string tokenizer_path;
  std::vector<std::string> files;  // the files the model and tokenizer came from (fingerprints,
                                   // manifests)
};

// Loads (checks: the init_from stage is finished, its tokenizer hash equals the tokenizer's, its
// vocabulary holds the tokenizer's) or creates (seeded by the caller's torch::manual_seed) the
// model. Errors name the config field or the folder and what was expected.
InitialModel init_model(const ModelSource& source);

}  // namespace rlhf::policy::training
