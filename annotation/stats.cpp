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

// Midrank (1-based position, ties sharing the mean of their positions) of each of n answers.
std::vector<double> midranks(const Groups& g, size_t n) {
  std::vector<double> r(n, 0.0);
  size_t before = 0;
  for (const auto& group : g) {
    const double mid = static_cast<double>(before) + (static_cast<double>(group.size()) + 1) / 2;
    for (int a : group)
      if (a >= 0 && static_cast<size_t>(a) < n) r[a] = mid;
    before += group.size();
  }
  return r;
}

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

bool krippendorff_alpha_ordinal(const std::vector<std::vector<double>>& units, double* alpha) {
  // The distinct values in order, and the coincidence matrix over them.
  std::vector<double> values;
  for (const auto& u : units)
    if (u.size() >= 2) values.insert(values.end(), u.begin(), u.end());
  std::sort(values.begin(), values.end());
  values.erase(std::unique(values.begin(), values.end()), values.end());
  const size_t V = values.size();
  if (V < 2) return false;
  auto index = [&](double v) {
    return static_cast<size_t>(std::lower_bound(values.begin(), values.end(), v) - values.begin());
  };
  std::vector<std::vector<double>> o(V, std::vector<double>(V, 0.0));
  for (const auto& u : units) {
    if (u.size() < 2) continue;
    const double w = 1.0 / static_cast<double>(u.size() - 1);
    for (size_t i = 0; i < u.size(); ++i)
      for (size_t j = 0; j < u.size(); ++j)
        if (i != j) o[index(u[i])][index(u[j])] += w;
  }
  std::vector<double> n_c(V, 0.0);
  double n = 0;
  for (size_t c = 0; c < V; ++c) {
    for (size_t k = 0; k < V; ++k) n_c[c] += o[c][k];
    n += n_c[c];
  }
  // Ordinal distance: (n_c/2 + n of the values strictly between + n_k/2)^2.
  auto delta = [&](size_t c, size_t k) {
    if (c > k) std::swap(c, k);
    double between = 0;
    for (size_t g = c; g <= k; ++g) between += n_c[g];
    const double d = between - (n_c[c] + n_c[k]) / 2.0;
    return d * d;
  };
  double observed = 0, expected = 0;
  for (size_t c = 0; c < V; ++c)
    for (size_t k = 0; k < V; ++k) {
      const double d = delta(c, k);
      observed += o[c][k] * d;
      expected += n_c[c] * n_c[k] * d;
    }
  if (expected <= 0) return false;
  *alpha = 1.0 - (n - 1.0) * observed / expected;
  return true;
}

Stats compute_stats(Store& store) {
  Stats s;
  sqlite3* db = store.db();
  {
    internal::Statement q(db,
                          "SELECT count(*), sum(done_count >= overlap), "
                          "sum(done_count < overlap AND q.task_id IS NULL) FROM tasks t "
                          "LEFT JOIN quarantined_tasks q ON q.task_id = t.id");
    q.step();
    s.tasks = q.int64(0);
    s.done_tasks = q.int64(1);
    s.pending_tasks = q.int64(2);
  }
  s.quarantined = store.quarantined_tasks();
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
  std::vector<std::vector<double>> alpha_units;  // one per answer of an overlapping task
  for (const auto& [task_id, rs] : by_task) {
    if (rs.size() < 2) continue;
    ++s.overlap_tasks;
    size_t n = 0;  // answers in the task (every ranking is a permutation of them)
    for (const auto& g : rs[0]->groups)
      for (int x : g) n = std::max(n, static_cast<size_t>(x) + 1);
    const size_t first_unit = alpha_units.size();
    alpha_units.resize(first_unit + n);
    for (const auto* r : rs) {
      const auto ranks = midranks(r->groups, n);
      for (size_t i = 0; i < n; ++i) alpha_units[first_unit + i].push_back(ranks[i]);
    }
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
  if (krippendorff_alpha_ordinal(alpha_units, &s.krippendorff_alpha))
    s.alpha_units = static_cast<int64_t>(alpha_units.size());
  return s;
}

std::string stats_to_json(const Stats& s) {
  nlohmann::json j;
  j["schema_version"] = 1;
  j["tasks"] = s.tasks;
  j["done_tasks"] = s.done_tasks;
  j["pending_tasks"] = s.pending_tasks;
  j["judgements"] = s.judgements;
  j["quarantined_tasks"] = nlohmann::json::array();
  for (const auto& q : s.quarantined)
    j["quarantined_tasks"].push_back({{"task_id", q.task_id}, {"reason", q.reason}});
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
                    {"mean_kendall_tau_b", s.mean_kendall_tau},
                    {"krippendorff_alpha_ordinal", s.krippendorff_alpha},
                    {"alpha_units", s.alpha_units}};
  return j.dump(2);
}

std::string stats_to_text(const Stats& s) {
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line, "tasks: %lld (done %lld, pending %lld); judgements: %lld\n",
                static_cast<long long>(s.tasks), static_cast<long long>(s.done_tasks),
                static_cast<long long>(s.pending_tasks), static_cast<long long>(s.judgements));
  out += line;
  for (const auto& q : s.quarantined)
    out += "quarantined (never leased): task " + std::to_string(q.task_id) + ": " + q.reason + "\n";
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
                "agreement %.3f, mean Kendall tau-b %.3f (%lld annotator pairs), "
                "Krippendorff's alpha (ordinal) %.3f (%lld answers)\n",
                static_cast<long long>(s.overlap_tasks),
                static_cast<long long>(s.compared_answer_pairs), s.pairwise_agreement,
                s.mean_kendall_tau, static_cast<long long>(s.tau_pairs), s.krippendorff_alpha,
                static_cast<long long>(s.alpha_units));
  out += line;
  return out;
}

}  // namespace rlhf::annotation
