#include "annotation/ranking.h"

#include <gtest/gtest.h>

#include <random>

#include "annotation/teacher.h"
#include "common/error.h"

namespace ann = rlhf::annotation;

TEST(Ranking, ParsesTiesAndOrder) {
  ann::Groups g = ann::parse_ranking("B > a = C>D", 4);
  ASSERT_EQ(g, (ann::Groups{{1}, {0, 2}, {3}}));
  EXPECT_EQ(ann::format_ranking(g), "B>A=C>D");
}

TEST(Ranking, RejectsNonPermutationsWithAReason) {
  EXPECT_THROW(ann::parse_ranking("A>B", 3), rlhf::Error);    // C missing
  EXPECT_THROW(ann::parse_ranking("A>A>B", 2), rlhf::Error);  // A twice
  EXPECT_THROW(ann::parse_ranking("A>E", 2), rlhf::Error);    // no answer E
  EXPECT_THROW(ann::parse_ranking("A>>B", 2), rlhf::Error);
  EXPECT_THROW(ann::parse_ranking("AB", 2), rlhf::Error);
  EXPECT_THROW(ann::parse_ranking("A>B>", 2), rlhf::Error);
  EXPECT_THROW(ann::parse_ranking("", 2), rlhf::Error);
  EXPECT_THROW(ann::parse_ranking("A,B", 2), rlhf::Error);
  try {
    ann::parse_ranking("A>B", 3);
  } catch (const rlhf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("2 of 3"), std::string::npos) << e.what();
  }
  std::string why;
  EXPECT_FALSE(ann::is_permutation({{0}, {}}, 1, &why));
  EXPECT_FALSE(ann::is_permutation({{0, 5}}, 2, &why));
  EXPECT_TRUE(ann::is_permutation({{1, 0}}, 2, &why));
}

TEST(Ranking, JsonRoundTrip) {
  ann::Groups g{{2}, {0, 1}};
  EXPECT_EQ(ann::groups_to_json(g), "[[2],[0,1]]");
  EXPECT_EQ(ann::groups_from_json("[[2],[0,1]]"), g);
  EXPECT_THROW(ann::groups_from_json("{\"x\":1}"), rlhf::Error);
}

TEST(Teacher, LengthTeacherPrefersShorterAndTies) {
  auto t = ann::make_teacher("length");
  std::mt19937_64 rng(1);
  auto g = t->rank("p", {"ccc", "a", "bbbbb", "d"}, rng);
  EXPECT_EQ(g, (ann::Groups{{1, 3}, {0}, {2}}));
  EXPECT_THROW(ann::make_teacher("no-such-teacher"), rlhf::Error);
  auto names = ann::teacher_names();
  EXPECT_NE(std::find(names.begin(), names.end(), "length"), names.end());
}

TEST(Teacher, RegistryAcceptsNewTeachers) {
  struct Reverse : ann::Teacher {
    ann::Groups rank(const std::string&, const std::vector<std::string>& a,
                     std::mt19937_64&) override {
      ann::Groups g;
      for (int i = static_cast<int>(a.size()) - 1; i >= 0; --i) g.push_back({i});
      return g;
    }
  };
  ann::register_teacher("test-reverse", [] { return std::make_unique<Reverse>(); });
  std::mt19937_64 rng(0);
  EXPECT_EQ(ann::make_teacher("test-reverse")->rank("", {"x", "y"}, rng), (ann::Groups{{1}, {0}}));
}
