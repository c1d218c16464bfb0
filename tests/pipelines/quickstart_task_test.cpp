// The quickstart task: generator, SFT corpus misconception, answer checking, gold teacher.
#include "pipelines/quickstart_task.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "common/error.h"
#include "common/files.h"
#include "tests/test_support.h"

namespace q = rlhf::quickstart;
using nlohmann::json;

namespace {

std::vector<std::string> lines_of(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) out.push_back(line);
  return out;
}

std::vector<std::string> prompts(const std::vector<q::Problem>& ps) {
  std::vector<std::string> out;
  for (const auto& p : ps) out.push_back(p.prompt());
  return out;
}

q::Problem tom_buys() {
  auto p = q::parse_prompt("Tom has 7 apples and buys 5 more. How many apples does he have now?");
  EXPECT_TRUE(p.has_value());
  return *p;
}

}  // namespace

TEST(QuickstartTask, ExamplesFromTheIssue) {
  q::Problem p = tom_buys();
  EXPECT_EQ(p.kind, q::Template::kBuys);
  EXPECT_EQ(p.gold(), 12);
  EXPECT_EQ(q::gold_answer(p), "He has 12 apples.");
  auto m =
      q::parse_prompt("Mia has 9 pears and eats 6 of them. How many pears does she have left?");
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->gold(), 3);
  EXPECT_EQ(q::gold_answer(*m), "She has 3 pears left.");
  EXPECT_EQ(q::answer_text(*m, 1), "She has 1 pear left.");
  EXPECT_FALSE(q::parse_prompt("What is the capital of France?").has_value());
  EXPECT_FALSE(
      q::parse_prompt("Tom has 7 apples and buys 5 of them. How many apples does he have now?"));
}

TEST(QuickstartTask, DeterministicForTheSameSeed) {
  auto a = q::generate_problems(q::Split::kTrain, 300, 7);
  auto b = q::generate_problems(q::Split::kTrain, 300, 7);
  auto c = q::generate_problems(q::Split::kTrain, 300, 8);
  EXPECT_EQ(prompts(a), prompts(b));
  EXPECT_NE(prompts(a), prompts(c));
  auto pa = prompts(a);
  EXPECT_EQ(std::set<std::string>(pa.begin(), pa.end()).size(), 300u);  // distinct

  rlhf::testing::TempDir dir("qs");
  q::write_sft_corpus(dir / "a.jsonl", 2000, 3);
  q::write_sft_corpus(dir / "b.jsonl", 2000, 3);
  q::write_sft_corpus(dir / "c.jsonl", 2000, 4);
  EXPECT_EQ(rlhf::sha256_file(dir / "a.jsonl"), rlhf::sha256_file(dir / "b.jsonl"));
  EXPECT_NE(rlhf::sha256_file(dir / "a.jsonl"), rlhf::sha256_file(dir / "c.jsonl"));
}

TEST(QuickstartTask, OperandRangeIsConfigurable) {
  int max_a = 0, max_b = 0, min_b = 100;
  for (const auto& p : q::generate_problems(q::Split::kTrain, 3000, 5, 10)) {
    max_a = std::max(max_a, p.a);
    max_b = std::max(max_b, p.b);
    min_b = std::min(min_b, p.b);
    EXPECT_GE(p.gold(), 1) << p.prompt();
  }
  EXPECT_EQ(max_a, 10);  // 3,000 draws reach both ends of the range
  EXPECT_EQ(max_b, 10);
  EXPECT_EQ(min_b, 1);
  for (int bad : {2, 41}) {
    try {
      q::generate_problems(q::Split::kTrain, 10, 1, bad);
      ADD_FAILURE() << "max_operand " << bad << " was accepted";
    } catch (const rlhf::Error& e) {
      EXPECT_NE(std::string(e.what()).find("max_operand " + std::to_string(bad)), std::string::npos)
          << e.what();
    }
  }
}

