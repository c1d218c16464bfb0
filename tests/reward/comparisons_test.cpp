// Comparisons: rankings -> pairs, pairs/HH readers, held-out split, batches.
#include "reward/comparisons.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "common/error.h"
#include "tests/test_support.h"

namespace rlhf::reward {
namespace {

void write(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

TEST(Comparisons, RankingWithTiesYieldsOnlyCrossTierPairs) {
  // B > A = C > D
  Ranking r{"p", "task:1", {{"B"}, {"A", "C"}, {"D"}}};
  auto cs = ranking_to_comparisons(r);
  std::set<std::pair<std::string, std::string>> got;
  for (const auto& c : cs) {
    got.insert({c.chosen, c.rejected});
    EXPECT_EQ(c.group, "task:1");
  }
  std::set<std::pair<std::string, std::string>> want{
      {"B", "A"}, {"B", "C"}, {"B", "D"}, {"A", "D"}, {"C", "D"}};
  EXPECT_EQ(got, want);
  ASSERT_EQ(cs.size(), 5u);
  // Order: by the better answer's tier, then the worse one's (the annotation export's order).
  EXPECT_EQ(cs[0].chosen + cs[0].rejected, "BA");
  EXPECT_EQ(cs[1].chosen + cs[1].rejected, "BC");
  EXPECT_EQ(cs[2].chosen + cs[2].rejected, "BD");
  EXPECT_EQ(cs[3].chosen + cs[3].rejected, "AD");
  EXPECT_EQ(cs[4].chosen + cs[4].rejected, "CD");
}

TEST(Comparisons, AllTiedRankingYieldsNoPairs) {
  EXPECT_TRUE(ranking_to_comparisons({"p", "", {{"A", "B", "C"}}}).empty());
  EXPECT_TRUE(ranking_to_comparisons({"p", "", {{"A"}}}).empty());
  EXPECT_EQ(ranking_to_comparisons({"p", "", {{"A"}, {"B"}, {"C"}, {"D"}}}).size(), 6u);
}

TEST(Comparisons, PairsFileTiesAreDropped) {
  rlhf::testing::TempDir dir("rw");
  write(
      dir / "p.jsonl",
      R"({"schema_version":1,"prompt":"q","chosen":"a","rejected":"b","task_id":7,"annotator":"x"})"
      "\n\n"
      R"({"prompt":"q","chosen":"same","rejected":"same"})"
      "\n");
  auto cs = read_pairs_jsonl(dir / "p.jsonl");
  ASSERT_EQ(cs.size(), 1u);
  EXPECT_EQ(cs[0].chosen, "a");
  EXPECT_EQ(cs[0].line, 1);
  EXPECT_EQ(cs[0].group, "task:7");
}

TEST(Comparisons, BadLineIsNamedByNumber) {
  rlhf::testing::TempDir dir("rw");
  const std::string good = R"({"prompt":"q","chosen":"a","rejected":"b"})";
  write(dir / "bad_json.jsonl", good + "\n" + good + "\n" + good + "\n{\"prompt\": oops\n");
  try {
    read_pairs_jsonl(dir / "bad_json.jsonl");
    FAIL() << "expected an error";
  } catch (const rlhf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad_json.jsonl:4:"), std::string::npos) << e.what();
  }
  write(dir / "missing.jsonl", good + "\n" + R"({"prompt":"q","chosen":"a"})" + "\n");
  try {
    read_pairs_jsonl(dir / "missing.jsonl");
    FAIL() << "expected an error";
  } catch (const rlhf::Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("missing.jsonl:2:"), std::string::npos) << m;
    EXPECT_NE(m.find("rejected"), std::string::npos) << m;
  }
  write(dir / "type.jsonl", good + "\n\n" + R"({"prompt":"q","chosen":1,"rejected":"b"})" + "\n");
  try {
    read_pairs_jsonl(dir / "type.jsonl");
    FAIL() << "expected an error";
  } catch (const rlhf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("type.jsonl:3:"), std::string::npos) << e.what();
  }
}

TEST(Comparisons, HhDialoguesSplitAtTheFinalAssistantTurn) {
  std::string p, c, r;
  ASSERT_TRUE(split_hh_dialogues(
      "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant: No.",
      "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant: Nope, sorry.\n", &p, &c,
      &r));
  EXPECT_EQ(p, "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant:");
  EXPECT_EQ(c, "No.");  // leading/trailing spaces and newlines removed
  EXPECT_EQ(r, "Nope, sorry.");
  // Answers that share a beginning still split at the final marker, not inside the answer.
  ASSERT_TRUE(split_hh_dialogues("\n\nHuman: q\n\nAssistant: Yes, 4.",
                                 "\n\nHuman: q\n\nAssistant: Yes, 5.", &p, &c, &r));
  EXPECT_EQ(p, "\n\nHuman: q\n\nAssistant:");
  EXPECT_EQ(c, "Yes, 4.");
}

TEST(Comparisons, HhDialoguesThatDoNotShareTheFinalPromptAreRefused) {
  std::string p = "untouched", c, r;
  // Diverging in an earlier turn (the final markers sit at different offsets).
  EXPECT_FALSE(split_hh_dialogues("\n\nHuman: a\n\nAssistant: x", "\n\nHuman: b\n\nAssistant: y",
                                  &p, &c, &r));
  // Same offsets, different text before the final marker.
  EXPECT_FALSE(split_hh_dialogues("\n\nHuman: a\n\nAssistant: x", "\n\nHuman: b\n\nAssistant: x",
                                  &p, &c, &r));
  // One side has an extra exchange.
  EXPECT_FALSE(split_hh_dialogues("\n\nHuman: a\n\nAssistant: x",
                                  "\n\nHuman: a\n\nAssistant: x\n\nHuman: more\n\nAssistant: y", &p,
                                  &c, &r));
  EXPECT_FALSE(split_hh_dialogues("no markers", "at all", &p, &c, &r));
  EXPECT_EQ(p, "untouched");
}

TEST(Comparisons, HhFileLeavesOutLinesThatCannotBeSplit) {
  rlhf::testing::TempDir dir("cmp");
  auto line = [](const std::string& c, const std::string& r) {
    return nlohmann::json{{"chosen", c}, {"rejected", r}}.dump() + "\n";
  };
  write(dir / "hh.jsonl",
        line("\n\nHuman: q\n\nAssistant: good", "\n\nHuman: q\n\nAssistant: bad") + "\n" +
            line("\n\nHuman: a\n\nAssistant: x", "\n\nHuman: b\n\nAssistant: y") +
            line("\n\nHuman: q\n\nAssistant: tie", "\n\nHuman: q\n\nAssistant: tie "));
  int64_t skipped = -1;
  auto cs = read_hh_jsonl(dir / "hh.jsonl", &skipped);
  ASSERT_EQ(cs.size(), 1u);
  EXPECT_EQ(skipped, 2);
  EXPECT_EQ(cs[0].chosen, "good");
  EXPECT_EQ(cs[0].rejected, "bad");
  EXPECT_EQ(cs[0].line, 1);
  EXPECT_EQ(read_comparisons(dir / "hh.jsonl", "hh").size(), 1u);
}

TEST(Comparisons, SplitAndBatchesKeepGroupsWhole) {
  std::vector<Comparison> all;
  for (int g = 0; g < 40; ++g)
    for (int k = 0; k < 1 + g % 4; ++k)
      all.push_back(
          {"p" + std::to_string(g), "a" + std::to_string(k), "b", "g" + std::to_string(g), 0});
  std::vector<Comparison> train, held;
  split_heldout(all, 0.25, 3, &train, &held);
  EXPECT_EQ(train.size() + held.size(), all.size());
  std::set<std::string> tg, hg;
  for (auto& c : train) tg.insert(c.group);
  for (auto& c : held) hg.insert(c.group);
  EXPECT_EQ(hg.size(), 10u);
  for (auto& g : hg) EXPECT_EQ(tg.count(g), 0u) << g;

  auto batches = make_batches(all, 5, 1);
  std::map<std::string, int> batch_of;
  size_t total = 0;
  for (size_t b = 0; b < batches.size(); ++b) {
    total += batches[b].size();
    for (size_t i : batches[b]) {
      auto it = batch_of.emplace(all[i].group, static_cast<int>(b)).first;
      EXPECT_EQ(it->second, static_cast<int>(b))
          << "group " << all[i].group << " split across batches";
    }
  }
  EXPECT_EQ(total, all.size());
}

}  // namespace
}  // namespace rlhf::reward
