#include "annotation/stats.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

namespace rlhf::annotation {

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::vector<int> rank_vector(const Groups& g, size_t n) {
  std::vector<int> r(n, 0);
  for (size_t i = 0; i < g.size(); ++i)
    for (int a : g[i])
      if (a >= 0 && static_cast<size_t>(a) < n) r[a] = static_cast<int>(i);
  return r;
}

int sign(int x) { return (x > 0) - (x < 0); }

}  // namespace

bool kendall_tau_b(const std::vector<int>& a, const std::vector<int>& b, double* tau) {
  int64_t concordant = 0, discordant = 0, ties_a = 0, ties_b = 0, pairs = 0;
  for (size_t i = 0; i < a.size(); ++i)
    for (size_t j = i + 1; j < a.size(); ++j) {
      ++pairs;
      int sa = sign(a[j] - a[i]), sb = sign(b[j] - b[i]);
      if (sa == 0) ++ties_a;
      if (sb == 0) ++ties_b;
      if (sa != 0 && sb != 0) (sa == sb ? concordant : discordant)++;
    }
  double denom =
      std::sqrt(static_cast<double>(pairs - ties_a) * static_cast<double>(pairs - ties_b));
  if (denom <= 0) return false;
  *tau = static_cast<double>(concordant - discordant) / denom;
  return true;
}

Stats compute_stats(Store& store) {
  Stats s;
  sqlite3* db = store.db();
  {
    internal::Statement q(db,
                          "SELECT count(*), sum(done_count >= overlap), sum(done_count < overlap) "
                          "FROM tasks");
    q.step();
    s.tasks = q.int64(0);
    s.done_tasks = q.int64(1);
    s.pending_tasks = q.int64(2);
  }
  std::map<int64_t, AnnotatorStats> by_id;
  for (const auto& a : store.annotators()) {
    AnnotatorStats st;
    st.name = a.name;
    st.active = a.active;
    by_id[a.id] = st;
  }
  std::map<int64_t, std::vector<double>> seconds;
  std::map<int64_t, std::vector<const RankingRecord*>> by_task;
  auto rankings = store.all_rankings();
  s.judgements = static_cast<int64_t>(rankings.size());
  for (const auto& r : rankings) {
    auto& st = by_id[r.annotator_id];
    ++st.submissions;
    if (r.skipped) ++st.skips;
    if (!r.flag.empty()) ++st.flags;
    if (r.none_acceptable) ++st.none_acceptable;
    if (!r.groups.empty()) {
      ++st.rankings;
      by_task[r.task_id].push_back(&r);
    }
    seconds[r.annotator_id].push_back(r.seconds);
  }
  for (auto& [id, st] : by_id) {
    st.median_seconds = median(seconds[id]);
    s.annotators.push_back(st);
  }
  int64_t agree = 0;
  double tau_sum = 0;
  for (const auto& [task_id, rs] : by_task) {
    if (rs.size() < 2) continue;
    ++s.overlap_tasks;
    size_t n = 0;  // answers in the task (every ranking is a permutation of them)
    for (const auto& g : rs[0]->groups)
      for (int x : g) n = std::max(n, static_cast<size_t>(x) + 1);
    for (size_t p = 0; p < rs.size(); ++p)
      for (size_t q = p + 1; q < rs.size(); ++q) {
        auto a = rank_vector(rs[p]->groups, n), b = rank_vector(rs[q]->groups, n);
        for (size_t i = 0; i < n; ++i)
          for (size_t j = i + 1; j < n; ++j) {
            ++s.compared_answer_pairs;
            agree += sign(a[j] - a[i]) == sign(b[j] - b[i]);
          }
        double tau;
        if (kendall_tau_b(a, b, &tau)) {
          tau_sum += tau;
          ++s.tau_pairs;
        }
      }
  }
  if (s.compared_answer_pairs > 0)
    s.pairwise_agreement = static_cast<double>(agree) / s.compared_answer_pairs;
  if (s.tau_pairs > 0) s.mean_kendall_tau = tau_sum / s.tau_pairs;
  return s;
}

std::string stats_to_json(const Stats& s) {
  nlohmann::json j;
  j["schema_version"] = 1;
  j["tasks"] = s.tasks;
  j["done_tasks"] = s.done_tasks;
  j["pending_tasks"] = s.pending_tasks;
  j["judgements"] = s.judgements;
  j["annotators"] = nlohmann::json::array();
  for (const auto& a : s.annotators)
    j["annotators"].push_back({{"name", a.name},
                               {"active", a.active},
                               {"submissions", a.submissions},
                               {"rankings", a.rankings},
                               {"skips", a.skips},
                               {"flags", a.flags},
                               {"none_acceptable", a.none_acceptable},
                               {"median_seconds", a.median_seconds}});
  j["agreement"] = {{"overlap_tasks", s.overlap_tasks},
                    {"compared_answer_pairs", s.compared_answer_pairs},
                    {"pairwise_agreement", s.pairwise_agreement},
                    {"kendall_tau_pairs", s.tau_pairs},
                    {"mean_kendall_tau_b", s.mean_kendall_tau}};
  return j.dump(2);
}

std::string stats_to_text(const Stats& s) {
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line, "tasks: %lld (done %lld, pending %lld); judgements: %lld\n",
                static_cast<long long>(s.tasks), static_cast<long long>(s.done_tasks),
                static_cast<long long>(s.pending_tasks), static_cast<long long>(s.judgements));
  out += line;
  std::snprintf(line, sizeof line, "%-24s %6s %8s %8s %6s %6s %10s\n", "annotator", "active",
                "judged", "rankings", "skips", "flags", "median s");
  out += line;
  for (const auto& a : s.annotators) {
    std::snprintf(line, sizeof line, "%-24s %6s %8lld %8lld %6lld %6lld %10.1f\n", a.name.c_str(),
                  a.active ? "yes" : "no", static_cast<long long>(a.submissions),
                  static_cast<long long>(a.rankings), static_cast<long long>(a.skips),
                  static_cast<long long>(a.flags), a.median_seconds);
    out += line;
  }
  std::snprintf(line, sizeof line,
                "agreement: %lld overlapping tasks, %lld answer pairs compared, pairwise "
                "agreement %.3f, mean Kendall tau-b %.3f (%lld annotator pairs)\n",
                static_cast<long long>(s.overlap_tasks),
                static_cast<long long>(s.compared_answer_pairs), s.pairwise_agreement,
                s.mean_kendall_tau, static_cast<long long>(s.tau_pairs));
  out += line;
  return out;
}

}  // namespace rlhf::annotation
