// Config-flag tables (tools/config_flags.h): a flag sets the field its path names, through
// protobuf reflection, with the value parsed as the field's type; a bad value names the flag, the
// value and the type; a path that names no field fails loudly.
#include "tools/config_flags.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/error.h"
#include "proto/annotation.pb.h"
#include "proto/reward.pb.h"
#include "proto/sft.pb.h"
#include "tools/cli.h"

namespace {

using rlhf::cli::Args;
using rlhf::cli::ConfigFlag;
using rlhf::cli::ConfigFlags;

const ConfigFlags kTable{&rlhf::proto::SftConfig::descriptor,
                         {
                             {"out", "out_dir", "output folder"},
                             {"steps", "steps", "optimizer steps"},
                             {"lr", "optimizer.lr", "peak learning rate"},
                             {"batch-size", "batch_size", "rows per micro-batch"},
                             {"packed", "packed", "pack examples"},
                             {"seed", "seed", "random seed"},
                             {"lora-rank", "lora.rank", "LoRA rank"},
                             {"lora-alpha", "lora.alpha", "LoRA alpha"},
                             {"epochs", "epochs", "passes over the data"},
                             {"schema", "schema_version", "schema version"},
                         }};

// Parses argv against the table's flags and applies them to a fresh (or the given) config.
rlhf::proto::SftConfig apply(const std::vector<std::string>& argv,
                             rlhf::proto::SftConfig cfg = {}) {
  const Args args = Args::parse(rlhf::cli::config_flag_specs(kTable), argv);
  rlhf::cli::apply_config_flags(kTable, args, &cfg);
  return cfg;
}

// The message of the rlhf::UsageError that applying argv throws ("" when none).
std::string usage_error(const std::vector<std::string>& argv) {
  try {
    apply(argv);
  } catch (const rlhf::UsageError& e) {
    EXPECT_EQ(e.exit_code(), 2);
    return e.what();
  }
  return "";
}

// The message of the rlhf::Error that resolving `path` in SftConfig throws ("" when none).
std::string path_error(const char* path) {
  try {
    rlhf::cli::resolve_field_path(*rlhf::proto::SftConfig::descriptor(), {"x", path, ""});
  } catch (const rlhf::UsageError& e) {
    return std::string("a UsageError, not a table error: ") + e.what();
  } catch (const rlhf::Error& e) {
    return e.what();
  }
  return "";
}

TEST(ConfigFlags, FlagsSetTheirFieldsAndOnlyThose) {
  const auto cfg = apply({"--lr", "0.5", "--steps", "7", "--batch-size=3", "--out", "dir",
                          "--lora-rank", "8", "--seed", "18446744073709551615", "--schema", "2"});
  EXPECT_EQ(cfg.optimizer().lr(), 0.5);
  EXPECT_EQ(cfg.steps(), 7);
  EXPECT_EQ(cfg.batch_size(), 3);
  EXPECT_EQ(cfg.out_dir(), "dir");
  EXPECT_EQ(cfg.lora().rank(), 8);
  EXPECT_EQ(cfg.seed(), 18446744073709551615ULL);
  EXPECT_EQ(cfg.schema_version(), 2u);
  EXPECT_FALSE(cfg.has_packed());
  EXPECT_FALSE(cfg.lora().has_alpha());
  EXPECT_FALSE(cfg.has_eval_every());
}

TEST(ConfigFlags, FlagsNotGivenKeepTheConfigsValues) {
  rlhf::proto::SftConfig loaded;
  loaded.mutable_optimizer()->set_lr(0.25);
  loaded.set_steps(11);
  loaded.mutable_lora()->set_rank(2);
  const auto cfg = apply({"--steps", "12"}, loaded);
  EXPECT_EQ(cfg.optimizer().lr(), 0.25);
  EXPECT_EQ(cfg.steps(), 12);
  EXPECT_EQ(cfg.lora().rank(), 2);
}

TEST(ConfigFlags, AFloatFieldGetsTheDoubleRoundedToFloat) {
  // As the hand-written overrides did: static_cast<float>(std::stod(text)).
  EXPECT_EQ(apply({"--epochs", "3e-4"}).epochs(), static_cast<float>(3e-4));
  EXPECT_EQ(apply({"--lr", "3e-4"}).optimizer().lr(), 3e-4);  // a double field keeps the double
  EXPECT_EQ(apply({"--lora-alpha", "0.1"}).lora().alpha(), static_cast<float>(0.1));
  EXPECT_EQ(apply({"--steps", "-3"}).steps(), -3);  // range checks are the validator's
}

TEST(ConfigFlags, ABoolFieldIsASwitchThatAlsoTakesAValue) {
  EXPECT_TRUE(apply({"--packed"}).packed());
  EXPECT_TRUE(apply({"--packed=yes"}).packed());
  const auto off = apply({"--packed=false"});
  EXPECT_TRUE(off.has_packed());
  EXPECT_FALSE(off.packed());
}

TEST(ConfigFlags, ABadValueNamesTheFlagTheValueAndTheType) {
  for (const auto& [argv, type] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--steps", "7x"}, "int64"},
           {{"--steps", ""}, "int64"},
           {{"--steps", "99999999999999999999"}, "int64"},
           {{"--batch-size", "3000000000"}, "int32"},
           {{"--batch-size", "2.5"}, "int32"},
           {{"--lr", "fast"}, "double"},
           {{"--epochs", "0.1.2"}, "float"},
           {{"--seed", "-1"}, "uint64"},
           {{"--schema", "4294967296"}, "uint32"},
           {{"--packed=maybe"}, "bool"}}) {
    const std::string msg = usage_error(argv);
    const std::string flag = argv[0].substr(0, argv[0].find('='));
    const std::string value = argv.size() > 1 ? argv[1] : "maybe";
    EXPECT_NE(msg.find(flag + ": expected"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'" + value + "'"), std::string::npos) << msg;
    EXPECT_NE(msg.find(type), std::string::npos) << msg;
  }
}

TEST(ConfigFlags, EnumsAreSetByValueName) {
  const ConfigFlags table{&rlhf::proto::Error::descriptor, {{"code", "code", "error code"}}};
  rlhf::proto::Error e;
  rlhf::cli::apply_config_flags(
      table, Args::parse(rlhf::cli::config_flag_specs(table), {"--code", "TASK_FULL"}), &e);
  EXPECT_EQ(e.code(), rlhf::proto::Error::TASK_FULL);
  try {
    rlhf::cli::apply_config_flags(
        table, Args::parse(rlhf::cli::config_flag_specs(table), {"--code", "FULL"}), &e);
    FAIL() << "an unknown enum value was accepted";
  } catch (const rlhf::UsageError& err) {
    const std::string msg = err.what();
    EXPECT_NE(msg.find("--code: expected one of UNKNOWN, BAD_FRAME"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'FULL'"), std::string::npos) << msg;
  }
}

TEST(ConfigFlags, APathThatNamesNoFieldFailsLoudly) {
  EXPECT_NE(path_error("lora.rnak").find("rlhf.proto.LoraConfig has no field 'rnak'"),
            std::string::npos)
      << path_error("lora.rnak");
  EXPECT_NE(path_error("learning_rate").find("rlhf.proto.SftConfig has no field 'learning_rate'"),
            std::string::npos);
  EXPECT_NE(path_error("steps.x").find("'steps' is not a message"), std::string::npos)
      << path_error("steps.x");
  EXPECT_NE(path_error("lora").find("'lora' is a message"), std::string::npos);
  EXPECT_NE(path_error("lora.targets").find("repeated"), std::string::npos);
  EXPECT_NE(path_error("").find("no field ''"), std::string::npos);
  EXPECT_NE(path_error("lora.").find("no field ''"), std::string::npos);
  EXPECT_EQ(path_error("lora.rank"), "");
  // The table's flag and path are in the message, and specs resolve every entry up front.
  const ConfigFlags typo{&rlhf::proto::SftConfig::descriptor,
                         {{"lr", "optimizer.lr", ""}, {"lora-rank", "lora.rnak", ""}}};
  try {
    rlhf::cli::config_flag_specs(typo);
    FAIL() << "a table with a typo resolved";
  } catch (const rlhf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("--lora-rank: field path 'lora.rnak'"), std::string::npos)
        << e.what();
  }
}

TEST(ConfigFlags, ATableAppliesOnlyToItsMessageType) {
  rlhf::proto::RewardTrainConfig other;
  const Args args = Args::parse(rlhf::cli::config_flag_specs(kTable), {"--lr", "1"});
  EXPECT_THROW(rlhf::cli::apply_config_flags(kTable, args, &other), rlhf::Error);
}

TEST(ConfigFlags, SpecsCarryTheFieldInTheirHelp) {
  const auto specs = rlhf::cli::config_flag_specs(kTable);
  ASSERT_EQ(specs.size(), kTable.flags.size());
  EXPECT_EQ(specs[2].name, "lr");
  EXPECT_EQ(specs[2].help, "peak learning rate (overrides optimizer.lr)");
  EXPECT_FALSE(specs[2].is_bool);
  EXPECT_EQ(specs[4].name, "packed");
  EXPECT_TRUE(specs[4].is_bool);
  EXPECT_EQ(specs[6].help, "LoRA rank (overrides lora.rank)");
  for (const auto& s : specs) {
    EXPECT_EQ(s.default_value, "") << s.name;  // the config's value is the default
    EXPECT_FALSE(s.required) << s.name;
  }
}

TEST(ConfigFlags, AConfigFlagMayNotShadowAnotherFlag) {
  rlhf::cli::Command c;
  c.path = "test";
  c.flags = {{"config", "config file"}, {"out", "output"}};
  c.config_flags = kTable;
  EXPECT_THROW(rlhf::cli::all_flags(c), rlhf::Error);
  c.flags = {{"config", "config file"}};
  const auto specs = rlhf::cli::all_flags(c);
  ASSERT_EQ(specs.size(), 1 + kTable.flags.size());
  EXPECT_EQ(specs[0].name, "config");
  EXPECT_EQ(specs[1].name, "out");
}

}  // namespace
