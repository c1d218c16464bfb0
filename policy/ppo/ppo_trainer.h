// The PPO loop: the student (policy) learns from a teacher's scores, held close to a frozen
// reference by a per-token KL penalty (Ziegler et al. 2019; InstructGPT; "The N Implementation
// Details of RLHF with PPO"; TRL PPOTrainer; OpenRLHF).
//
// One iteration:
//   1. take batch_size prompts (a fixed shuffled order of the prompt list, cycled);
//   2. sample responses with the KV cache (policy/decoding/generation.h), seed derived from (seed,
//   iter);
//   3. teacher scores (prompt ids, response ids) -> shaped score (missing-EOS / short-response
//      penalty, optional running normalisation, optional clip);
//   4. under no-grad, teacher forcing: log-probs under policy and reference, entropy, critic
//   values;
//   5. per-token KL, rewards, GAE (policy/ppo/ppo_math.h); rollouts saved to
//      <out>/rollouts/iter-NNNN.pb (unwhitened advantages, so `rlhf replay --recompute` checks
//      them);
//   6. ppo_epochs epochs over shuffled minibatches: clipped ratio loss (+ entropy bonus) on the
//      policy, clipped value loss on the critic (a separate model, InstructGPT/OpenRLHF style),
//      AdamW, gradient clipping; only the critic trains during the critic warm-up iterations;
//      both optimizers (config.optimizer; the critic's at critic_lr) follow its schedule per
//      iteration (ppo_learning_rate); with target_kl > 0 the epochs stop early once the epoch's
//      mean approx_kl exceeds it;
//   7. KL controller update from the mean per-sequence KL sum; stats to <out>/metrics.jsonl and
//      TensorBoard; a progress line on stderr; checkpoint every checkpoint_every iterations.
//
// Per-minibatch stats go to <out>/minibatches.jsonl (what `rlhf replay --update` reproduces).
// Checkpoints: <out>/checkpoints/iter-NNNN/ (policy.pt, critic.pt, the two optimizer states,
// state.pb, and policy/ + critic/ as regular checkpoint folders; iter-0000 is the start state),
// written under a temp name and renamed; <out>/checkpoints/latest names the newest complete one
// (written atomically). A new PpoTrainer on the same out folder resumes from it and, on CPU,
// reproduces the numbers of an uninterrupted run.
//
// LoRA (config.lora.rank > 0, policy/model/lora.h): the policy's base weights are frozen and only
// its adapters train (the critic trains in full); the trainer keeps the base's dtype as given (a
// caller may store its projection matrices in bfloat16 first, store_matrices_as). The reference is
// the separate model given in PpoModels, or, when PpoModels::reference is null, the policy's own
// frozen base with its adapters switched off (LoraAdapters::disable): no second copy of the base
// weights, and log-probs equal, bit for bit, to those of a separate reference holding the same
// weights. Checkpoints: policy.pt = the frozen base, adapter/ = the adapters (PEFT layout), policy/
// = the merged weights. run() ends by folding the adapters into the policy (the caller's
// PpoModels::policy is then the merged plain model). Critic "policy_base" (with LoRA;
// PpoModels::critic null): the value head sits on the policy's frozen base, shared through
// share_base, with its own LoRA adapters (critic_lora, or the policy's lora settings); the critic's
// optimizer holds those adapters and the head. critic.pt then holds the critic's weights (the
// shared base), head and adapters ("lora." names); run()'s final merge folds the policy's adapters
// into that shared base, so the critic is not used after run(). Critic "reward_base" (PpoModels::
// critic = reward_base_critic(the teacher's reward model)): the same on the reward model's frozen
// base, shared with the teacher, which scores with its own modules (the critic's adapters live on
// the critic's projections only, so the teacher's scores are the plain reward model's); critic.pt
// then holds the value head and the adapters alone, and critic/ the reward model's base with the
// trained head (what `replay --update` loads). Built on the training toolkit
// (policy/training/training.h) like SFT and reward: place_trainer, trainable_parameters, Optimizer,
// make_schedule, StateFolder.
//
// Ownership: the trainer shares the models of PpoModels (torch module handles) and trains them in
// place; it owns its optimizers, KL controller and metrics writer. Not thread-safe. Errors:
// rlhf::Error naming the iteration, the file or the config field.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "policy/model/model.h"
#include "policy/ppo/ppo_config.h"
#include "proto/ppo.pb.h"