TEST(QuickstartTask, TrainAndHeldOutAreDisjoint) {
  auto train = q::generate_problems(q::Split::kTrain, 20000, 1);
  std::set<std::string> train_prompts;
  for (const auto& p : train) train_prompts.insert(p.prompt());
  for (uint64_t seed : {1, 2, 3}) {
    for (const auto& p : q::generate_problems(q::Split::kHeldOut, 500, seed)) {
      EXPECT_EQ(q::split_of(p), q::Split::kHeldOut);
      EXPECT_EQ(train_prompts.count(p.prompt()), 0u) << p.prompt();
    }
  }
  // Every template, operands <= 20, answers >= 1, prompts parse back to the same problem.
  std::map<q::Template, int> per_template;
  for (const auto& p : train) {
    ++per_template[p.kind];
    ASSERT_GE(p.a, 1);
    ASSERT_LE(p.a, 20);
    ASSERT_GE(p.b, 1);
    ASSERT_LE(p.b, 20);
    ASSERT_GE(p.gold(), 1);
    auto back = q::parse_prompt(p.prompt());
    ASSERT_TRUE(back.has_value()) << p.prompt();
    ASSERT_EQ(back->prompt(), p.prompt());
    ASSERT_EQ(back->gold(), p.gold());
  }
  EXPECT_EQ(per_template.size(), static_cast<size_t>(q::kNumTemplates));
  for (const auto& [t, n] : per_template) EXPECT_GT(n, 2000) << q::template_name(t);
}

// The point of the SFT data: a student that learns its distribution answers most templates
// wrongly under greedy decoding (the mode is the systematic mistake), while the gold answer keeps
// real probability for PPO to find.
TEST(QuickstartTask, SftCorpusModeIsWrongForMostTemplates) {
  q::SftMix mix;
  std::mt19937_64 rng(11);
  auto heldout = q::generate_problems(q::Split::kHeldOut, 600, 5);
  std::map<q::Template, std::pair<int, int>> mode_wrong;  // template -> (mode wrong, problems)
  std::map<q::Template, double> gold_share;
  int mode_correct_problems = 0;
  const int kSamples = 1000;
  for (const auto& p : heldout) {
    std::map<std::string, int> counts;
    for (int i = 0; i < kSamples; ++i) ++counts[q::sample_sft_answer(p, mix, rng)];
    auto mode = std::max_element(counts.begin(), counts.end(),
                                 [](const auto& a, const auto& b) { return a.second < b.second; });
    bool wrong = !q::is_correct(p, mode->first);
    mode_wrong[p.kind].first += wrong;
    mode_wrong[p.kind].second += 1;
    mode_correct_problems += !wrong;
    gold_share[p.kind] += counts[q::gold_answer(p)] / double(kSamples);
  }
  int templates_mode_wrong = 0;
  for (const auto& [t, c] : mode_wrong) {
    double share = gold_share[t] / c.second;
    // The right answer keeps real probability everywhere.
    EXPECT_GT(share, 0.3) << q::template_name(t);
    if (c.first * 2 >= c.second) ++templates_mode_wrong;
  }
  EXPECT_GE(templates_mode_wrong * 2, q::kNumTemplates);
  // A student that picks the mode would be right on 25-50% of held-out problems.
  double mode_accuracy = double(mode_correct_problems) / heldout.size();
  EXPECT_GE(mode_accuracy, 0.25);
  EXPECT_LE(mode_accuracy, 0.50);
  std::printf("templates with a wrong mode: %d/%d; mode-picking accuracy on held-out: %.3f\n",
              templates_mode_wrong, q::kNumTemplates, mode_accuracy);
}

