// The staged pipeline end to end through the real `rlhf` binary, on a tiny configuration:
// every stage runs (real SentencePiece, real training, real SQLite + socket annotation), a rerun
// skips finished stages, and mismatched or bad inputs stop with a clear message.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/files.h"
#include "tests/pipelines/tiny_pipeline_config.h"
#include "tests/test_support.h"

namespace {

using rlhf::testing::rlhf_binary;
using rlhf::testing::run_command;

const char* const kTinyConfig = rlhf::testing::kTinyPipelineConfig;

nlohmann::json read_json(const std::string& path) {
  return nlohmann::json::parse(rlhf::read_file(path));
}

TEST(Pipeline, TinyRunEndToEndThenSkipsFinishedStages) {
  rlhf::testing::TempDir dir("pipeline");
  rlhf::write_file_atomic(dir / "p.pbtxt", kTinyConfig);
  std::string run = dir / "run";
  std::string out;
  int code =
      run_command(rlhf_binary() + " pipeline run " + dir / "p.pbtxt" + " --run-dir " + run, &out);
  ASSERT_EQ(code, 0) << out;
  // The trainers ran as 2 data-parallel ranks under `rlhf launch` (processes { ... }).
  for (const char* line : {"[rank 0] sft: ", "[rank 0] reward model: ", "[rank 0] ppo: done"})
    EXPECT_NE(out.find(line), std::string::npos) << line << "\n" << out;

  for (const char* stage : {"tokenizer", "sft", "sample", "annotate", "reward", "ppo"}) {
    auto m = nlohmann::json::parse(rlhf::read_file(run + "/" + stage + "/manifest.json"));
    EXPECT_EQ(m["stage"], stage);
    EXPECT_EQ(m["complete"], true) << stage;
  }
  auto summary = read_json(run + "/summary.json");
  for (const char* key : {"sft_gold_accuracy", "ppo_gold_accuracy", "reward_gold_agreement",
                          "reward_heldout_accuracy", "ppo_final_kl", "wall_seconds"})
    EXPECT_TRUE(summary.contains(key)) << key << " missing in " << summary.dump();
  EXPECT_GE(summary["sft_gold_accuracy"].get<double>(), 0.0);
  EXPECT_LE(summary["sft_gold_accuracy"].get<double>(), 1.0);
  EXPECT_TRUE(summary["stage_seconds"].contains("sft_seconds"));
  // The machine the figures came from, and when.
  EXPECT_FALSE(summary["machine"]["cpu"].get<std::string>().empty()) << summary.dump();
  EXPECT_GE(summary["machine"]["cores"].get<int>(), 1) << summary.dump();
  EXPECT_FALSE(summary["machine"]["openblas_core"].get<std::string>().empty()) << summary.dump();
  EXPECT_EQ(summary["finished_at"].get<std::string>().size(), 20u) << summary.dump();
  std::string html = rlhf::read_file(run + "/report.html");
  EXPECT_NE(html.find("<svg"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  // Simulated annotators got their tokens through files only this user can read (not argv).
  int token_files = 0;
  for (const auto& e : std::filesystem::directory_iterator(run + "/annotate"))
    if (e.path().extension() == ".token") {
      ++token_files;
      EXPECT_EQ(e.status().permissions() & std::filesystem::perms::all,
                std::filesystem::perms::owner_read | std::filesystem::perms::owner_write)
          << e.path();
    }
  EXPECT_EQ(token_files, 2);
  // The annotate stage ranked every sampled task through the server.
  auto stats = read_json(run + "/annotate/stats.json");
  EXPECT_EQ(stats["pending_tasks"], 0);
  EXPECT_EQ(stats["done_tasks"], 24);

  // A rerun with the same inputs skips every stage.
  code =
      run_command(rlhf_binary() + " pipeline run " + dir / "p.pbtxt" + " --run-dir " + run, &out);
  ASSERT_EQ(code, 0) << out;
  for (const char* stage : {"tokenizer", "sft", "sample", "annotate", "reward", "ppo"})
    EXPECT_NE(out.find(std::string("== ") + stage + ": unchanged, skipped"), std::string::npos)
        << stage << "\n"
        << out;

  // A copy of the run folder elsewhere is the same run: every stage is skipped there too.
  const std::string copy = dir / "copy";
  std::filesystem::copy(run, copy, std::filesystem::copy_options::recursive);
  code =
      run_command(rlhf_binary() + " pipeline run " + dir / "p.pbtxt" + " --run-dir " + copy, &out);
  ASSERT_EQ(code, 0) << out;
  for (const char* stage : {"tokenizer", "sft", "sample", "annotate", "reward", "ppo"})
    EXPECT_NE(out.find(std::string("== ") + stage + ": unchanged, skipped"), std::string::npos)
        << "copied folder: " << stage << "\n"
        << out;

  // A tokenizer that no longer matches the trained policy stops the sample stage by name.
  code = run_command(rlhf_binary() + " tokenizer train --input " + run +
                         "/data/tokenizer_corpus.txt --vocab-size 400 --out " + run + "/tokenizer",
                     &out);
  ASSERT_EQ(code, 0) << out;
  code = run_command(
      rlhf_binary() + " pipeline run " + dir / "p.pbtxt" + " --run-dir " + run + " --only sample",
      &out);
  EXPECT_NE(code, 0) << out;
  EXPECT_NE(out.find("tokenizer"), std::string::npos) << out;
  EXPECT_NE(out.find("sample"), std::string::npos) << out;
}

TEST(Pipeline, BadConfigNamesFileLineAndField) {
  rlhf::testing::TempDir dir("pipeline_bad");
  rlhf::write_file_atomic(dir / "bad.pbtxt", "name: \"x\"\nsft { stepz: 3 }\n");
  std::string out;
  int code = run_command(
      rlhf_binary() + " pipeline run " + dir / "bad.pbtxt" + " --run-dir " + dir / "run", &out);
  EXPECT_NE(code, 0);
  EXPECT_NE(out.find("bad.pbtxt:2"), std::string::npos) << out;
  EXPECT_NE(out.find("stepz"), std::string::npos) << out;

  // A config with one bad field fails (exit != 0) with a message holding every needle.
  auto expect_rejected = [&](const std::string& name, const std::string& text,
                             std::initializer_list<const char*> needles) {
    rlhf::write_file_atomic(dir / name, text);
    std::string msg;
    EXPECT_NE(run_command(rlhf_binary() + " pipeline run " + dir / name, &msg), 0) << text;
    for (const char* needle : needles) EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  };
  expect_rejected("bad2.pbtxt", "annotate { mode: \"robots\" }\n", {"annotate.mode"});
  expect_rejected("bad3.pbtxt", "quickstart { max_operand: 99 }\n",
                  {"quickstart.max_operand", "99"});
  expect_rejected("bad4.pbtxt", "quickstart { wrong_mode_templates: \"jumps\" }\n",
                  {"quickstart.wrong_mode_templates", "jumps"});
  expect_rejected("bad5.pbtxt", "quickstart { p_gold_wrong_mode: 0.6 p_wrong_wrong_mode: 0.6 }\n",
                  {"at most 1"});

  rlhf::write_file_atomic(dir / "ok.pbtxt", "name: \"x\"\n");
  code =
      run_command(rlhf_binary() + " pipeline run " + dir / "ok.pbtxt" + " --only nonsense", &out);
  EXPECT_EQ(code, 2) << out;
}

// The standard message, whole: "<file>:<line>: field '<name>': <expected>, got <value>", for the
// pipeline's own sections and for a stage section (its nested field path and line).
TEST(Pipeline, BadValuesReadFileLineFieldExpectedAndGot) {
  rlhf::testing::TempDir dir("pipeline_values");
  auto error_line = [&](const std::string& text) {
    const std::string path = dir / "bad.pbtxt";
    rlhf::write_file_atomic(path, text);
    std::string out;
    EXPECT_NE(
        run_command(rlhf_binary() + " pipeline run " + path + " --run-dir " + dir / "run", &out),
        0);
    return out;
  };
  const std::string path = dir / "bad.pbtxt";
  std::string out =
      error_line("name: \"x\"\nquickstart {\n  sft_examples: 10\n  max_operand: 99\n}\n");
  EXPECT_NE(
      out.find("error: " + path + ":4: field 'quickstart.max_operand': expected 3..40, got 99\n"),
      std::string::npos)
      << out;
  out = error_line("sample { temperature: 0 }\n");
  EXPECT_NE(out.find("error: " + path + ":1: field 'sample.temperature': expected > 0, got 0\n"),
            std::string::npos)
      << out;
  out = error_line("name: \"x\"\nsft {\n  steps: 10\n  optimizer { lr: -2 }\n}\n");
  EXPECT_NE(out.find("error: " + path + ":4: field 'sft.optimizer.lr': expected > 0, got -2\n"),
            std::string::npos)
      << out;
  // Old optimizer field names inside a stage section: refused, naming the replacement.
  out = error_line("name: \"x\"\nsft {\n  steps: 10\n  lr: 3e-3\n}\n");
  EXPECT_NE(
      out.find("error: " + path + ":4: field 'lr' of SftConfig moved to 'optimizer { lr }'\n"),
      std::string::npos)
      << out;
  out = error_line("reward {\n  grad_clip: 1\n}\n");
  EXPECT_NE(
      out.find("error: " + path +
               ":2: field 'grad_clip' of RewardTrainConfig moved to 'optimizer { grad_clip }'\n"),
      std::string::npos)
      << out;
  out = error_line("ppo { iterations: 2\n  value_lr: 1e-4 }\n");
  EXPECT_NE(out.find("error: " + path + ":2: field 'value_lr' of PpoConfig moved to 'critic_lr'\n"),
            std::string::npos)
      << out;
  out = error_line("reward {\n  lora { rank: 2\n    alpha: -1 }\n}\n");
  EXPECT_NE(out.find("error: " + path +
                     ":3: field 'reward.lora.alpha': expected > 0 (unset: alpha = "
                     "rank), got -1\n"),
            std::string::npos)
      << out;
  out = error_line("ppo { top_k: 40 }\n");
  EXPECT_NE(out.find("error: " + path + ":1: field 'ppo.top_k': expected 0"), std::string::npos)
      << out;
  out = error_line("name: \"x\"\nprocesses { reward: 0 }\n");
  EXPECT_NE(out.find("error: " + path +
                     ":2: field 'processes.reward': expected a number of ranks in 1..256, got 0\n"),
            std::string::npos)
      << out;
}

// A config with no fields resolves to the documented defaults: the run folder's pipeline.pbtxt
// shows each of them (--only report runs no training stage).
TEST(Pipeline, EmptyConfigResolvesToDocumentedDefaults) {
  rlhf::testing::TempDir dir("pipeline_defaults");
  rlhf::write_file_atomic(dir / "empty.pbtxt", "");
  std::string out;
  run_command(rlhf_binary() + " pipeline run " + dir / "empty.pbtxt" + " --run-dir " + dir / "run" +
                  " --only report",
              &out);
  ASSERT_TRUE(rlhf::file_exists(dir / "run/pipeline.pbtxt")) << out;
  const std::string text = rlhf::read_file(dir / "run/pipeline.pbtxt");
  for (const char* needle : {"name: \"quickstart\"",
                             "task: \"quickstart\"",
                             "sft_examples: 6000",
                             "tokenizer_problems: 3000",
                             "heldout_problems: 200",
                             "sample_prompts: 300",
                             "ppo_prompts: 2000",
                             "max_operand: 20",
                             "p_gold_wrong_mode: 0.38",
                             "p_wrong_right_mode: 0.35",
                             "vocab_size: 512",
                             "answers_per_prompt: 4",
                             "temperature: 1",
                             "top_p: 1",
                             "max_new_tokens: 24",
                             "batch_size: 64",
                             "mode: \"simulate\"",
                             "teacher: \"arithmetic\"",
                             "overlap: 1",
                             "annotators: 1"})
    EXPECT_NE(text.find(needle), std::string::npos) << needle << " missing in\n" << text;
}

}  // namespace
