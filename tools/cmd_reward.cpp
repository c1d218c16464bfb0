// `rlhf reward train|eval|score`: the reward model (teacher) commands. Thin: flags -> reward/.
#include <cstdio>
#include <string>

#include "common/error.h"
#include "pipelines/memory_plans.h"
#include "pipelines/stage_record.h"
#include "policy/runtime/distributed.h"
#include "reward/chat_renderer.h"
#include "reward/comparisons.h"
#include "reward/scorer.h"
#include "reward/train_config.h"
#include "reward/trainer.h"
#include "tools/cli.h"
#include "tools/config_flags.h"

namespace {

using rlhf::cli::Args;

// The flags that override RewardTrainConfig fields, one per line: flag, field path, help.
const rlhf::cli::ConfigFlags kRewardTrainOverrides{
    &rlhf::proto::RewardTrainConfig::descriptor,
    {
        {"out", "out_dir", "output folder"},
        {"train-file", "train_file", "comparisons file"},
        {"eval-file", "eval_file", "held-out comparisons file"},
        {"annotation-db", "annotation_db", "annotation SQLite DB to export pairs from"},
        {"format", "format", "pairs | hh | messages"},
        {"init-from", "init_from", "SFT checkpoint folder, native or Hugging Face"},
        {"tokenizer", "tokenizer", ".model, tokenizer.json or a folder holding one"},
        {"device", "device", "cpu | cuda | cuda:N"},
        {"dtype", "dtype", "fp32 | bf16; bf16 = autocast, fp32 master weights"},
        {"steps", "steps", "optimizer steps"},
        {"lr", "optimizer.lr", "peak learning rate"},
        {"batch-pairs", "batch_pairs", "comparisons per batch"},
        {"eval-every", "eval_every", "steps between held-out evaluations"},
        {"seed", "seed", "random seed"},
        {"threads", "threads", "torch threads"},
        {"time-limit", "time_limit_seconds", "stop training after this many seconds"},
    }};

int run_train(const Args& a) {
  const std::string path = a.get("config");
  rlhf::proto::RewardTrainConfig cfg = rlhf::reward::load_train_config(path);
  rlhf::cli::apply_config_flags(kRewardTrainOverrides, a, &cfg);
  rlhf::reward::validate_config(cfg, path);
  if (a.get_bool("plan")) {
    std::fputs(rlhf::pipelines::reward_memory_plan(cfg).table().c_str(), stdout);
    return 0;
  }
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
  auto cs = rlhf::reward::read_comparisons_for(a.get("pairs"), a.get("format"), scorer.tokenizer(),
                                               "reward eval: " + a.get("model"));
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
      {"plan",
       "print the memory plan (bytes per component on the configured device and dtype) and exit; "
       "reads no weights",
       "", true}},
     run_train},
    kRewardTrainOverrides);

rlhf::cli::Register reg_eval(
    {"reward eval",
     "pairwise accuracy, loss, mean margin and calibration (ECE) of a reward model",
     "--model DIR --pairs FILE [--format pairs|hh|messages] [--json]",
     {{"model", "reward model folder (or a `reward train --out` folder)", "", false, true},
      {"pairs", "comparisons file (.jsonl or .jsonl.gz)", "", false, true},
      {"format", "pairs | hh | messages (the model's chat template renders them)", "pairs"},
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