TEST(QuickstartTask, SftCorpusFileHasPromptsAndImperfectResponses) {
  rlhf::testing::TempDir dir("qs");
  q::write_sft_corpus(dir / "sft.jsonl", 5000, 9);
  auto lines = lines_of(dir / "sft.jsonl");
  ASSERT_EQ(lines.size(), 5000u);
  int correct = 0, systematic = 0;
  for (const auto& line : lines) {
    json j = json::parse(line);
    auto p = q::parse_prompt(j.at("prompt").get<std::string>());
    ASSERT_TRUE(p.has_value()) << line;
    EXPECT_EQ(q::split_of(*p), q::Split::kTrain);
    std::string r = j.at("response").get<std::string>();
    EXPECT_TRUE(q::is_well_formed(*p, r)) << r;
    correct += q::is_correct(*p, r);
    systematic += *q::parse_answer_number(r) == q::systematic_wrong(*p);
  }
  double c = correct / 5000.0, s = systematic / 5000.0;
  EXPECT_GT(c, 0.38);
  EXPECT_LT(c, 0.50);
  EXPECT_GT(s, 0.38);
  EXPECT_LT(s, 0.52);
  std::printf("SFT corpus: gold %.3f, systematic wrong %.3f, noise %.3f\n", c, s, 1 - c - s);
}

TEST(QuickstartTask, TokenizerCorpusPromptsAndTasksFiles) {
  rlhf::testing::TempDir dir("qs");
  q::write_tokenizer_corpus(dir / "corpus.txt", 100, 1);
  auto lines = lines_of(dir / "corpus.txt");
  EXPECT_EQ(lines.size(), 300u + 46u);
  std::set<std::string> set(lines.begin(), lines.end());
  for (int k = 0; k <= 45; ++k) EXPECT_TRUE(set.count(std::to_string(k))) << k;

  auto held = q::generate_problems(q::Split::kHeldOut, 3, 1);
  q::write_prompts(dir / "prompts.jsonl", held);
  auto pl = lines_of(dir / "prompts.jsonl");
  ASSERT_EQ(pl.size(), 3u);
  EXPECT_EQ(json::parse(pl[1]).at("prompt"), held[1].prompt());

  q::write_annotation_tasks(dir / "tasks.jsonl", {"p1", "p2"}, {{"a", "b", "c", "d"}, {"e", "f"}});
  auto tl = lines_of(dir / "tasks.jsonl");
  ASSERT_EQ(tl.size(), 2u);
  EXPECT_EQ(json::parse(tl[0]).at("prompt"), "p1");
  EXPECT_EQ(json::parse(tl[0]).at("answers"), json({"a", "b", "c", "d"}));
  EXPECT_THROW(q::write_annotation_tasks(dir / "x.jsonl", {"p1"}, {}), rlhf::Error);
}

TEST(QuickstartTask, ParsesTheAnswerNumber) {
  EXPECT_EQ(q::parse_answer_number("He has 12 apples."), 12);
  EXPECT_EQ(q::parse_answer_number("12"), 12);
  EXPECT_EQ(q::parse_answer_number("  007 "), 7);
  EXPECT_EQ(q::parse_answer_number("0 apples"), 0);
  EXPECT_EQ(q::parse_answer_number("She has -3 pears left."), -3);
  EXPECT_EQ(q::parse_answer_number("He has 12 apples. Yes, 12!"), 12);
  EXPECT_EQ(q::parse_answer_number("He has 11 or 12 apples."), std::nullopt);
  EXPECT_EQ(q::parse_answer_number("He has twelve apples."), std::nullopt);
  EXPECT_EQ(q::parse_answer_number("the 3rd apple"), std::nullopt);
  EXPECT_EQ(q::parse_answer_number(""), std::nullopt);
  EXPECT_EQ(q::parse_answer_number("99999999999999 apples"), std::nullopt);

  q::Problem p = tom_buys();
  EXPECT_TRUE(q::is_correct(p, "He has 12 apples."));
  EXPECT_TRUE(q::is_correct(p, "12"));
  EXPECT_FALSE(q::is_correct(p, "He has 13 apples."));
  EXPECT_EQ(q::distance(p, "He has 9 apples."), 3);
  EXPECT_EQ(q::distance(p, "He has 15 apples."), 3);
  EXPECT_EQ(q::distance(p, "no idea"), std::nullopt);
  EXPECT_TRUE(q::is_well_formed(p, "He has 13 apples. "));
  EXPECT_FALSE(q::is_well_formed(p, "She has 12 apples."));
  EXPECT_FALSE(q::is_well_formed(p, "He has 12 apples left."));
  EXPECT_FALSE(q::is_well_formed(p, "He has 12 apples"));

  auto held = q::generate_problems(q::Split::kHeldOut, 4, 3);
  std::vector<std::string> answers = {q::gold_answer(held[0]), "nothing", q::gold_answer(held[2]),
                                      q::answer_text(held[3], held[3].gold() + 1)};
  EXPECT_DOUBLE_EQ(q::gold_accuracy(held, answers), 0.5);
  EXPECT_DOUBLE_EQ(q::gold_accuracy({}, {}), 0.0);
}

