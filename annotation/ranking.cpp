#include "annotation/ranking.h"

#include <cctype>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace rlhf::annotation {

bool is_permutation(const Groups& groups, int num_answers, std::string* why) {
  std::vector<int> seen(num_answers > 0 ? num_answers : 0, 0);
  int count = 0;
  for (const auto& g : groups) {
    if (g.empty()) {
      if (why) *why = "a group is empty";
      return false;
    }
    for (int i : g) {
      if (i < 0 || i >= num_answers) {
        if (why)
          *why = "answer index " + std::to_string(i) + " is out of range 0.." +
                 std::to_string(num_answers - 1);
        return false;
      }
      if (seen[i]++) {
        if (why) *why = "answer index " + std::to_string(i) + " appears twice";
        return false;
      }
      ++count;
    }
  }
  if (count != num_answers) {
    if (why)
      *why = "ranks " + std::to_string(count) + " of " + std::to_string(num_answers) +
             " answers; every answer must appear exactly once";
    return false;
  }
  return true;
}

Groups parse_ranking(const std::string& text, int num_answers) {
  Groups groups(1);
  bool expect_letter = true;
  for (char c : text) {
    if (std::isspace(static_cast<unsigned char>(c))) continue;
    if (std::isalpha(static_cast<unsigned char>(c))) {
      if (!expect_letter) throw Error("expected '>' or '=' before '" + std::string(1, c) + "'");
      int idx = std::toupper(static_cast<unsigned char>(c)) - 'A';
      if (idx >= num_answers)
        throw Error("there is no answer " + std::string(1, static_cast<char>('A' + idx)) +
                    " (answers are A.." + std::string(1, static_cast<char>('A' + num_answers - 1)) +
                    ")");
      groups.back().push_back(idx);
      expect_letter = false;
    } else if (c == '>' || c == '=') {
      if (expect_letter) throw Error("expected a letter before '" + std::string(1, c) + "'");
      if (c == '>') groups.emplace_back();
      expect_letter = true;
    } else {
      throw Error("unexpected character '" + std::string(1, c) + "' (use letters, '>' and '=')");
    }
  }
  if (expect_letter) throw Error("the ranking is empty or ends with '>' or '='");
  std::string why;
  if (!is_permutation(groups, num_answers, &why)) throw Error("the ranking " + why);
  return groups;
}

std::string format_ranking(const Groups& groups) {
  std::string out;
  for (size_t g = 0; g < groups.size(); ++g) {
    if (g) out += '>';
    for (size_t i = 0; i < groups[g].size(); ++i) {
      if (i) out += '=';
      out += static_cast<char>('A' + groups[g][i]);
    }
  }
  return out;
}

std::string groups_to_json(const Groups& groups) { return nlohmann::json(groups).dump(); }

Groups groups_from_json(const std::string& json) {
  try {
    return nlohmann::json::parse(json).get<Groups>();
  } catch (const std::exception& e) {
    throw Error("ranking groups '" + json +
                "' are not a JSON list of lists of integers: " + e.what());
  }
}

}  // namespace rlhf::annotation
