// `rlhf sft` (supervised fine-tuning) and `rlhf lora merge`. Thin: flags -> policy/.
#include <cstdio>
#include <string>

#include "common/error.h"
#include "pipelines/stage_record.h"
#include "policy/model/checkpoint.h"
#include "policy/model/lora.h"
#include "policy/runtime/distributed.h"
#include "policy/training/sft_trainer.h"
#include "tools/cli.h"

namespace {

using rlhf::cli::Args;

int run_sft(const Args& a) {
  const std::string path = a.get("config");
  rlhf::proto::SftConfig cfg = rlhf::policy::load_sft_config(path);
  // CLI flags override config fields.
  if (auto v = a.get_opt("out")) cfg.set_out_dir(*v);
  if (auto v = a.get_opt("train-file")) cfg.set_train_file(*v);
  if (auto v = a.get_opt("eval-file")) cfg.set_eval_file(*v);
  if (auto v = a.get_opt("format")) cfg.set_format(*v);
  if (auto v = a.get_opt("init-from")) cfg.set_init_from(*v);
  if (auto v = a.get_opt("tokenizer")) cfg.set_tokenizer(*v);
  if (auto v = a.get_opt("device")) cfg.set_device(*v);
  if (auto v = a.get_opt("dtype")) cfg.set_dtype(*v);
  if (a.has("steps")) cfg.set_steps(a.get_int("steps"));
  if (a.has("epochs")) cfg.set_epochs(static_cast<float>(a.get_double("epochs")));
  if (a.has("lr")) cfg.mutable_optimizer()->set_lr(a.get_double("lr"));
  if (a.has("batch-size")) cfg.set_batch_size(static_cast<int32_t>(a.get_int("batch-size")));
  if (a.has("grad-accum")) cfg.set_grad_accum(static_cast<int32_t>(a.get_int("grad-accum")));
  if (a.has("seq-len")) cfg.set_seq_len(static_cast<int32_t>(a.get_int("seq-len")));
  if (a.has("packed")) cfg.set_packed(true);
  if (a.has("eval-every")) cfg.set_eval_every(a.get_int("eval-every"));
  if (a.has("save-every")) cfg.set_save_every(a.get_int("save-every"));
  if (a.has("early-stop-patience"))
    cfg.set_early_stop_patience(static_cast<int32_t>(a.get_int("early-stop-patience")));
  if (a.has("seed")) cfg.set_seed(static_cast<uint64_t>(a.get_int("seed")));
  if (a.has("threads")) cfg.set_threads(static_cast<int32_t>(a.get_int("threads")));
  if (a.has("stop-after")) cfg.set_stop_after(a.get_int("stop-after"));
  if (a.has("lora-rank"))
    cfg.mutable_lora()->set_rank(static_cast<int32_t>(a.get_int("lora-rank")));
  rlhf::policy::validate_sft_config(cfg, path);
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
  auto loaded = rlhf::policy::load_checkpoint(a.get("base"));
  const std::string adapter = a.get("adapter");
  rlhf::policy::LoraAdapters lora(loaded.model, rlhf::policy::LoraAdapters::read_options(adapter));
  lora.load(adapter);
  lora.merge();
  const std::string out = a.get("out");
  if (a.get_bool("hf")) {
    rlhf::policy::export_hf(loaded.model, out);
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
      {"out", "output folder (overrides out_dir)"},
      {"train-file", "JSONL {prompt,response} or text (overrides train_file)"},
      {"eval-file", "held-out file (overrides eval_file)"},
      {"format", "auto | jsonl | text (overrides format)"},
      {"init-from", "native checkpoint or Hugging Face folder (overrides init_from)"},
      {"tokenizer", "SentencePiece .model (overrides tokenizer)"},
      {"device", "cpu | cuda | cuda:N (overrides device)"},
      {"dtype", "fp32 | bf16 (overrides dtype; bf16 = autocast, fp32 master weights)"},
      {"steps", "optimizer steps (overrides steps)"},
      {"epochs", "passes over the data when steps is 0 (overrides epochs)"},
      {"lr", "peak learning rate (overrides optimizer.lr)"},
      {"batch-size", "rows per micro-batch (overrides batch_size)"},
      {"grad-accum", "micro-batches per step (overrides grad_accum)"},
      {"seq-len", "tokens per row (overrides seq_len)"},
      {"packed", "pack examples into full rows (sets packed)", "", true},
      {"eval-every", "steps between evaluations (overrides eval_every)"},
      {"save-every", "steps between resumable checkpoints (overrides save_every)"},
      {"early-stop-patience", "evaluations without improvement before stopping"},
      {"seed", "random seed (overrides seed)"},
      {"threads", "torch intra-op threads (overrides threads)"},
      {"stop-after", "testing: exit after this step as if killed (no save)"},
      {"lora-rank", "train LoRA adapters of this rank (overrides lora.rank)"}},
     run_sft});

rlhf::cli::Register reg_merge(
    {"lora merge",
     "fold LoRA adapters into their base model and write a plain checkpoint",
     "--base DIR --adapter DIR --out DIR [--hf]",
     {{"base", "base checkpoint folder (native or Hugging Face)", "", false, true},
      {"adapter", "adapter folder (adapter_config.json + adapter_model.safetensors)", "", false,
       true},
      {"out", "output checkpoint folder", "", false, true},
      {"hf", "write the Hugging Face layout (config.json + model.safetensors) only", "", true}},
     run_merge});

}  // namespace
