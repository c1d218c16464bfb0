// `rlhf reward train|eval|score`: the reward model (teacher) commands. Thin: flags -> reward/.
#include <cstdio>
#include <string>

#include "common/error.h"
#include "pipelines/stage_record.h"
#include "policy/runtime/distributed.h"
#include "reward/comparisons.h"
#include "reward/scorer.h"
#include "reward/train_config.h"
#include "reward/trainer.h"
#include "tools/cli.h"

namespace {

using rlhf::cli::Args;

int run_train(const Args& a) {
  const std::string path = a.get("config");
  rlhf::proto::RewardTrainConfig cfg = rlhf::reward::load_train_config(path);
  // CLI flags override config fields.
  if (auto v = a.get_opt("out")) cfg.set_out_dir(*v);
  if (auto v = a.get_opt("train-file")) cfg.set_train_file(*v);
  if (auto v = a.get_opt("eval-file")) cfg.set_eval_file(*v);
  if (auto v = a.get_opt("annotation-db")) cfg.set_annotation_db(*v);
  if (auto v = a.get_opt("format")) cfg.set_format(*v);
  if (auto v = a.get_opt("init-from")) cfg.set_init_from(*v);
  if (auto v = a.get_opt("tokenizer")) cfg.set_tokenizer(*v);
  if (auto v = a.get_opt("device")) cfg.set_device(*v);
  if (auto v = a.get_opt("dtype")) cfg.set_dtype(*v);
  if (a.has("steps")) cfg.set_steps(a.get_int("steps"));
  if (a.has("lr")) cfg.mutable_optimizer()->set_lr(a.get_double("lr"));
  if (a.has("batch-pairs")) cfg.set_batch_pairs(static_cast<int32_t>(a.get_int("batch-pairs")));
  if (a.has("eval-every")) cfg.set_eval_every(a.get_int("eval-every"));
  if (a.has("seed")) cfg.set_seed(static_cast<uint64_t>(a.get_int("seed")));
  if (a.has("threads")) cfg.set_threads(static_cast<int32_t>(a.get_int("threads")));
  if (a.has("time-limit"))
    cfg.set_time_limit_seconds(static_cast<float>(a.get_double("time-limit")));
  rlhf::reward::validate_config(cfg, path);
  if (cfg.out_dir().empty())
    throw rlhf::UsageError("no output folder: give --out DIR or out_dir in " + path);
  auto r = rlhf::pipelines::run_reward_stage(cfg);
  if (!rlhf::policy::dist::world().is_root()) return 0;  // rank 0 reports
  if (r.already_complete)
    std::printf("reward model: %s already holds this finished run\n", cfg.out_dir().c_str());
  std::printf("reward model: %s\nheld-out: %s\nbest step %lld of %lld, score offset %.4f, %.1fs\n",
              r.model_dir.c_str(), rlhf::reward::to_json(r.heldout).c_str(),
              static_cast<long long>(r.best_step), static_cast<long long>(r.steps), r.score_offset,
              r.wall_seconds);
  return 0;
}

int run_eval(const Args& a) {
  rlhf::reward::ScorerOptions opts;
  opts.device = a.get("device");
  opts.batch_size = static_cast<int>(a.get_int("batch-size"));
  if (a.has("threads")) torch::set_num_threads(static_cast<int>(a.get_int("threads")));
  rlhf::reward::RewardScorer scorer(a.get("model"), opts);
  auto cs = rlhf::reward::read_comparisons(a.get("pairs"), a.get("format"));
  if (cs.empty()) throw rlhf::Error(a.get("pairs") + ": no comparisons");
  auto m = scorer.evaluate(cs);
  if (a.get_bool("json")) {
    std::printf("%s\n", rlhf::reward::to_json(m).c_str());
  } else {
    std::printf(
        "pairs        %lld\naccuracy     %.4f\nloss         %.4f\nmean margin  %.4f\nECE          "
        "%.4f\n",
        static_cast<long long>(m.n), m.accuracy, m.loss, m.mean_margin, m.ece);
  }
  return 0;
}

int run_score(const Args& a) {
  rlhf::reward::ScorerOptions opts;
  opts.device = a.get("device");
  rlhf::reward::RewardScorer scorer(a.get("model"), opts);
  auto s = scorer.score({a.get("prompt")}, {a.get("answer")});
  std::printf("%.6f\n", s.at(0));
  return 0;
}

int run_corpus(const Args& a) {
  auto cs = rlhf::reward::read_comparisons(a.get("pairs"), a.get("format"));
  int64_t n = rlhf::reward::write_text_corpus(cs, a.get("out"));
  std::printf("%lld lines from %zu comparisons -> %s\n", static_cast<long long>(n), cs.size(),
              a.get("out").c_str());
  return 0;
}

rlhf::cli::Register reg_corpus(
    {"reward corpus",
     "write the distinct prompts and answers of a comparisons file as text lines (tokenizer input)",
     "--pairs FILE [--format pairs|hh] --out FILE",
     {{"pairs", "comparisons file (.jsonl or .jsonl.gz)", "", false, true},
      {"format", "pairs | hh", "pairs"},
      {"out", "text file to write", "", false, true}},
     run_corpus});

rlhf::cli::Register reg_train(
    {"reward train",
     "train the reward model (teacher) on pairwise comparisons (resumes from DIR/state when "
     "restarted)",
     "--config FILE.pbtxt [--out DIR] [overrides]",
     {{"config", "training config (proto RewardTrainConfig, text format)", "", false, true},
      {"out", "output folder (overrides out_dir)"},
      {"train-file", "comparisons file (overrides train_file)"},
      {"eval-file", "held-out comparisons file (overrides eval_file)"},
      {"annotation-db", "annotation SQLite DB to export pairs from (overrides annotation_db)"},
      {"format", "pairs | hh (overrides format)"},
      {"init-from", "SFT checkpoint folder, native or Hugging Face (overrides init_from)"},
      {"tokenizer", "tokenizer .model (overrides tokenizer)"},
      {"device", "cpu | cuda | cuda:N (overrides device)"},
      {"dtype", "fp32 | bf16 (overrides dtype; bf16 = autocast, fp32 master weights)"},
      {"steps", "optimizer steps (overrides steps)"},
      {"lr", "peak learning rate (overrides optimizer.lr)"},
      {"batch-pairs", "comparisons per batch (overrides batch_pairs)"},
      {"eval-every", "steps between held-out evaluations (overrides eval_every)"},
      {"seed", "seed (overrides seed)"},
      {"threads", "torch threads (overrides threads)"},
      {"time-limit", "stop training after this many seconds (overrides time_limit_seconds)"}},
     run_train});

rlhf::cli::Register reg_eval(
    {"reward eval",
     "pairwise accuracy, loss, mean margin and calibration (ECE) of a reward model",
     "--model DIR --pairs FILE [--format pairs|hh] [--json]",
     {{"model", "reward model folder (or a `reward train --out` folder)", "", false, true},
      {"pairs", "comparisons file (.jsonl or .jsonl.gz)", "", false, true},
      {"format", "pairs | hh", "pairs"},
      {"json", "print one JSON line {accuracy, n, loss, mean_margin, ece}", "", true},
      {"device", "cpu | cuda[:N]", "cpu"},
      {"batch-size", "sequences per forward pass", "32"},
      {"threads", "torch threads"}},
     run_eval});

rlhf::cli::Register reg_score({"reward score",
                               "print the reward model's score of one answer to one prompt",
                               "--model DIR --prompt TEXT --answer TEXT",
                               {{"model", "reward model folder", "", false, true},
                                {"prompt", "prompt text", "", false, true},
                                {"answer", "answer text", "", false, true},
                                {"device", "cpu | cuda[:N]", "cpu"}},
                               run_score});

}  // namespace
