// Progress and agreement statistics over an annotation store (`rlhf annotate stats`).
// Errors: compute_stats passes on the Store's rlhf::Error (sqlite_store.h); the other functions
// never throw (beyond std::bad_alloc). Thread safety: compute_stats uses the Store from the
// calling thread (one thread at a time per Store); the other functions are pure.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "annotation/sqlite_store.h"

namespace rlhf::annotation {

struct AnnotatorStats {
  std::string name;
  bool active = false;
  int64_t submissions = 0;  // every stored judgement
  int64_t rankings = 0;     // judgements with groups
  int64_t skips = 0;
  int64_t flags = 0;
  int64_t none_acceptable = 0;
  double median_seconds = 0;
};

struct Stats {
  int64_t tasks = 0;
  int64_t done_tasks = 0;     // tasks with all the rankings their overlap asks for
  int64_t pending_tasks = 0;  // tasks that still need rankings and can be leased
  // Tasks taken out of the queue (never leased, e.g. too large to send; Store::quarantine_task),
  // with their reasons; they count neither as done nor as pending.
  std::vector<QuarantinedTask> quarantined;
  int64_t judgements = 0;  // stored rows (rankings, skips, flags, none-acceptable)
  std::vector<AnnotatorStats> annotators;
  // Agreement on tasks ranked by two or more annotators, over every annotator pair and every
  // answer pair: the fraction where both give the same relation (<, =, >).
  int64_t overlap_tasks = 0;
  int64_t compared_answer_pairs = 0;
  double pairwise_agreement = 0;  // NaN-free: 0 when nothing was compared
  // Mean Kendall tau-b between two annotators' rankings of the same task (pairs with a defined
  // tau only; 0 when none). 1 = identical orders, -1 = reversed.
  int64_t tau_pairs = 0;
  double mean_kendall_tau = 0;
  // Krippendorff's alpha, ordinal metric, over every answer of every overlapping task (a unit =
  // one answer; its values = the answer's midrank in each annotator's ranking: tied answers share
  // the mean of their positions, so 1, 2.5, 2.5, 4). 1 = perfect agreement, 0 = chance, < 0 =
  // systematic disagreement; 0 with alpha_units 0 when undefined (nothing pairable, or no
  // variation at all).
  int64_t alpha_units = 0;
  double krippendorff_alpha = 0;
};

Stats compute_stats(Store& store);
std::string stats_to_json(const Stats& stats);  // one JSON object, pretty-printed
std::string stats_to_text(const Stats& stats);  // a short human-readable table

// Kendall tau-b of two rank vectors (rank[i] = group index of answer i; equal = tie). Returns
// false when it is undefined (one side all ties).
bool kendall_tau_b(const std::vector<int>& a, const std::vector<int>& b, double* tau);

// Krippendorff's alpha with the ordinal metric (Krippendorff 2011, "Computing Krippendorff's
// Alpha-Reliability"): units[u] holds the values the coders gave unit u (missing ones left out).
// Units with fewer than two values are not pairable and are ignored. Coincidences
// o_ck = sum_u (c-k pairs in u) / (m_u - 1); ordinal distance
// d_ck = (sum of n_g for g from c to k - (n_c + n_k) / 2)^2 over the sorted distinct values;
// alpha = 1 - (n - 1) * sum o_ck d_ck / sum n_c n_k d_ck. Returns false when it is undefined (no
// pairable unit, or a single value throughout).
bool krippendorff_alpha_ordinal(const std::vector<std::vector<double>>& units, double* alpha);

}  // namespace rlhf::annotation
