// PPO prompt sets with conversations ({"messages": [...]}): the prompt is the chat template's
// rendering with the generation prompt, encoded by the tokenizer; the set carries the folder's
// end-of-turn ids; generation stops at them; bad lines are refused naming FILE:LINE.
#include "pipelines/ppo_prompts.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"
#include "policy/decoding/generation.h"
#include "policy/tokenizer/chat_stop.h"
#include "policy/tokenizer/chat_template.h"
#include "tests/fixtures/chat_data.h"
#include "tests/fixtures/tiny_model.h"
#include "tests/test_support.h"

namespace rlhf::pipelines {
namespace {

using Json = nlohmann::ordered_json;

void write(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

class PpoPrompts : public ::testing::Test {
 protected:
  void SetUp() override {
    rlhf::testing::write_chatml_tokenizer(dir_ / "tok");
    tok_ = policy::Tokenizer::load(dir_ / "tok");
  }
  rlhf::testing::TempDir dir_{"ppoprompts"};
  std::optional<policy::Tokenizer> tok_;
};

TEST_F(PpoPrompts, MessagesAreRenderedWithTheGenerationPromptAndStopAtTheEndOfTurn) {
  const Json conv = {{{"role", "system"}, {"content", "be brief"}},
                     {{"role", "user"}, {"content", "what is two plus two?"}}};
  write(dir_ / "p.jsonl", Json{{"messages", conv}}.dump() + "\n\n{\"prompt\": \"plain\"}\n");
  const PromptSet set = read_prompt_set(dir_ / "p.jsonl", tok_);
  const auto chat = policy::ChatTemplate::load(dir_ / "tok/tokenizer_config.json");
  const std::string rendering = chat.render(conv, true);
  EXPECT_EQ(rendering,
            "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nwhat is two plus "
            "two?<|im_end|>\n<|im_start|>assistant\n");
  ASSERT_EQ(set.ids.size(), 2u);
  EXPECT_EQ(set.texts[0], rendering);
  std::vector<int64_t> want;
  for (int id : tok_->encode(rendering)) want.push_back(id);
  EXPECT_EQ(set.ids[0], want);  // no BOS added: the template writes its own
  EXPECT_EQ(set.ids[0].front(), rlhf::testing::kImStartId);
  EXPECT_EQ(set.texts[1], "plain");
  EXPECT_EQ(set.stop_ids, std::vector<int64_t>{rlhf::testing::kImEndId});  // eos_token

  // generation_config.json's eos_token_id list joins tokenizer_config.json's eos_token.
  write(dir_ / "tok/generation_config.json", R"({"eos_token_id": [257, 260]})");
  EXPECT_EQ(read_prompt_set(dir_ / "p.jsonl", tok_).stop_ids, (std::vector<int64_t>{257, 260}));
  write(dir_ / "tok/generation_config.json", R"({"eos_token_id": 9999})");
  EXPECT_THROW(read_prompt_set(dir_ / "p.jsonl", tok_), Error);

  // Text-only sets have no extra stop ids.
  write(dir_ / "t.jsonl", "{\"prompt\": \"plain\"}\n");
  EXPECT_TRUE(read_prompt_set(dir_ / "t.jsonl", tok_).stop_ids.empty());
}

TEST_F(PpoPrompts, BadLinesAreRefusedNamingTheLine) {
  const std::string f = dir_ / "bad.jsonl";
  const std::string ok = R"({"messages":[{"role":"user","content":"q"}]})";
  auto refused = [&](const std::string& bad, const std::string& want,
                     const std::optional<policy::Tokenizer>& tok) {
    write(f, ok + "\n" + bad + "\n");
    try {
      read_prompt_set(f, tok);
      ADD_FAILURE() << "accepted: " << bad;
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(f + ":2: "), std::string::npos) << what;
      EXPECT_NE(what.find(want), std::string::npos) << "want '" << want << "' in: " << what;
    }
  };
  refused(R"({"messages":"hi"})", "field \"messages\" must be a list of messages, got string",
          tok_);
  refused(R"({"messages":[]})", "field \"messages\" is an empty list", tok_);
  refused(R"({"messages":[{"role":"robot","content":"q"}]})", "unknown role \"robot\"", tok_);
  refused(R"({"messages":[{"role":"user","content":["q"]}]})", "expected a string \"content\"",
          tok_);
  refused(R"({"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]})",
          "must end with a user turn", tok_);
  refused(R"({"msgs":[]})", "expected a field \"prompt\"", tok_);
  refused(R"([1, 2])", "expected a JSON object", tok_);
  write(f, ok + "\n");
  try {
    read_prompt_set(f, std::nullopt);
    ADD_FAILURE() << "messages without a tokenizer";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(f + ":1: messages prompts need PpoConfig.tokenizer"),
              std::string::npos)
        << e.what();
  }
  // A tokenizer folder whose tokenizer_config.json has no chat_template: that file is named.
  rlhf::testing::write_byte_level_tokenizer(dir_ / "plain");
  try {
    read_prompt_set(f, policy::Tokenizer::load(dir_ / "plain"));
    ADD_FAILURE() << "rendered without a template";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir_ / "plain/tokenizer_config.json"), std::string::npos)
        << e.what();
  }
}

TEST(GenerationStopIds, ARowEndsAtTheFirstStopId) {
  auto model = policy::testing::random_model(policy::testing::tiny_config(), 7);
  policy::SamplingOptions o;
  o.max_new_tokens = 12;
  o.temperature = 0;  // greedy: the same tokens up to the stop
  o.eos_id = -1;      // only the stop ids end a row
  const std::vector<std::vector<int64_t>> prompts = {{1, 5, 9}, {1, 7}};
  const auto free = policy::generate(model, prompts, o);
  ASSERT_EQ(free.responses[0].size(), 12u);
  const int64_t stop = free.responses[0][3];
  const auto first = std::find(free.responses[0].begin(), free.responses[0].end(), stop);
  o.stop_ids = {stop};
  const auto stopped = policy::generate(model, prompts, o);
  const std::vector<int64_t> want(free.responses[0].begin(), first + 1);
  EXPECT_EQ(stopped.responses[0], want);  // the stop id is kept, as EOS is
  for (size_t b = 0; b < prompts.size(); ++b) {
    const auto& r = free.responses[b];
    const auto at = std::find(r.begin(), r.end(), stop);
    EXPECT_EQ(stopped.responses[b],
              std::vector<int64_t>(r.begin(), at == r.end() ? r.end() : at + 1));
  }
}

}  // namespace
}  // namespace rlhf::pipelines
