// `rlhf dpo`: direct preference optimisation of the policy (DPO, IPO, cDPO). Thin: flags ->
// policy/dpo (through the stage record of pipelines/stage_record.h).
#include <cstdio>
#include <string>

#include "common/error.h"
#include "pipelines/stage_record.h"
#include "policy/dpo/dpo_config.h"
#include "policy/dpo/dpo_trainer.h"
#include "policy/runtime/distributed.h"
#include "tools/cli.h"
#include "tools/config_flags.h"

namespace {

using rlhf::cli::Args;

// The flags that override DpoConfig fields, one per line: flag, field path, help.
const rlhf::cli::ConfigFlags kDpoOverrides{
    &rlhf::proto::DpoConfig::descriptor,
    {
        {"out", "out_dir", "output folder"},
        {"train-file", "train_file", "comparisons file"},
        {"eval-file", "eval_file", "held-out comparisons file"},
        {"format", "format", "pairs | hh | messages"},
        {"init-from", "init_from", "initial policy (also the frozen reference)"},
        {"tokenizer", "tokenizer", ".model, tokenizer.json or a folder holding one"},
        {"loss", "loss", "sigmoid (DPO, cDPO) | ipo"},
        {"beta", "beta", "KL strength beta"},
        {"label-smoothing", "label_smoothing", "cDPO: share of pairs assumed flipped"},
        {"lora-rank", "lora.rank", "train LoRA adapters of this rank (0 = full fine-tuning)"},
        {"device", "device", "cpu | cuda | cuda:N"},
        {"dtype", "dtype", "fp32 | bf16; bf16 = autocast, fp32 master weights"},
        {"steps", "steps", "optimizer steps"},
        {"lr", "optimizer.lr", "peak learning rate"},
        {"batch-pairs", "batch_pairs", "comparisons per step"},
        {"micro-batch-pairs", "micro_batch_pairs",
         "pairs per forward / backward pass (0 = a rank's whole share)"},
        {"eval-every", "eval_every", "steps between held-out evaluations"},
        {"seed", "seed", "random seed"},
        {"threads", "threads", "torch threads"},
        {"stop-after", "stop_after", "testing: exit after this step as if killed"},
    }};

int run_dpo(const Args& a) {
  const std::string path = a.get("config");
  rlhf::proto::DpoConfig cfg = rlhf::policy::dpo::load_dpo_config(path);
  rlhf::cli::apply_config_flags(kDpoOverrides, a, &cfg);
  rlhf::policy::dpo::validate_dpo_config(cfg, path);
  if (cfg.out_dir().empty())
    throw rlhf::UsageError("no output folder: give --out DIR or out_dir in " + path);
  const auto r = rlhf::pipelines::run_dpo_stage(cfg);
  if (!rlhf::policy::dist::world().is_root()) return 0;  // rank 0 reports
  if (r.already_complete)
    std::printf("dpo: %s already holds this finished run\n", cfg.out_dir().c_str());
  if (r.interrupted) {
    std::printf("dpo: stopped after step %lld (stop_after); run again to resume\n",
                static_cast<long long>(r.steps));
    return 0;
  }
  std::printf(
      "dpo: %s after %lld steps; held-out (%lld pairs): loss %.4f accuracy %.4f chosen reward "
      "%.4f rejected reward %.4f margin %.4f\n",
      r.model_dir.c_str(), static_cast<long long>(r.steps), static_cast<long long>(r.heldout.n),
      r.heldout.loss, r.heldout.accuracy, r.heldout.chosen_reward, r.heldout.rejected_reward,
      r.heldout.margin);
  return 0;
}

rlhf::cli::Register reg_dpo(
    {"dpo",
     "direct preference optimisation of the policy on comparisons: DPO, IPO (loss: \"ipo\"), "
     "cDPO (label_smoothing) against the frozen initial policy (resumes from DIR/state)",
     "--config FILE.pbtxt [--out DIR] [overrides]",
     {{"config", "training config (proto DpoConfig, text format)", "", false, true}},
     run_dpo},
    kDpoOverrides);

}  // namespace