TEST(QuickstartTask, GoldTeacherOrdersCorrectCloseWellFormedThenMalformed) {
  q::Problem p = tom_buys();  // gold 12
  std::vector<std::string> answers = {
      "He has 11 apples.",              // 0: distance 1, well-formed
      "He has 12 apples.",              // 1: correct, well-formed
      "He has twelve apples.",          // 2: malformed
      "He has 20 apples.",              // 3: distance 8
      "He has 13 apples.",              // 4: distance 1, well-formed (ties with 0)
      "I think he has 12 apples now.",  // 5: correct, not well-formed, 7 words
      "12",                             // 6: correct, not well-formed, 1 word
      "",                               // 7: malformed (ties with 2)
      "He has 12 apples.",              // 8: ties with 1
      "he has 13 apples",               // 9: distance 1, not well-formed
      "He has 11 or 13 apples.",        // 10: two numbers: malformed
  };
  std::vector<std::vector<int>> expected = {{1, 8}, {6}, {5}, {0, 4}, {9}, {3}, {2, 7, 10}};
  EXPECT_EQ(q::gold_ranking(p, answers), expected);

  // Through the annotation registry, as the simulator uses it.
  q::register_quickstart_teachers();
  q::register_quickstart_teachers();  // twice is fine
  auto names = rlhf::annotation::teacher_names();
  EXPECT_NE(std::find(names.begin(), names.end(), "arithmetic"), names.end());
  auto teacher = rlhf::annotation::make_teacher("arithmetic");
  std::mt19937_64 rng(1);
  EXPECT_EQ(teacher->rank(p.prompt(), answers, rng), expected);
  EXPECT_THROW(teacher->rank("Write a poem.", answers, rng), rlhf::Error);

  // On real K = 4 samples from the SFT mix: a permutation, and the correct answers come first.
  std::mt19937_64 r2(3);
  for (const auto& h : q::generate_problems(q::Split::kHeldOut, 200, 9)) {
    std::vector<std::string> k4;
    for (int i = 0; i < 4; ++i) k4.push_back(q::sample_sft_answer(h, {}, r2));
    auto groups = teacher->rank(h.prompt(), k4, rng);
    std::vector<int> seen;
    for (const auto& g : groups) {
      ASSERT_FALSE(g.empty());
      seen.insert(seen.end(), g.begin(), g.end());
    }
    std::sort(seen.begin(), seen.end());
    ASSERT_EQ(seen, (std::vector<int>{0, 1, 2, 3}));
    bool any_correct = false;
    for (const auto& a : k4) any_correct |= q::is_correct(h, a);
    if (any_correct) {
      EXPECT_TRUE(q::is_correct(h, k4[groups[0][0]]));
    }
    // Distances never decrease down the ranking.
    int last = -1;
    for (const auto& g : groups) {
      int d = *q::distance(h, k4[g[0]]);
      EXPECT_GE(d, last);
      last = d;
    }
  }
}
