// Pairwise evaluation of a reward model: accuracy, Bradley-Terry loss, mean margin and the
// expected calibration error of P(chosen > rejected) = sigmoid(r_chosen - r_rejected).
// Pure functions: safe from any thread. pair_metrics throws rlhf::Error when the two score lists
// differ in length.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rlhf::reward {

struct PairMetrics {
  int64_t n = 0;
  double accuracy = 0;     // share of pairs with r_chosen > r_rejected (an exact tie counts 1/2)
  double loss = 0;         // mean -log sigmoid(r_chosen - r_rejected - margin)
  double mean_margin = 0;  // mean r_chosen - r_rejected
  double ece = 0;          // expected calibration error, 10 equal-width confidence bins
};

// Metrics from paired scores (same length). ECE (Guo et al. 2017, "On Calibration of Modern
// Neural Networks"): each pair predicts the side with the higher score with confidence
// max(p, 1 - p), p = sigmoid(d); pairs are binned by confidence into 10 equal bins over [0, 1];
// ECE = sum_b |b|/n * |accuracy(b) - mean confidence(b)|.
PairMetrics pair_metrics(const std::vector<float>& chosen, const std::vector<float>& rejected,
                         double margin = 0.0);

// {"accuracy": .., "n": .., "loss": .., "mean_margin": .., "ece": ..} on one line.
std::string to_json(const PairMetrics& m);

}  // namespace rlhf::reward
