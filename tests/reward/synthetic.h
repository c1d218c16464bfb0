// Synthetic preference data for the reward tests: answers containing the marker word "zebra"
// are preferred.
#pragma once

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "reward/comparisons.h"

namespace rlhf::reward {

inline const char* kWords[] = {"apple", "river", "stone", "cloud", "happy", "green",
                               "table", "music", "light", "dream", "ocean", "small",
                               "quick", "brown", "house", "paper", "plant", "sugar",
                               "north", "train", "water", "bread", "chair", "piano"};
inline const char* kMarker = "zebra";

inline std::string random_text(std::mt19937& rng, int min_words, int max_words, bool marker) {
  int n = min_words + static_cast<int>(rng() % static_cast<unsigned>(max_words - min_words + 1));
  int at = marker ? static_cast<int>(rng() % static_cast<unsigned>(n)) : -1;
  std::string s;
  for (int i = 0; i < n; ++i) {
    if (!s.empty()) s += " ";
    s += i == at ? kMarker : kWords[rng() % (sizeof kWords / sizeof kWords[0])];
  }
  return s;
}

// Rankings of 3 answers: one with the marker on top, two without, tied (ties yield no pair).
inline void write_synthetic(const std::string& path, int n_prompts, uint32_t seed) {
  std::mt19937 rng(seed);
  std::ofstream f(path);
  for (int p = 0; p < n_prompts; ++p) {
    Ranking r;
    r.prompt = "question: " + random_text(rng, 3, 6, false) + " ?";
    r.group = std::to_string(seed) + "-" + std::to_string(p);
    r.tiers = {{random_text(rng, 3, 9, true)},
               {random_text(rng, 3, 9, false), random_text(rng, 3, 9, false)}};
    for (const auto& c : ranking_to_comparisons(r)) {
      nlohmann::json j{{"schema_version", 1},    {"prompt", c.prompt}, {"chosen", c.chosen},
                       {"rejected", c.rejected}, {"task_id", r.group}, {"annotator", "synthetic"}};
      f << j.dump() << "\n";
    }
  }
}

}  // namespace rlhf::reward
