// Comparisons in the messages format (TRL / OpenRLHF conversations): rendered with a real chat
// template (policy::ChatTemplate), split into prompt / answers as reward/comparisons.h says, token
// ids as the tokenizer gives for the renderings, and bad input refused naming FILE:LINE.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "policy/tokenizer/chat_template.h"
#include "policy/tokenizer/tokenizer.h"
#include "reward/comparisons.h"
#include "tests/fixtures/chat_data.h"
#include "tests/test_support.h"

namespace rlhf::reward {
namespace {

using Json = nlohmann::ordered_json;

void write(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

Json msg(const char* role, const char* content) { return {{"role", role}, {"content", content}}; }

ChatRenderer renderer_of(const policy::ChatTemplate& chat) {
  return [&chat](const Json& m, bool gen) { return chat.render(m, gen); };
}

class MessagesComparisons : public ::testing::Test {
 protected:
  void SetUp() override {
    tokenizer_path_ = rlhf::testing::write_chatml_tokenizer(dir_ / "tok");
    tok_ = policy::Tokenizer::load(dir_ / "tok");
    chat_ = policy::ChatTemplate::load(dir_ / "tok/tokenizer_config.json");
  }
  std::vector<int> ids(const std::string& text) const { return tok_.encode(text); }

  rlhf::testing::TempDir dir_{"msgpairs"};
  std::string tokenizer_path_;
  policy::Tokenizer tok_;
  policy::ChatTemplate chat_ = policy::ChatTemplate::from_source("", "empty");
};

TEST_F(MessagesComparisons, PromptShapeRendersPromptAndAnswersWithTheTemplate) {
  const Json prompt = {msg("system", "be brief"), msg("user", "hi there")};
  const Json chosen = {msg("assistant", "hello zebra")};
  const Json rejected = {msg("assistant", "go away")};
  write(dir_ / "p.jsonl",
        Json{{"prompt", prompt}, {"chosen", chosen}, {"rejected", rejected}}.dump() + "\n");
  auto cs = read_comparisons(dir_ / "p.jsonl", "messages", renderer_of(chat_));
  ASSERT_EQ(cs.size(), 1u);
  const std::string want_prompt =
      "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi there<|im_end|>\n"
      "<|im_start|>assistant\n";
  EXPECT_EQ(cs[0].prompt, want_prompt);
  EXPECT_EQ(cs[0].prompt, chat_.render(prompt, true));
  EXPECT_EQ(cs[0].chosen, "hello zebra<|im_end|>\n");
  EXPECT_EQ(cs[0].rejected, "go away<|im_end|>\n");
  EXPECT_EQ(cs[0].line, 1);
  Json full = prompt;
  full.push_back(chosen[0]);
  EXPECT_EQ(cs[0].prompt + cs[0].chosen, chat_.render(full, false));

  // The reward model's ids (trainer: encode(prompt) ++ encode(answer)) are the ids of the whole
  // rendering, with the template's markers as single special tokens.
  std::vector<int> joined = ids(cs[0].prompt);
  const auto answer = ids(cs[0].chosen);
  joined.insert(joined.end(), answer.begin(), answer.end());
  EXPECT_EQ(joined, ids(chat_.render(full, false)));
  EXPECT_EQ(joined.front(), rlhf::testing::kImStartId);
  EXPECT_EQ(std::count(joined.begin(), joined.end(), rlhf::testing::kImEndId), 3);
  EXPECT_EQ(answer[answer.size() - 2], rlhf::testing::kImEndId);
}

TEST_F(MessagesComparisons, ConversationShapeTakesTheSharedPrefixAsPrompt) {
  const Json head = {msg("user", "a"), msg("assistant", "b"), msg("user", "c")};
  Json chosen = head, rejected = head;
  chosen.push_back(msg("assistant", "good"));
  chosen.push_back(msg("user", "thanks"));  // continuations may hold several turns
  chosen.push_back(msg("assistant", "welcome"));
  rejected.push_back(msg("assistant", "bad"));
  Json tie = {{"chosen", chosen}, {"rejected", chosen}};
  write(dir_ / "c.jsonl",
        "\n" + Json{{"chosen", chosen}, {"rejected", rejected}}.dump() + "\n" + tie.dump() + "\n");
  auto cs = read_messages_jsonl(dir_ / "c.jsonl", renderer_of(chat_));
  ASSERT_EQ(cs.size(), 1u);  // the tie is dropped, the blank line skipped
  EXPECT_EQ(cs[0].line, 2);
  EXPECT_EQ(cs[0].prompt, chat_.render(head, true));
  EXPECT_EQ(cs[0].chosen,
            "good<|im_end|>\n<|im_start|>user\nthanks<|im_end|>\n"
            "<|im_start|>assistant\nwelcome<|im_end|>\n");
  EXPECT_EQ(cs[0].rejected, "bad<|im_end|>\n");
  EXPECT_EQ(cs[0].group, "prompt:" + cs[0].prompt);
}

// Line 1 is valid (with `valid_first`); the next is `bad`: the error names FILE:LINE and
// contains `want`.
void expect_refused(const std::string& path, const ChatRenderer& render, const std::string& bad,
                    const std::string& want, bool valid_first = true) {
  const Json ok = {{"chosen", {msg("user", "q"), msg("assistant", "x")}},
                   {"rejected", {msg("user", "q"), msg("assistant", "y")}}};
  write(path, (valid_first ? ok.dump() + "\n" : "") + bad + "\n");
  try {
    read_comparisons(path, "messages", render);
    ADD_FAILURE() << "accepted: " << bad;
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(path + (valid_first ? ":2: " : ":1: ")), std::string::npos) << what;
    EXPECT_NE(what.find(want), std::string::npos) << "want '" << want << "' in: " << what;
  }
}

TEST_F(MessagesComparisons, BadInputIsRefusedNamingTheLine) {
  const std::string f = dir_ / "bad.jsonl";
  const auto r = renderer_of(chat_);
  const std::string a = R"({"role":"assistant","content":"x"})";
  const std::string u = R"({"role":"user","content":"q"})";
  expect_refused(f, r, "{oops", "not valid JSON");
  expect_refused(f, r, "[1]", "expected a JSON object");
  expect_refused(f, r, R"({"chosen":"x","rejected":[)" + u + "]}",
                 "field \"chosen\" must be a list of messages, got string");
  expect_refused(f, r, R"({"chosen":[)" + u + "]}", "missing field \"rejected\"");
  expect_refused(f, r, R"({"chosen":[],"rejected":[)" + u + "]}",
                 "field \"chosen\" is an empty list");
  expect_refused(f, r, R"({"chosen":[)" + u + "," + a + R"(],"rejected":[)" + u + ",3]}",
                 "field \"rejected\"[1]: expected a message");
  expect_refused(f, r, R"({"chosen":[{"role":"bot","content":"x"}],"rejected":[)" + u + "]}",
                 "field \"chosen\"[0]: unknown role \"bot\"");
  expect_refused(f, r, R"({"chosen":[{"content":"x"}],"rejected":[)" + u + "]}",
                 "expected a string \"role\"");
  expect_refused(f, r, R"({"chosen":[{"role":"user","content":5}],"rejected":[)" + u + "]}",
                 "expected a string \"content\"");
  // Conversations that diverge at a user turn, or share nothing, have no common prompt.
  expect_refused(f, r,
                 R"({"chosen":[)" + u + "," + a +
                     R"(,{"role":"user","content":"m"}],"rejected":[)" + u + "," + a +
                     R"(,{"role":"user","content":"n"}]})",
                 "must be followed by an assistant turn");
  expect_refused(f, r, R"({"chosen":[)" + u + R"(],"rejected":[{"role":"user","content":"z"}]})",
                 "share no leading message");
  expect_refused(f, r, R"({"chosen":[)" + u + R"(],"rejected":[)" + u + "," + a + "]}",
                 "must be followed by an assistant turn");
  // Prompt shape: the answers are assistant continuations.
  expect_refused(f, r,
                 R"({"prompt":[)" + u + R"(],"chosen":[)" + u + R"(],"rejected":[)" + a + "]}",
                 "field \"chosen\" must start with an assistant message");
  expect_refused(f, r, R"({"prompt":[],"chosen":[)" + a + R"(],"rejected":[)" + a + "]}",
                 "field \"prompt\" is an empty list");
}

TEST_F(MessagesComparisons, TemplateThatIsNotPrefixConsistentIsRefused) {
  // The generation prompt "<assistant>" is not how an assistant turn renders.
  const auto odd = policy::ChatTemplate::from_source(
      "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
      "{% if add_generation_prompt %}<assistant>{% endif %}",
      "odd");
  expect_refused(
      dir_ / "odd.jsonl", renderer_of(odd),
      R"({"chosen":[{"role":"user","content":"q"},{"role":"assistant","content":"x"}],"rejected":[{"role":"user","content":"q"},{"role":"assistant","content":"z"}]})",
      "not prefix-consistent", false);
  // A render-time error of the template is reported with the line.
  const auto raising = policy::ChatTemplate::from_source(
      "{% if messages[0].role == 'system' %}{{ raise_exception('no system role') }}{% endif %}",
      "raising");
  expect_refused(
      dir_ / "raise.jsonl", renderer_of(raising),
      R"({"chosen":[{"role":"system","content":"s"},{"role":"assistant","content":"x"}],"rejected":[{"role":"system","content":"s"},{"role":"assistant","content":"y"}]})",
      "no system role", false);
}

TEST_F(MessagesComparisons, FormatsAreChosenExplicitly) {
  const std::string f = dir_ / "f.jsonl";
  write(
      f,
      R"({"prompt":[{"role":"user","content":"q"}],"chosen":[{"role":"assistant","content":"x"}],"rejected":[{"role":"assistant","content":"y"}]})"
      "\n");
  // "pairs" keeps its meaning and points at "messages"; "messages" needs a template.
  try {
    read_comparisons(f, "pairs");
    ADD_FAILURE() << "pairs accepted a conversation";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(f + ":1: field \"prompt\" must be a string, got array "
                                             "(for conversations set format: \"messages\")"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(read_comparisons(f, "messages"), Error);
  EXPECT_EQ(read_comparisons(f, "messages", renderer_of(chat_)).size(), 1u);
}

}  // namespace
}  // namespace rlhf::reward
