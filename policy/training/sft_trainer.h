// Supervised fine-tuning of the policy (`rlhf sft`).
//
// Data: JSON lines {"prompt": ..., "response": ...} (ids as in policy/tokenizer/prompt_format.h;
// loss on the response tokens, EOS included), JSON lines {"messages": [{"role", "content"}, ...]}
// (rendered with the tokenizer folder's chat template, loss on the assistant turns only; one kind
// of line per file; policy/training/sft_messages.h) or raw text (one document per line,
// [bos] text [eos], loss on every token). Rows of at most seq_len + 1 tokens: packed (examples
// concatenated and cut into full rows; attention crosses example boundaries, as in nanoGPT/llm.c)
// or padded (one example per row, truncated, right-padded to the longest row of the micro-batch).
//
// Optimisation: AdamW (weight decay on parameters with >= 2 dims only: matrices and embeddings,
// not norms or biases), linear warm-up then cosine decay, global-norm gradient clipping, gradient
// accumulation (the step's loss is the mean over all its target tokens), fixed seed.
//
// Output folder:
//   model/             final native checkpoint (config, weights, tokenizer hash) + the tokenizer:
//                      tokenizer.model, or tokenizer.json (+ tokenizer_config.json)
//                      (Tokenizer::save)
//   adapter/           LoRA only: the adapters alone (model/ then holds the merged weights)
//   state/             resumable state (latest, step-NNNNNNNN/): model, AdamW state, torch RNG,
//                      data position
//   metrics.jsonl, events.out.tfevents.*   per-step loss/lr/grad norm/tokens per second and
//                      eval_loss/eval_ppl
//   manifest.pb, manifest.json   StageManifest: the trainer fills SftResult::manifest; the stage
//                      layer (pipelines/stage_record.h, `rlhf sft`) writes it
//
// Resume: starting again with the same config and output folder continues from state/latest (the
// config must match, except stop_after/out_dir/threads/device/dtype) and, on CPU, ends with the
// same weights bit for bit as an uninterrupted run. A folder whose manifest is complete for the
// same config is left as it is.
//
// Setup through the training toolkit (policy/training/training.h), as reward and PPO do:
// place_trainer (device, precision, process group, threads), trainable_parameters, Optimizer
// from config.optimizer (proto/optimizer.proto), make_schedule, StateFolder.
//
// Ownership: train_sft owns everything it builds (model, optimizer, data) for the call; the
// results are files and the returned SftResult. Thread safety: one run per process at a time (it
// sets torch's global threads and seeds the global torch RNG). Errors: rlhf::Error naming the
// config field, the data file and line, or the state folder.
#pragma once

#include <cstdint>
#include <string>

#include "common/manifest.h"
#include "policy/training/sft_config.h"
#include "proto/sft.pb.h"

namespace rlhf::policy {

struct SftResult {
  std::string out_dir, model_dir;
  int64_t steps = 0;             // optimizer steps done in total
  int64_t resumed_from = -1;     // step the run resumed from (-1: fresh start)
  double first_eval_loss = 0.0;  // held-out loss of the initial model (step 0)
  double final_eval_loss = 0.0;
  double final_eval_ppl = 0.0;
  double final_train_loss = 0.0;
  bool early_stopped = false;
  bool interrupted = false;       // stopped by stop_after: no model, no manifest
  bool already_complete = false;  // the folder held a finished run of this config
  double tokens_per_second = 0.0;
  double wall_seconds = 0.0;
  proto::StageManifest manifest;  // the finished stage record (not written here)
};

// Runs (or resumes) SFT as configured. Errors name the config field / data file and line.
// on_start (optional) receives the unfinished stage record once the run has passed the resume
// check and will train (not for a finished run, not for a refused one).
SftResult train_sft(const proto::SftConfig& config, const StageStarted& on_start = nullptr);

}  // namespace rlhf::policy
