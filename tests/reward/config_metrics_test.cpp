// Config parsing errors, pairwise metrics (ECE by hand), the learning-rate schedule.
#include <gtest/gtest.h>

#include <cmath>

#include "common/error.h"
#include "common/files.h"
#include "policy/training/optimizer_config.h"
#include "reward/evaluation.h"
#include "reward/train_config.h"
#include "reward/trainer.h"
#include "tests/fixtures/optimizer_state.h"
#include "tests/test_support.h"

namespace rlhf::reward {
namespace {

std::string error_of(const std::string& text) {
  try {
    parse_train_config(text, "cfg.pbtxt");
  } catch (const rlhf::Error& e) {
    return e.what();
  }
  return "";
}

TEST(RewardConfig, ErrorsNameFileLineAndField) {
  auto e = error_of("train_file: \"x.jsonl\"\nsteps: 10\nlearning_rate: 3\n");
  EXPECT_NE(e.find("cfg.pbtxt:3:"), std::string::npos) << e;
  EXPECT_NE(e.find("learning_rate"), std::string::npos) << e;
  e = error_of("train_file: \"x.jsonl\"\n\noptimizer { lr: -1 }\n");
  EXPECT_NE(e.find("cfg.pbtxt:3: field 'optimizer.lr'"), std::string::npos) << e;
  e = error_of("format: \"csv\"\n");
  EXPECT_NE(e.find("cfg.pbtxt:1: field 'format'"), std::string::npos) << e;
  e = error_of("steps: ten\n");
  EXPECT_NE(e.find("cfg.pbtxt:1:"), std::string::npos) << e;
  auto ok = parse_train_config("train_file: \"x\"\nmodel { dim: 64 n_layers: 2 }\n", "ok");
  EXPECT_EQ(ok.model().dim(), 64);
  ok = resolved_train_config(ok);
  EXPECT_EQ(ok.optimizer().lr(), 3e-4);
  EXPECT_EQ(ok.batch_pairs(), 16);
}

// The standard message shape, read from a real file: "<file>:<line>: field '<name>': <expected>,
// got <value>", for a top-level field, a nested one, and a value set after parsing (no line).
TEST(RewardConfig, BadValuesReadFileLineFieldExpectedAndGot) {
  rlhf::testing::TempDir tmp("reward_cfg");
  const std::string path = tmp / "bad.pbtxt";
  auto error_of_file = [&](const std::string& text) {
    rlhf::write_file_atomic(path, text);
    try {
      load_train_config(path);
    } catch (const rlhf::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(error_of_file("train_file: \"x.jsonl\"\nbatch_pairs: 0\n"),
            path + ":2: field 'batch_pairs': expected >= 1, got 0");
  EXPECT_EQ(error_of_file("steps: 5\n\n\nheldout_fraction: 1.5\n"),
            path + ":4: field 'heldout_fraction': expected a value in [0, 1), got 1.5");
  EXPECT_EQ(error_of_file("steps: 5\nlora {\n  rank: 2\n  targets: \"zz\"\n}\n"),
            path +
                ":4: field 'lora.targets': expected projections of q, k, v, o, gate, up, down, "
                "got \"zz\"");
  proto::RewardTrainConfig c;
  c.mutable_optimizer()->set_lr(-1);  // e.g. a command-line flag: not in the file, so no line
  try {
    validate_config(c, path);
    FAIL();
  } catch (const rlhf::Error& e) {
    EXPECT_EQ(std::string(e.what()), path + ": field 'optimizer.lr': expected > 0, got -1");
  }
}

// An empty config resolves to the defaults documented in proto/reward.proto.
TEST(RewardConfig, EmptyConfigResolvesToDocumentedDefaults) {
  const proto::RewardTrainConfig c = resolved_train_config(parse_train_config("", "empty.pbtxt"));
  EXPECT_EQ(c.schema_version(), 1u);
  EXPECT_EQ(c.format(), "pairs");
  EXPECT_FLOAT_EQ(c.heldout_fraction(), 0.1f);
  EXPECT_EQ(c.max_pairs(), 0);
  EXPECT_EQ(c.max_prompt_tokens(), 192);
  EXPECT_EQ(c.max_answer_tokens(), 192);
  EXPECT_FALSE(c.has_steps());
  EXPECT_FLOAT_EQ(c.epochs(), 1.0f);
  EXPECT_EQ(c.batch_pairs(), 16);
  // The optimizer section: the reward column of proto/optimizer.proto.
  const proto::OptimizerConfig& o = c.optimizer();
  policy::testing::expect_supervised_optimizer_defaults(o);
  EXPECT_FLOAT_EQ(c.margin(), 0.0f);
  EXPECT_FLOAT_EQ(c.embedding_lr_scale(), 1.0f);
  EXPECT_EQ(c.eval_every(), 50);
  EXPECT_EQ(c.save_every(), 50);
  EXPECT_EQ(c.device(), "cpu");
  EXPECT_EQ(policy::training::resolved_warmup_steps(o, 900), 45);
  EXPECT_NE(to_text(c).find("max_prompt_tokens: 192"), std::string::npos) << to_text(c);
  // weight_decay: 0 now means no decay (it used to mean "the default").
  const auto d = resolved_train_config(
      parse_train_config("optimizer { weight_decay: 0 warmup_steps: 0 }\n", "d"));
  EXPECT_EQ(d.optimizer().weight_decay(), 0.0);
  EXPECT_EQ(policy::training::resolved_warmup_steps(d.optimizer(), 900), 0);
}

// The optimizer fields moved into `optimizer { }`: a config with an old name is refused with a
// message naming the file, the line, the old field and where it went.
TEST(RewardConfig, OldOptimizerFieldNamesAreRefusedWithTheReplacement) {
  for (const char* name : {"lr", "min_lr_ratio", "warmup_steps", "warmup_ratio", "weight_decay",
                           "grad_clip", "beta1", "beta2"}) {
    const std::string e = error_of("steps: 10\n" + std::string(name) + ": 0.5\n");
    EXPECT_EQ(e, std::string("cfg.pbtxt:2: field '") + name +
                     "' of RewardTrainConfig moved to 'optimizer { " + name + " }'");
  }
}

TEST(PairMetrics, HandComputed) {
  // d = 2, 0.5, -1, 0 -> accuracy (1 + 1 + 0 + 0.5) / 4
  auto m = pair_metrics({2, 1.5f, 0, 3}, {0, 1, 1, 3});
  EXPECT_EQ(m.n, 4);
  EXPECT_NEAR(m.accuracy, 0.625, 1e-12);
  EXPECT_NEAR(m.mean_margin, 0.375, 1e-6);
  auto nls = [](double x) { return std::log1p(std::exp(-x)); };
  EXPECT_NEAR(m.loss, (nls(2) + nls(0.5) + nls(-1) + nls(0)) / 4, 1e-6);
  // confidences: s(2)=.8808 (bin 8, correct), s(.5)=.6225 (bin 6, correct),
  // 1-s(-1)=.7311 (bin 7, wrong), .5 (bin 5, half right) -> ECE = mean |acc - conf|
  double s2 = 1 / (1 + std::exp(-2.0)), s05 = 1 / (1 + std::exp(-0.5)),
         s1 = 1 / (1 + std::exp(-1.0));
  double ece = ((1 - s2) + (1 - s05) + s1 + 0) / 4;
  EXPECT_NEAR(m.ece, ece, 1e-6);
  EXPECT_EQ(to_json(m).find("{\"accuracy\":"), 0u) << to_json(m);
}

}  // namespace
}  // namespace rlhf::reward
