// Every registered `rlhf` command (tools/cmd_*.cpp, linked in): its config-flag table resolves
// against its message type, the trainers' flags set the fields they name, and `--help` through the
// binary lists a table flag with its help and field.
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "proto/dpo.pb.h"
#include "proto/ppo.pb.h"
#include "proto/reward.pb.h"
#include "proto/sft.pb.h"
#include "tests/test_support.h"
#include "tools/cli.h"
#include "tools/config_flags.h"

namespace {

using rlhf::cli::Args;
using rlhf::cli::registry;
using rlhf::testing::rlhf_binary;
using rlhf::testing::run_command;

// Parses argv with every flag of the command and applies its config flags to *config.
void apply(const std::string& command, const std::vector<std::string>& argv,
           google::protobuf::Message* config) {
  const auto& c = registry().at(command);
  rlhf::cli::apply_config_flags(c.config_flags, Args::parse(rlhf::cli::all_flags(c), argv), config);
}

TEST(CliCommands, EveryConfigFlagTableResolvesAgainstItsMessage) {
  std::set<std::string> with_tables;
  for (const auto& [path, c] : registry()) {
    SCOPED_TRACE("rlhf " + path);
    EXPECT_NO_THROW(rlhf::cli::all_flags(c));  // no unknown field, no flag declared twice
    if (c.config_flags.flags.empty()) continue;
    with_tables.insert(path);
    ASSERT_NE(c.config_flags.message, nullptr);
    for (const auto& entry : c.config_flags.flags) {
      SCOPED_TRACE(std::string("--") + entry.flag);
      EXPECT_FALSE(rlhf::cli::resolve_field_path(*c.config_flags.message(), entry).empty());
      EXPECT_NE(std::string(entry.help), "");
    }
  }
  EXPECT_EQ(with_tables, (std::set<std::string>{"dpo", "ppo", "reward train", "sft"}));
}

TEST(CliCommands, SftFlagsOverrideTheirFields) {
  rlhf::proto::SftConfig cfg;
  cfg.set_batch_size(5);
  apply("sft",
        {"--config", "sft.pbtxt", "--lr", "0.5", "--steps", "7", "--lora-rank", "8", "--packed",
         "--epochs", "2.5", "--seed", "9", "--out", "o", "--dtype", "bf16", "--stop-after", "3"},
        &cfg);
  EXPECT_EQ(cfg.optimizer().lr(), 0.5);
  EXPECT_EQ(cfg.steps(), 7);
  EXPECT_EQ(cfg.lora().rank(), 8);
  EXPECT_TRUE(cfg.packed());
  EXPECT_EQ(cfg.epochs(), 2.5f);
  EXPECT_EQ(cfg.seed(), 9u);
  EXPECT_EQ(cfg.out_dir(), "o");
  EXPECT_EQ(cfg.dtype(), "bf16");
  EXPECT_EQ(cfg.stop_after(), 3);
  EXPECT_EQ(cfg.batch_size(), 5);  // not given: the config's value
  EXPECT_FALSE(cfg.has_threads());
}

TEST(CliCommands, RewardAndPpoFlagsOverrideTheirFields) {
  rlhf::proto::RewardTrainConfig reward;
  apply("reward train",
        {"--config", "r.pbtxt", "--time-limit", "2.5", "--batch-pairs", "4", "--annotation-db",
         "a.db", "--lr", "1e-3"},
        &reward);
  EXPECT_EQ(reward.time_limit_seconds(), 2.5f);
  EXPECT_EQ(reward.batch_pairs(), 4);
  EXPECT_EQ(reward.annotation_db(), "a.db");
  EXPECT_EQ(reward.optimizer().lr(), 1e-3);
  rlhf::proto::PpoConfig ppo;
  apply("ppo",
        {"--config", "p.pbtxt", "--iterations", "3", "--out", "d", "--device", "cpu", "--threads",
         "2"},
        &ppo);
  EXPECT_EQ(ppo.threads(), 2);
  EXPECT_EQ(ppo.iterations(), 3);
  EXPECT_EQ(ppo.out_dir(), "d");
  EXPECT_EQ(ppo.device(), "cpu");
  EXPECT_FALSE(ppo.has_dtype());
}

TEST(CliCommands, DpoFlagsOverrideTheirFields) {
  rlhf::proto::DpoConfig cfg;
  cfg.set_batch_pairs(6);
  apply("dpo",
        {"--config", "d.pbtxt", "--loss", "ipo", "--beta", "0.25", "--label-smoothing", "0.1",
         "--lora-rank", "4", "--stop-after", "2", "--lr", "1e-5", "--out", "o"},
        &cfg);
  EXPECT_EQ(cfg.loss(), "ipo");
  EXPECT_EQ(cfg.beta(), 0.25f);
  EXPECT_EQ(cfg.label_smoothing(), 0.1f);
  EXPECT_EQ(cfg.lora().rank(), 4);
  EXPECT_EQ(cfg.stop_after(), 2);
  EXPECT_EQ(cfg.optimizer().lr(), 1e-5);
  EXPECT_EQ(cfg.out_dir(), "o");
  EXPECT_EQ(cfg.batch_pairs(), 6);  // not given: the config's value
}

TEST(CliCommands, HelpListsTheTableFlagsWithTheirFields) {
  std::string out;
  ASSERT_EQ(run_command(rlhf_binary() + " sft --help", &out), 0) << out;
  for (const char* text : {"--config V", "config overrides", "rlhf.proto.SftConfig",
                           "peak learning rate (overrides optimizer.lr)",
                           "train LoRA adapters of this rank (overrides lora.rank)",
                           "pack examples into full rows (overrides packed)"})
    EXPECT_NE(out.find(text), std::string::npos) << text << " missing from:\n" << out;
  EXPECT_EQ(out.find("--packed V"), std::string::npos) << "a bool field's flag is a switch";
  ASSERT_EQ(run_command(rlhf_binary() + " reward train --help", &out), 0) << out;
  EXPECT_NE(out.find("--time-limit V"), std::string::npos) << out;
  EXPECT_NE(out.find("(overrides time_limit_seconds)"), std::string::npos) << out;
  ASSERT_EQ(run_command(rlhf_binary() + " ppo --help", &out), 0) << out;
  EXPECT_NE(out.find("--iterations V"), std::string::npos) << out;
  EXPECT_NE(out.find("--gold-task V"), std::string::npos) << out;
}

TEST(CliCommands, ABadValueIsAUsageErrorThroughTheBinary) {
  rlhf::testing::TempDir dir("cli_flags");
  std::string out;
  // An empty config file parses; the flag is applied before the config is validated.
  ASSERT_EQ(run_command("touch " + dir / "sft.pbtxt", &out), 0);
  EXPECT_EQ(
      run_command(rlhf_binary() + " sft --config " + dir / "sft.pbtxt" + " --steps seven", &out), 2)
      << out;
  EXPECT_NE(out.find("rlhf sft: --steps: expected an integer (int64), got 'seven'"),
            std::string::npos)
      << out;
}

// A Qwen2.5-0.5B-shaped config.json (dims as published) in `dir`, with no weights: `--plan` reads
// nothing else. `layers` and `dim` scale it up for the refusal.
void write_qwen_folder(const std::string& dir, int layers = 24, int dim = 896) {
  ASSERT_EQ(run_command("mkdir -p " + dir + " && touch " + dir + "/checkpoint.pb", nullptr), 0);
  std::ofstream(dir + "/config.json")
      << "{\"model_type\": \"qwen2\", \"architectures\": [\"Qwen2ForCausalLM\"], "
         "\"vocab_size\": 151936, \"hidden_size\": "
      << dim << ", \"intermediate_size\": 4864, \"num_hidden_layers\": " << layers
      << ", \"num_attention_heads\": 14, \"num_key_value_heads\": 2, "
         "\"tie_word_embeddings\": true, \"max_position_embeddings\": 32768, "
         "\"rms_norm_eps\": 1e-6, \"rope_theta\": 1000000.0, \"use_sliding_window\": false, "
         "\"sliding_window\": 32768, \"max_window_layers\": 21, \"bos_token_id\": 151643, "
         "\"eos_token_id\": 151645, \"hidden_act\": \"silu\"}\n";
}

// `rlhf ppo --plan` prints the table from config.json alone (the folder has no weights) and exits
// 0; LoRA shares the reference; `critic: "policy_base"` shares the critic's base. A model that
// cannot fit is refused at the start of the run with the table, before anything is loaded.
TEST(CliCommands, PpoPlanPrintsTheTableAndARunThatCannotFitIsRefused) {
  rlhf::testing::TempDir dir("cli_plan");
  write_qwen_folder(dir / "qwen");
  std::ofstream(dir / "ppo.pbtxt") << "policy: \"" << dir / "qwen"
                                   << "\"\nreward_model: \"" << dir / "qwen"
                                   << "\"\nprompts: \"p.jsonl\"\nbatch_size: 8\n"
                                      "minibatch_size: 8\nmax_prompt_tokens: 16\n"
                                      "lora { rank: 16 }\ncritic: \"policy_base\"\n";
  std::string out;
  ASSERT_EQ(run_command(rlhf_binary() + " ppo --plan --config " + dir / "ppo.pbtxt", &out), 0)
      << out;
  // Policy weights: 494,032,768 float32 parameters = 1884.6 MiB; the LoRA rank-16 q/v adapters
  // (1,081,344 parameters) have 4.1 MiB of gradients and 8.2 MiB of AdamW moments.
  for (const char* text : {"memory plan: ppo on cpu, dtype fp32", "1884.6", "4.1", "8.2",
                           "shares the policy's frozen base", "KV cache", "reward model"})
    EXPECT_NE(out.find(text), std::string::npos) << text << " missing from:\n" << out;
  EXPECT_NE(out.find("shares the policy's frozen base"),
            out.rfind("shares the policy's frozen base"))
      << "reference and critic both share it:\n"
      << out;
  // critic "reward_base": the critic shares the reward model's base, counted once (the reward model
  // row): three full weight rows (policy, reference, reward model) against four when the critic is
  // a copy of the reward model (value_model).
  auto weight_rows = [](const std::string& table) {
    int n = 0;
    for (size_t at = table.find("matrix params fp32"); at != std::string::npos;
         at = table.find("matrix params fp32", at + 1))
      ++n;
    return n;
  };
  const std::string base_cfg = "policy: \"" + dir / "qwen" + "\"\nreward_model: \"" + dir / "qwen" +
                               "\"\nprompts: \"p.jsonl\"\nbatch_size: 8\nminibatch_size: 8\n";
  std::ofstream(dir / "rb.pbtxt") << base_cfg << "critic: \"reward_base\"\n";
  std::ofstream(dir / "vm.pbtxt") << base_cfg << "value_model: \"" << dir / "qwen"
                                  << "\"\n";
  ASSERT_EQ(run_command(rlhf_binary() + " ppo --plan --config " + dir / "rb.pbtxt", &out), 0)
      << out;
  EXPECT_NE(out.find("shares the reward model's frozen base"), std::string::npos) << out;
  EXPECT_EQ(weight_rows(out), 3) << out;
  // Under bf16 the frozen reward model (the teacher, and so the critic's base) is counted in
  // bfloat16, matrices and embedding table: only the policy, trained in full, keeps float32 ones.
  std::ofstream(dir / "rb16.pbtxt") << base_cfg << "critic: \"reward_base\"\ndtype: \"bf16\"\n";
  ASSERT_EQ(run_command(rlhf_binary() + " ppo --plan --config " + dir / "rb16.pbtxt", &out), 0)
      << out;
  EXPECT_EQ(weight_rows(out), 1) << out;
  // 357.8M matrix and 136.1M embedding parameters at 2 bytes + 0.1M float32: 942.4 MiB.
  const size_t rm_row = out.find("reward model   weights");
  ASSERT_NE(rm_row, std::string::npos) << out;
  const std::string rm_line = out.substr(rm_row, out.find('\n', rm_row) - rm_row);
  for (const char* text : {"942.4", "matrix params bf16", "embedding bf16"})
    EXPECT_NE(rm_line.find(text), std::string::npos) << text << " missing from: " << rm_line;
  ASSERT_EQ(run_command(rlhf_binary() + " ppo --plan --config " + dir / "vm.pbtxt", &out), 0)
      << out;
  EXPECT_EQ(out.find("shares the reward model's frozen base"), std::string::npos) << out;
  EXPECT_EQ(weight_rows(out), 4) << out;

  ASSERT_EQ(run_command(rlhf_binary() +
                            " sft --plan --config /dev/null --train-file t.jsonl --init-from " +
                            dir / "qwen" + " --seq-len 64",
                        &out),
            0)
      << out;
  EXPECT_NE(out.find("memory plan: sft on cpu"), std::string::npos) << out;
  EXPECT_NE(out.find("optimizer"), std::string::npos) << out;

  // 2,000 layers of dim 8,960: about 4 TB, more than this machine has.
  write_qwen_folder(dir / "huge", 2000, 8960);
  std::ofstream(dir / "huge.pbtxt") << "policy: \"" << dir / "huge"
                                    << "\"\nreward_model: \"" << dir / "huge"
                                    << "\"\nprompts: \"p.jsonl\"\n";
  EXPECT_NE(
      run_command(rlhf_binary() + " ppo --config " + dir / "huge.pbtxt" + " --out " + dir / "run",
                  &out),
      0);
  EXPECT_NE(out.find("ppo: the memory plan needs"), std::string::npos) << out;
  EXPECT_NE(out.find("component"), std::string::npos) << out;  // the table comes with it
}

}  // namespace