namespace rlhf::policy {

// Scores a batch of (prompt ids, response ids) pairs, one float per pair. Response ids are as
// generated: the EOS id is the last element when the model produced it. Called under no-grad.
using TeacherFn =
    std::function<std::vector<float>(const std::vector<std::vector<int64_t>>& prompts,
                                     const std::vector<std::vector<int64_t>>& responses)>;

// Optional: ids -> text, for the prompt_text/response_text fields of rollout records.
using DecodeFn = std::function<std::string(const std::vector<int64_t>&)>;

// Optional: extra per-iteration stats computed on the rollout batch (e.g. a gold teacher's
// accuracy, "gold/accuracy"); merged into the iteration's stats and metrics.
using ExtraStatsFn = std::function<std::map<std::string, double>(
    const std::vector<std::vector<int64_t>>& prompts,
    const std::vector<std::vector<int64_t>>& responses)>;

struct PpoModels {
  Transformer policy{nullptr};  // trained
  // frozen (never updated); may not be the same object as the policy. With dtype "bf16" the
  // trainer stores its projection matrices in bfloat16 (store_matrices_as) in place. Null with
  // LoRA (config.lora.rank > 0): the reference is the policy's base with its adapters off.
  Transformer reference{nullptr};
  // Gets a value head when it has none. Null with critic "policy_base": the trainer builds it on
  // the policy's frozen base (share_base) with its own value head and adapters. With critic
  // "reward_base" required: reward_base_critic(the teacher's reward model); the trainer adds the
  // adapters.
  Transformer critic{nullptr};
};

// Copies parameters and buffers by name from `src` into `dst` (same architecture); for making
// the reference / critic from the policy.
void copy_weights(Transformer& src, Transformer& dst);

// A deep copy of `model` (same config, same weights).
Transformer clone_model(Transformer& model);

// A model of `base`'s architecture (without a value head) whose parameters and buffers share
// `base`'s tensors (the same storage, no copy): the critic of critic "policy_base", which then
// gets its own value head and LoRA adapters. Building it allocates, then frees, one float32 set of
// fresh weights (the Transformer constructor's).
Transformer share_base(Transformer& base);

// The critic of critic "reward_base": share_base(reward_model) with a value head initialised as a
// copy of the reward model's score head (as value_model = the reward model initialises it;
// InstructGPT). The reward model is left as it was and keeps scoring with its own head and plain
// weights. A reward model held in bfloat16 (the PPO teacher under dtype bf16) gives a critic on
// that bfloat16 base with a float32 head, whose forward passes then run under bf16 autocast (as
// the trainer's do under bf16). Throws rlhf::Error when the reward model has no value head.
Transformer reward_base_critic(Transformer& reward_model);

// The learning rate of PPO iteration `iteration` (1-based) for the peak `peak_lr` (optimizer.lr
// or critic_lr) under the config's optimizer section (schedule, warm-up, min_lr_ratio; PPO's
// defaults for unset fields) over `iterations` iterations: training::make_schedule with
// step = iteration - 1. A pure function of the iteration: the live update, a resumed run and
// `replay --update` set the same lr for the same iteration. Throws rlhf::Error on an unknown
// schedule.
double ppo_learning_rate(const proto::PpoConfig& config, double peak_lr, int64_t iteration);

class PpoTrainer {
 public:
  // config: the PpoConfig (checked with validate_ppo_config, resolved with resolved_ppo_config).
  // prompts: token ids (BOS included when wanted). out_dir: where rollouts/, checkpoints/,
  // metrics.jsonl go.
  // Resumes from <out_dir>/checkpoints/latest when it exists (weights, optimizers, KL coef,
  // score moments); the given models' weights are then replaced by the checkpoint's.
  PpoTrainer(const proto::PpoConfig& config, PpoModels models, TeacherFn teacher,
             std::vector<std::vector<int64_t>> prompts, std::string out_dir,
             DecodeFn decode = nullptr);
  ~PpoTrainer();

  // Runs until config.iterations iterations are done (from where a resume left off). Throws
  // rlhf::Error on a non-finite score, loss or gradient, naming the iteration and the quantity;
  // the last good checkpoint is kept. Writes a final checkpoint.
  void run();

  // One iteration (1-based index = completed + 1); returns its stats (the names of the issue).
  std::map<std::string, double> step();

  int64_t completed_iterations() const { return completed_; }
  double kl_coef() const;
  // Stats of every iteration run by this object, in order.
  const std::vector<std::map<std::string, double>>& history() const { return history_; }

  void set_extra_stats(ExtraStatsFn fn);
  // Ids that end a response besides the policy's eos_id (SamplingOptions::stop_ids), e.g. the
  // chat template's end-of-turn token for conversation prompts; a response ending in one counts
  // as ended with EOS (no missing_eos_penalty). Call before run() / step().
  void set_stop_ids(std::vector<int64_t> ids);

  // `rlhf replay --update`: re-runs the PPO update of the iteration whose rollouts are in
  // `rollout_file`, starting from <run_dir>/checkpoints/iter-(k-1) (weights, optimizer states and
  // the run's resolved config), and returns the per-minibatch stats, which on CPU equal the live
  // run's lines in <run_dir>/minibatches.jsonl. Touches no file. device "" = the config's.
  static std::vector<std::map<std::string, double>> replay_update(const std::string& run_dir,
                                                                  const std::string& rollout_file,
                                                                  const std::string& device = "");

  // Writes a checkpoint now (also done every checkpoint_every iterations and at the end of run()).
  void save_checkpoint_now();
  std::string checkpoint_dir() const;  // "" when none yet

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t completed_ = 0;
  std::vector<std::map<std::string, double>> history_;
};

}  // namespace rlhf::policy
