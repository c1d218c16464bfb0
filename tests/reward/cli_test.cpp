// `rlhf reward train|eval|score` end to end through the executable.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "policy/tokenizer/tokenizer.h"
#include "tests/fixtures/chat_data.h"
#include "tests/fixtures/preference_data.h"
#include "tests/test_support.h"

namespace rlhf::reward {
namespace {

using rlhf::testing::rlhf_binary;
using rlhf::testing::run_command;

std::string last_line(const std::string& s) {
  std::string t = s;
  while (!t.empty() && t.back() == '\n') t.pop_back();
  auto nl = t.rfind('\n');
  return nl == std::string::npos ? t : t.substr(nl + 1);
}

TEST(RewardCli, TrainEvalScore) {
  rlhf::testing::TempDir dir("rwcli");
  write_synthetic(dir / "train.jsonl", 120, 1);
  write_synthetic(dir / "test.jsonl", 40, 2);
  {
    std::ofstream text(dir / "corpus.txt");
    std::ifstream in(dir / "train.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line);
      text << j["prompt"].get<std::string>() << "\n" << j["chosen"].get<std::string>() << "\n";
    }
  }
  policy::TokenizerTrainOptions t;
  t.input = dir / "corpus.txt";
  t.vocab_size = 100;
  t.byte_fallback = false;
  t.out_dir = dir / "tok";
  std::string tok = policy::train_tokenizer(t);
  {
    std::ofstream cfg(dir / "reward.pbtxt");
    cfg << "train_file: \"" << dir / "train.jsonl"
        << "\"\n"
        << "tokenizer: \"" << tok << "\"\n"
        << "model { dim: 32 n_layers: 1 n_heads: 4 }\n"
        << "max_prompt_tokens: 16 max_answer_tokens: 24\n"
        << "steps: 200 batch_pairs: 16 optimizer { lr: 3e-3 } eval_every: 100 threads: 1\n";
  }
  std::string out;
  // --steps overrides the config's 200.
  int rc = run_command(rlhf_binary() + " reward train --config " + dir / "reward.pbtxt" +
                           " --out " + dir / "rm" + " --steps 60",
                       &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("best step"), std::string::npos) << out;

  rc = run_command(rlhf_binary() + " reward eval --model " + dir / "rm" + " --pairs " +
                       dir / "test.jsonl" + " --json",
                   &out, /*merge_stderr=*/false);
  ASSERT_EQ(rc, 0) << out;
  auto j = nlohmann::json::parse(last_line(out));
  for (const char* k : {"accuracy", "n", "loss", "mean_margin", "ece"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j["n"].get<int>(), 80);
  EXPECT_GT(j["accuracy"].get<double>(), 0.8) << out;

  std::string good, bad;
  ASSERT_EQ(run_command(rlhf_binary() + " reward score --model " + dir / "rm/model" +
                            " --prompt 'question: apple ?' --answer 'green zebra table'",
                        &good, false),
            0)
      << good;
  ASSERT_EQ(run_command(rlhf_binary() + " reward score --model " + dir / "rm" +
                            " --prompt 'question: apple ?' --answer 'green water table'",
                        &bad, false),
            0)
      << bad;
  EXPECT_GT(std::stod(last_line(good)), std::stod(last_line(bad)));

  // Errors: a bad config field names file and line; a bad pairs line names the line.
  {
    std::ofstream cfg(dir / "bad.pbtxt");
    cfg << "train_file: \"x\"\nbatch_pairs: -3\n";
  }
  rc = run_command(
      rlhf_binary() + " reward train --config " + dir / "bad.pbtxt" + " --out " + dir / "bad",
      &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("bad.pbtxt:2: field 'batch_pairs'"), std::string::npos) << out;
  {
    std::ofstream p(dir / "broken.jsonl");
    p << R"({"prompt":"a","chosen":"b","rejected":"c"})"
      << "\n"
      << "not json\n";
  }
  rc = run_command(
      rlhf_binary() + " reward eval --model " + dir / "rm" + " --pairs " + dir / "broken.jsonl",
      &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("broken.jsonl:2:"), std::string::npos) << out;
}

// Conversations (format "messages") through the executable: train, eval with the model folder's
// copy of the chat template, and a bad line that stops the run naming FILE:LINE.
TEST(RewardCli, MessagesTrainEvalAndBadLine) {
  rlhf::testing::TempDir dir("rwclimsg");
  rlhf::testing::write_chatml_tokenizer(dir / "tok");
  rlhf::testing::write_messages_pairs(dir / "train.jsonl", 160, 1);
  rlhf::testing::write_messages_pairs(dir / "test.jsonl", 40, 2);
  {
    std::ofstream cfg(dir / "reward.pbtxt");
    cfg << "train_file: \"" << dir / "train.jsonl"
        << "\"\nformat: \"messages\"\n"
        << "tokenizer: \"" << dir / "tok"
        << "\"\n"
        << "model { dim: 32 n_layers: 1 n_heads: 4 }\n"
        << "max_prompt_tokens: 16 max_answer_tokens: 48\n"
        << "steps: 40 batch_pairs: 16 optimizer { lr: 3e-3 } eval_every: 20 threads: 1\n";
  }
  std::string out;
  int rc = run_command(
      rlhf_binary() + " reward train --config " + dir / "reward.pbtxt" + " --out " + dir / "rm",
      &out);
  ASSERT_EQ(rc, 0) << out;
  rc = run_command(rlhf_binary() + " reward eval --model " + dir / "rm" + " --pairs " +
                       dir / "test.jsonl" + " --format messages --json",
                   &out, /*merge_stderr=*/false);
  ASSERT_EQ(rc, 0) << out;
  auto j = nlohmann::json::parse(last_line(out));
  EXPECT_EQ(j["n"].get<int>(), 40);
  EXPECT_GT(j["accuracy"].get<double>(), 0.8) << out;

  {
    std::ofstream p(dir / "bad.jsonl");
    p << R"({"chosen":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}],)"
      << R"("rejected":[{"role":"user","content":"q"},{"role":"assistant","content":"b"}]})"
      << "\n"
      << R"({"chosen":[{"role":"narrator","content":"q"}],"rejected":[]})"
      << "\n";
  }
  rc = run_command(rlhf_binary() + " reward eval --model " + dir / "rm" + " --pairs " +
                       dir / "bad.jsonl" + " --format messages",
                   &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("bad.jsonl:2: field \"chosen\"[0]: unknown role \"narrator\""),
            std::string::npos)
      << out;
  rc = run_command(rlhf_binary() + " reward train --config " + dir / "reward.pbtxt" + " --out " +
                       dir / "rm2" + " --train-file " + dir / "bad.jsonl",
                   &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("bad.jsonl:2:"), std::string::npos) << out;
}

}  // namespace
}  // namespace rlhf::reward
