// `rlhf pipeline compare` end to end through the real binary on a tiny configuration: the shared
// stages are reused, each method trains from the same SFT student into compare/<method>/seed-N,
// compare.json holds every figure, a rerun skips finished methods, a changed method config reruns
// only that method, and bad input is refused naming what is wrong.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "common/files.h"
#include "tests/pipelines/tiny_pipeline_config.h"
#include "tests/test_support.h"

namespace {

using rlhf::testing::rlhf_binary;
using rlhf::testing::run_command;

const char* const kTinyConfig = rlhf::testing::kTinyPipelineConfig;

const char* kCompareSection =
    "compare { samples_per_prompt: 2 eval_samples: 2 dpo { steps: 4 batch_pairs: 8 eval_every: 2 "
    "optimizer { lr: 1e-3 } } }\n";

nlohmann::json read_json(const std::string& path) {
  return nlohmann::json::parse(rlhf::read_file(path));
}

std::string compare_cmd(const std::string& config, const std::string& run,
                        const std::string& extra) {
  return rlhf_binary() + " pipeline compare " + config + " --run-dir " + run + " " + extra;
}

TEST(PipelineCompare, MethodsFromOneStudentThenSkippedThenOnlyChangedRerun) {
  rlhf::testing::TempDir dir("compare");
  const std::string config = dir / "p.pbtxt", run = dir / "run";
  rlhf::write_file_atomic(config, std::string(kTinyConfig) + kCompareSection);
  std::string out;
  // The plain pipeline first: compare reuses its stages, and its ppo seed 0 is that ppo stage.
  ASSERT_EQ(run_command(rlhf_binary() + " pipeline run " + config + " --run-dir " + run, &out), 0)
      << out;
  ASSERT_EQ(run_command(compare_cmd(config, run, "--methods ppo,grpo,dpo --seeds 0-1"), &out), 0)
      << out;
  for (const char* stage : {"tokenizer", "sft", "sample", "annotate", "reward"})
    EXPECT_NE(out.find(std::string("== ") + stage + ": unchanged, skipped"), std::string::npos)
        << stage << "\n"
        << out;
  EXPECT_EQ(rlhf::sha256_file(run + "/compare/ppo/seed-0/model/model.safetensors"),
            rlhf::sha256_file(run + "/ppo/model/model.safetensors"))
      << "ppo seed 0 must be the pipeline's own ppo stage";
  EXPECT_NE(rlhf::sha256_file(run + "/compare/ppo/seed-1/model/model.safetensors"),
            rlhf::sha256_file(run + "/ppo/model/model.safetensors"));

  // The group estimator's config: same batch, K answers per prompt, no critic, KL as a loss.
  const std::string grpo = rlhf::read_file(run + "/compare/grpo/seed-0/ppo.pbtxt");
  for (const char* line : {"advantage_estimator: \"grpo\"", "samples_per_prompt: 2",
                           "kl_in_loss: true", "batch_size: 8"})
    EXPECT_NE(grpo.find(line), std::string::npos) << line << "\n" << grpo;
  EXPECT_EQ(grpo.find("value_model"), std::string::npos) << grpo;

  const auto c = read_json(run + "/compare.json");
  const auto summary = read_json(run + "/summary.json");
  EXPECT_DOUBLE_EQ(c["before"]["gold_accuracy"].get<double>(),
                   summary["sft_gold_accuracy"].get<double>());
  for (const char* m : {"ppo", "grpo", "dpo"}) {
    const auto& s = c["methods"][m];
    ASSERT_EQ(s["n"], 2) << m << " " << c.dump();
    for (const char* key : {"gold_accuracy", "gold_accuracy_min", "gold_accuracy_max", "final_kl",
                            "teacher_score", "wall_seconds", "tokens_generated"})
      ASSERT_TRUE(s.contains(key) && s[key].is_number()) << m << " " << key;
    EXPECT_GE(s["gold_accuracy"].get<double>(), s["gold_accuracy_min"].get<double>());
    EXPECT_LE(s["gold_accuracy"].get<double>(), s["gold_accuracy_max"].get<double>());
    EXPECT_LE(s["gold_accuracy_max"].get<double>(), 1.0);
    EXPECT_GT(s["wall_seconds"].get<double>(), 0.0) << m;
  }
  // Every RL method generated its 2 iterations x 8 answers; DPO generates none.
  for (const char* m : {"ppo", "grpo"}) {
    EXPECT_GT(c["methods"][m]["tokens_generated"].get<double>(), 2 * 8 - 1e-9) << m;
    EXPECT_LE(c["methods"][m]["tokens_generated"].get<double>(), 2 * 8 * 10 + 1e-9) << m;
  }
  EXPECT_EQ(c["methods"]["dpo"]["tokens_generated"].get<double>(), 0.0);
  // DPO trained the student (its weights moved).
  EXPECT_NE(rlhf::sha256_file(run + "/compare/dpo/seed-0/model/model.safetensors"),
            rlhf::sha256_file(run + "/sft/model/model.safetensors"));
  const std::string html = rlhf::read_file(run + "/compare.html");
  EXPECT_NE(html.find("<svg"), std::string::npos);
  for (const char* m : {"ppo", "grpo", "dpo", "SFT student"})
    EXPECT_NE(html.find(m), std::string::npos) << m;

  // A rerun finds every method finished: nothing trains, the results stay.
  const std::string grpo_result = rlhf::read_file(run + "/compare/grpo/seed-1/result.json");
  ASSERT_EQ(run_command(compare_cmd(config, run, "--methods ppo,grpo,dpo --seeds 0-1"), &out), 0)
      << out;
  EXPECT_EQ(out.find("[rank 0]"), std::string::npos) << "something trained again:\n" << out;
  EXPECT_EQ(rlhf::read_file(run + "/compare/grpo/seed-1/result.json"), grpo_result);

  // A copy of the run folder keeps every finished method.
  const std::string copy = dir / "copy";
  std::filesystem::copy(run, copy, std::filesystem::copy_options::recursive);
  ASSERT_EQ(run_command(compare_cmd(config, copy, "--methods ppo,grpo,dpo --seeds 0-1"), &out), 0)
      << out;
  EXPECT_EQ(out.find("[rank 0]"), std::string::npos) << "the copy trained again:\n" << out;

  // A changed dpo section reruns dpo alone.
  std::string changed = kCompareSection;
  changed.replace(changed.find("steps: 4"), 8, "steps: 5");
  rlhf::write_file_atomic(config, std::string(kTinyConfig) + changed);
  ASSERT_EQ(run_command(compare_cmd(config, run, "--methods grpo,dpo --seeds 1"), &out), 0) << out;
  EXPECT_NE(out.find("compare grpo seed 1: unchanged, skipped"), std::string::npos) << out;
  EXPECT_NE(out.find("dpo: " + run + "/compare/dpo/seed-1/model after 5 steps"), std::string::npos)
      << out;
}

TEST(PipelineCompare, BadMethodsAndConfigAreRefusedByName) {
  rlhf::testing::TempDir dir("compare_bad");
  const std::string config = dir / "p.pbtxt";
  rlhf::write_file_atomic(config, kTinyConfig);
  std::string out;
  EXPECT_NE(run_command(compare_cmd(config, dir / "run", "--methods ppo,sft"), &out), 0);
  EXPECT_NE(out.find("unknown method 'sft' (methods: ppo, grpo, dr_grpo, rloo, "
                     "reinforce_baseline, dpo)"),
            std::string::npos)
      << out;
  EXPECT_NE(run_command(compare_cmd(config, dir / "run", "--methods grpo,grpo"), &out), 0);
  EXPECT_NE(out.find("method 'grpo' is listed twice"), std::string::npos) << out;
  EXPECT_FALSE(rlhf::file_exists(dir / "run/compare")) << "refused before anything ran";

  rlhf::write_file_atomic(config,
                          std::string(kTinyConfig) + "compare {\n  samples_per_prompt: 1\n}\n");
  EXPECT_NE(run_command(compare_cmd(config, dir / "run2", ""), &out), 0);
  EXPECT_NE(out.find("p.pbtxt:13: field 'compare.samples_per_prompt'"), std::string::npos) << out;
  rlhf::write_file_atomic(
      config,
      std::string(kTinyConfig) + "compare { method { name: \"dpo\" ppo { iterations: 3 } } }\n");
  EXPECT_NE(run_command(compare_cmd(config, dir / "run3", ""), &out), 0);
  EXPECT_NE(out.find("compare.method[0].ppo"), std::string::npos) << out;
  // A bad value in a method's override is refused before any stage runs, naming the method.
  rlhf::write_file_atomic(config, std::string(kTinyConfig) +
                                      "compare { method { name: \"dpo\" dpo { epochs: -2 } } }\n");
  EXPECT_NE(run_command(compare_cmd(config, dir / "run4", ""), &out), 0);
  EXPECT_NE(out.find("(compare method dpo): field 'epochs': expected > 0, got -2"),
            std::string::npos)
      << out;
  EXPECT_FALSE(rlhf::file_exists(dir / "run4")) << "refused before anything ran";
}

}  // namespace
