#include "reward/evaluation.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace rlhf::reward {

namespace {
// -log sigmoid(x), stable for large |x|.
double neg_log_sigmoid(double x) {
  return x >= 0 ? std::log1p(std::exp(-x)) : -x + std::log1p(std::exp(x));
}
}  // namespace

PairMetrics pair_metrics(const std::vector<float>& chosen, const std::vector<float>& rejected,
                         double margin) {
  if (chosen.size() != rejected.size())
    throw Error("pair_metrics: " + std::to_string(chosen.size()) + " chosen scores but " +
                std::to_string(rejected.size()) + " rejected scores");
  PairMetrics m;
  m.n = static_cast<int64_t>(chosen.size());
  if (m.n == 0) return m;
  constexpr int kBins = 10;
  double bin_conf[kBins] = {0}, bin_acc[kBins] = {0};
  int64_t bin_n[kBins] = {0};
  for (size_t i = 0; i < chosen.size(); ++i) {
    double d = static_cast<double>(chosen[i]) - static_cast<double>(rejected[i]);
    double correct = d > 0 ? 1.0 : (d == 0 ? 0.5 : 0.0);
    m.accuracy += correct;
    m.loss += neg_log_sigmoid(d - margin);
    m.mean_margin += d;
    double p = 1.0 / (1.0 + std::exp(-d));
    double conf = std::max(p, 1.0 - p);
    int b = std::min(kBins - 1, static_cast<int>(conf * kBins));
    bin_conf[b] += conf;
    bin_acc[b] += correct;
    ++bin_n[b];
  }
  double n = static_cast<double>(m.n);
  m.accuracy /= n;
  m.loss /= n;
  m.mean_margin /= n;
  for (int b = 0; b < kBins; ++b)
    if (bin_n[b] > 0) m.ece += std::fabs(bin_acc[b] - bin_conf[b]) / n;
  return m;
}

std::string to_json(const PairMetrics& m) {
  nlohmann::json j;
  j["accuracy"] = m.accuracy;
  j["n"] = m.n;
  j["loss"] = m.loss;
  j["mean_margin"] = m.mean_margin;
  j["ece"] = m.ece;
  return j.dump();
}

}  // namespace rlhf::reward
