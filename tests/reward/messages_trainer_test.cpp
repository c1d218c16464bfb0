// Reward training on conversations (format "messages"): the chat template of the tokenizer
// folder renders them, the model learns an easy preference (the chosen answer holds "zebra", the
// only word with a 'z'), the saved model encodes prompt / answer as the tokenizer encodes the
// template's renderings, and a tokenizer folder without a chat template is refused naming it.
#include <gtest/gtest.h>

#include <filesystem>

#include "common/error.h"
#include "pipelines/stage_record.h"
#include "policy/tokenizer/chat_template.h"
#include "reward/comparisons.h"
#include "reward/reward_model.h"
#include "reward/scorer.h"
#include "reward/train_config.h"
#include "tests/fixtures/chat_data.h"
#include "tests/test_support.h"

namespace rlhf::reward {
namespace {

proto::RewardTrainConfig messages_config(const rlhf::testing::TempDir& dir,
                                         const std::string& tokenizer) {
  auto cfg = parse_train_config("train_file: \"" + dir / "train.jsonl" + "\"\n" + "eval_file: \"" +
                                    dir / "eval.jsonl" + "\"\n" +
                                    "format: \"messages\"\n"
                                    "tokenizer: \"" +
                                    tokenizer + "\"\n" +
                                    "model { dim: 48 n_layers: 2 n_heads: 4 n_kv_heads: 2 }\n"
                                    "max_prompt_tokens: 24  max_answer_tokens: 48\n"
                                    "steps: 60  batch_pairs: 16  optimizer { lr: 3e-3 "
                                    "warmup_steps: 5 }  eval_every: 30  seed: 5  threads: 1\n",
                                "messages.pbtxt");
  cfg.set_out_dir(dir / "run");
  cfg.set_device(rlhf::testing::test_device_name());
  return cfg;
}

TEST(MessagesTraining, LearnsAnEasyPreferenceOnRenderedConversations) {
  rlhf::testing::TempDir dir("rwmsg");
  rlhf::testing::write_chatml_tokenizer(dir / "tok");
  rlhf::testing::write_messages_pairs(dir / "train.jsonl", 240, 1);
  rlhf::testing::write_messages_pairs(dir / "eval.jsonl", 60, 2);
  auto result = pipelines::run_reward_stage(messages_config(dir, dir / "tok"));
  EXPECT_GT(result.heldout.accuracy, 0.8) << to_json(result.heldout);
  EXPECT_EQ(result.heldout.n, 60);

  // The saved model's inputs: bos? + last 24 ids of the prompt rendering + first 48 ids of the
  // answer (the rest of the full rendering) + eos, ids as the tokenizer gives for those texts.
  const auto chat = policy::ChatTemplate::load(dir / "tok/tokenizer_config.json");
  const RewardModel rm = load_reward_model(dir / "run");
  const auto cs = read_messages_jsonl(dir / "eval.jsonl",
                                      [&](const auto& m, bool gen) { return chat.render(m, gen); });
  ASSERT_EQ(cs.size(), 60u);
  for (size_t i = 0; i < 3; ++i) {
    const auto prompt_ids = rm.tokenizer.encode(cs[i].prompt);
    const auto answer_ids = rm.tokenizer.encode(cs[i].chosen);
    std::vector<int64_t> want(prompt_ids.end() - std::min<std::ptrdiff_t>(24, prompt_ids.size()),
                              prompt_ids.end());
    want.insert(want.end(), answer_ids.begin(),
                answer_ids.begin() + std::min<std::ptrdiff_t>(48, answer_ids.size()));
    ASSERT_EQ(rm.tokenizer.bos_id(), -1);
    want.push_back(rm.tokenizer.eos_id());
    EXPECT_EQ(rm.tokenizer.eos_id(), rlhf::testing::kImEndId);
    EXPECT_EQ(rm.encode(cs[i].prompt, cs[i].chosen), want);
  }

  // Fresh conversations scored by the saved model.
  RewardScorer scorer(dir / "run");
  rlhf::testing::write_messages_pairs(dir / "fresh.jsonl", 60, 3);
  const auto fresh = read_messages_jsonl(
      dir / "fresh.jsonl", [&](const auto& m, bool gen) { return chat.render(m, gen); });
  EXPECT_GT(scorer.evaluate(fresh).accuracy, 0.8);
}

TEST(MessagesTraining, TokenizerWithoutChatTemplateIsRefusedNamingTheFile) {
  rlhf::testing::TempDir dir("rwmsgbad");
  rlhf::testing::write_byte_level_tokenizer(dir / "tok");  // its config has no chat_template
  rlhf::testing::write_messages_pairs(dir / "train.jsonl", 4, 1);
  rlhf::testing::write_messages_pairs(dir / "eval.jsonl", 4, 2);
  try {
    pipelines::run_reward_stage(messages_config(dir, dir / "tok"));
    ADD_FAILURE() << "trained without a chat template";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir / "tok/tokenizer_config.json"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("no chat_template"), std::string::npos) << e.what();
  }
  std::filesystem::remove(dir / "tok/tokenizer_config.json");
  try {
    pipelines::run_reward_stage(messages_config(dir, dir / "tok/tokenizer.json"));
    ADD_FAILURE() << "trained without a tokenizer_config.json";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir / "tok/tokenizer_config.json"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace rlhf::reward
