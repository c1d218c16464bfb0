// `rlhf sft` (supervised fine-tuning) and `rlhf lora merge`. Thin: flags -> policy/.
#include <cstdio>
#include <string>

#include "common/error.h"
#include "pipelines/memory_plans.h"
#include "pipelines/stage_record.h"
#include "policy/model/checkpoint.h"
#include "policy/model/lora.h"
#include "policy/runtime/distributed.h"
#include "policy/training/sft_trainer.h"
#include "tools/cli.h"
#include "tools/config_flags.h"

namespace {

using rlhf::cli::Args;

// The flags that override SftConfig fields, one per line: flag, field path, help.
const rlhf::cli::ConfigFlags kSftOverrides{
    &rlhf::proto::SftConfig::descriptor,
    {
        {"out", "out_dir", "output folder"},
        {"train-file", "train_file", "JSONL {prompt,response} or text"},
        {"eval-file", "eval_file", "held-out file"},
        {"format", "format", "auto | jsonl | text"},
        {"init-from", "init_from", "native checkpoint or Hugging Face folder"},
        {"tokenizer", "tokenizer", ".model, tokenizer.json or a folder holding one"},
        {"device", "device", "cpu | cuda | cuda:N"},
        {"dtype", "dtype", "fp32 | bf16; bf16 = autocast, fp32 master weights"},
        {"steps", "steps", "optimizer steps"},
        {"epochs", "epochs", "passes over the data when steps is 0"},
        {"lr", "optimizer.lr", "peak learning rate"},
        {"batch-size", "batch_size", "rows per micro-batch"},
        {"grad-accum", "grad_accum", "micro-batches per step"},
        {"seq-len", "seq_len", "tokens per row"},
        {"packed", "packed", "pack examples into full rows"},
        {"eval-every", "eval_every", "steps between evaluations"},
        {"save-every", "save_every", "steps between resumable checkpoints"},
        {"early-stop-patience", "early_stop_patience",
         "evaluations without improvement before stopping"},
        {"seed", "seed", "random seed"},
        {"threads", "threads", "torch intra-op threads"},
        {"stop-after", "stop_after", "testing: exit after this step as if killed (no save)"},
        {"lora-rank", "lora.rank", "train LoRA adapters of this rank"},
    }};

int run_sft(const Args& a) {
  const std::string path = a.get("config");
  rlhf::proto::SftConfig cfg = rlhf::policy::load_sft_config(path);
  rlhf::cli::apply_config_flags(kSftOverrides, a, &cfg);
  rlhf::policy::validate_sft_config(cfg, path);
  if (a.get_bool("plan")) {
    std::fputs(rlhf::pipelines::sft_memory_plan(cfg).table().c_str(), stdout);
    return 0;
  }
  if (cfg.out_dir().empty())
    throw rlhf::UsageError("no output folder: give --out DIR or out_dir in " + path);
  const auto r = rlhf::pipelines::run_sft_stage(cfg);
  if (!rlhf::policy::dist::world().is_root()) return 0;  // rank 0 reports
  if (r.already_complete) {
    std::printf("sft: %s already holds a finished run of this config (%lld steps)\n",
                r.out_dir.c_str(), static_cast<long long>(r.steps));
  } else if (r.interrupted) {
    std::printf("sft: stopped after step %lld (stop_after); run again to resume\n",
                static_cast<long long>(r.steps));
  } else {
    std::printf(
        "sft: %s after %lld steps%s: eval loss %.4f (ppl %.2f), train loss %.4f, "
        "%.0f tokens/s, %.1fs\n",
        r.model_dir.c_str(), static_cast<long long>(r.steps),
        r.early_stopped ? " (early stop)" : "", r.final_eval_loss, r.final_eval_ppl,
        r.final_train_loss, r.tokens_per_second, r.wall_seconds);
  }
  return 0;
}

int run_merge(const Args& a) {
  // Flags first, so a bad size is refused before the model loads.
  if (a.has("max-shard-size") && !a.get_bool("hf"))
    throw rlhf::UsageError("--max-shard-size applies to --hf exports only");
  rlhf::policy::HfExportOptions options;
  try {
    options.max_shard_size =
        rlhf::policy::parse_shard_size(a.get("max-shard-size"), "--max-shard-size");
  } catch (const rlhf::Error& e) {
    throw rlhf::UsageError(e.what());
  }
  options.source_dir = a.get("base");
  auto loaded = rlhf::policy::load_checkpoint(a.get("base"));
  const std::string adapter = a.get("adapter");
  rlhf::policy::LoraAdapters lora(loaded.model, rlhf::policy::LoraAdapters::read_options(adapter));
  lora.load(adapter);
  lora.merge();
  const std::string out = a.get("out");
  if (a.get_bool("hf")) {
    rlhf::policy::export_hf(loaded.model, out, options);
  } else {
    loaded.info.created_by = "lora merge";
    rlhf::policy::save_checkpoint(loaded.model, out, loaded.info);
  }
  std::printf("merged %s into %s -> %s (%s)\n", adapter.c_str(), a.get("base").c_str(), out.c_str(),
              a.get_bool("hf") ? "Hugging Face" : "native");
  return 0;
}

rlhf::cli::Register reg_sft(
    {"sft",
     "supervised fine-tuning of the policy (resumes from DIR/state when restarted)",
     "--config FILE.pbtxt [--out DIR] [overrides]",
     {{"config", "training config (proto SftConfig, text format)", "", false, true},
      {"plan",
       "print the memory plan (bytes per component on the configured device and dtype) and exit; "
       "reads no weights",
       "", true}},
     run_sft},
    kSftOverrides);

rlhf::cli::Register reg_merge(
    {"lora merge",
     "fold LoRA adapters into their base model and write a plain checkpoint",
     "--base DIR --adapter DIR --out DIR [--hf [--max-shard-size SIZE]]",
     {{"base", "base checkpoint folder (native or Hugging Face)", "", false, true},
      {"adapter", "adapter folder (adapter_config.json + adapter_model.safetensors)", "", false,
       true},
      {"out", "output checkpoint folder", "", false, true},
      {"hf",
       "write the Hugging Face layout: config.json (the base's keys kept), safetensors shards + "
       "index, the base's tokenizer and generation files",
       "", true},
      {"max-shard-size", "with --hf: largest shard, as transformers (\"500MB\", \"5GB\", \"2GiB\")",
       "5GB"}},
     run_merge});

}  // namespace
