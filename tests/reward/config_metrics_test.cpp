// Config parsing errors, pairwise metrics (ECE by hand), the learning-rate schedule.
#include <gtest/gtest.h>

#include <cmath>

#include "common/error.h"
#include "reward/evaluation.h"
#include "reward/train_config.h"
#include "reward/trainer.h"

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
  e = error_of("train_file: \"x.jsonl\"\n\nlr: -1\n");
  EXPECT_NE(e.find("cfg.pbtxt:3: field 'lr'"), std::string::npos) << e;
  e = error_of("format: \"csv\"\n");
  EXPECT_NE(e.find("cfg.pbtxt:1: field 'format'"), std::string::npos) << e;
  e = error_of("steps: ten\n");
  EXPECT_NE(e.find("cfg.pbtxt:1:"), std::string::npos) << e;
  auto ok = parse_train_config("train_file: \"x\"\nmodel { dim: 64 n_layers: 2 }\n", "ok");
  EXPECT_EQ(ok.model().dim(), 64);
  apply_defaults(&ok);
  EXPECT_FLOAT_EQ(ok.lr(), 3e-4f);
  EXPECT_EQ(ok.batch_pairs(), 16);
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
  double s2 = 1 / (1 + std::exp(-2.0)), s05 = 1 / (1 + std::exp(-0.5)), s1 = 1 / (1 + std::exp(-1.0));
  double ece = ((1 - s2) + (1 - s05) + s1 + 0) / 4;
  EXPECT_NEAR(m.ece, ece, 1e-6);
  EXPECT_EQ(to_json(m).find("{\"accuracy\":"), 0u) << to_json(m);
}


}  // namespace
}  // namespace rlhf::reward
