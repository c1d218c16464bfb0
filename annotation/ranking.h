// Rankings: ordered groups of answer indices, best first, ties inside a group (`B > A = C > D`).
// Pure functions: safe to call from any thread at once. Errors: parse_ranking and
// groups_from_json throw rlhf::Error saying what is wrong with the text; the others never throw
// (beyond std::bad_alloc).
#pragma once

#include <string>
#include <vector>

namespace rlhf::annotation {

// Groups of answer indices, best first; e.g. {{1}, {0, 2}, {3}} is `B > A = C > D`.
using Groups = std::vector<std::vector<int>>;

// True when `groups` has no empty group and holds every index 0..num_answers-1 exactly once.
// On false, `why` (when given) says what is wrong, e.g. "answer index 4 is out of range 0..3".
bool is_permutation(const Groups& groups, int num_answers, std::string* why = nullptr);

// Parses the terminal client's notation: letters A..Z (case-insensitive) joined by '>' (better)
// and '=' (tie), spaces ignored, e.g. "B>A=C>D". Throws rlhf::Error explaining the problem,
// including when the result is not a permutation of num_answers answers.
Groups parse_ranking(const std::string& text, int num_answers);

// The inverse of parse_ranking: {{1}, {0, 2}, {3}} -> "B>A=C>D".
std::string format_ranking(const Groups& groups);

// Rankings become training pairs through reward::ranking_to_comparisons (reward/comparisons.h,
// torch-free), the one implementation shared with the reward trainer.

// Groups <-> compact JSON text ("[[1],[0,2],[3]]"), the form stored in SQLite and exported.
// groups_from_json throws rlhf::Error quoting text that is not a JSON list of lists of integers.
std::string groups_to_json(const Groups& groups);
Groups groups_from_json(const std::string& json);

}  // namespace rlhf::annotation
