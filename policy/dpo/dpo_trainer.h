// Direct preference optimisation of the policy (`rlhf dpo`): DPO (Rafailov et al. 2023), IPO
// (Azar et al. 2023) and cDPO (label smoothing) on pairwise comparisons, against a frozen
// reference, the initial policy. Formulas, sources and choices: docs/dpo.md; the losses are
// policy/dpo/dpo_math.h.
//
// Data: reward/comparisons.h reads it (pairs JSONL such as `rlhf annotate export --format pairs`,
// HH JSONL, conversation pairs rendered with the chat template beside the tokenizer). Each
// answer's sequence is [bos] prompt (its last max_prompt_tokens) answer (its first
// max_answer_tokens) [eos]; its log-probability is the sum over the answer tokens and EOS.
// Reference log-probabilities are computed once per sequence before training (the reference
// never changes), in fixed chunks of sequences shared out among the ranks.
//
// Optimisation: the training toolkit (policy/training/training.h) as SFT and reward do:
// place_trainer, trainable_parameters (LoRA: the adapters alone), Optimizer from
// config.optimizer (SFT defaults), make_schedule, StateFolder. Batches of batch_pairs
// comparisons keep ranking groups whole (reward::make_batches, shuffled by seed + epoch).
// Data-parallel: each rank takes its contiguous share of a batch's pairs, divides its summed loss
// by the global pair count, and the gradients are summed over ranks (a rank with no pairs adds
// zeros), so N ranks step as one process does up to float rounding. micro_batch_pairs splits a
// rank's share into forward / backward passes whose gradients accumulate.
//
// Output folder (--out):
//   model/    the final policy (LoRA: merged into a plain checkpoint) with the tokenizer's files
//   adapter/  LoRA only: the adapters alone
//   state/    resumable state (weights, AdamW, RNG, data position; `latest`)
//   metrics.jsonl + TensorBoard events: train/{loss, accuracy, chosen_reward, rejected_reward,
//             margin, lr, grad_norm, pairs} per step, eval/{...} at each evaluation
//   manifest.pb / manifest.json (StageManifest "dpo"; the caller writes it from DpoResult)
//
// Resume: the rule of policy/training/training.h (the config fingerprint ignores out_dir,
// threads, device, dtype and stop_after); on CPU a resumed run ends bit for bit where an
// uninterrupted one does. A folder holding this config's finished run is left as it is.
//
// Ownership: train_dpo owns what it builds for the call; the results are files and the returned
// DpoResult. Thread safety: one run per process at a time (it sets torch's global threads and
// seeds the global torch RNG). Errors: rlhf::Error naming the config field, the data file and
// line, or the state folder.
#pragma once

#include <cstdint>
#include <string>

#include "common/manifest.h"
#include "proto/dpo.pb.h"

namespace rlhf::policy::dpo {

// Means over pairs of the DPO quantities (docs/dpo.md).
struct PairStats {
  double loss = 0;
  double accuracy = 0;         // share of pairs with chosen_reward > rejected_reward
  double chosen_reward = 0;    // beta * (logp_c - ref_c)
  double rejected_reward = 0;  // beta * (logp_r - ref_r)
  double margin = 0;           // chosen_reward - rejected_reward
  int64_t n = 0;
};

struct DpoResult {
  PairStats heldout;     // of the final policy (n = 0 without held-out pairs)
  PairStats last_train;  // the last step's batch
  int64_t steps = 0;
  double wall_seconds = 0;
  std::string out_dir, model_dir;
  bool already_complete = false;  // the folder held this finished run; nothing was trained
  bool interrupted = false;       // stop_after ended it (nothing saved after that step)
  proto::StageManifest manifest;  // the finished stage record (the caller writes it)
};

// Runs DPO as configured (out_dir, train_file and init_from must be set). on_start (optional)
// receives the unfinished stage record once the run will train. Throws rlhf::Error with context.
DpoResult train_dpo(const proto::DpoConfig& config, const StageStarted& on_start = nullptr);

}  // namespace rlhf::policy::dpo
