#include "policy/ppo/ppo_replay.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ostream>

#include "common/error.h"
#include "policy/model/checkpoint.h"
#include "policy/model/logprobs.h"
#include "policy/ppo/ppo_math.h"
#include "policy/runtime/device.h"

namespace rlhf::policy {

namespace {
torch::Tensor row(const google::protobuf::RepeatedField<float>& f) {
  return torch::tensor(std::vector<float>(f.begin(), f.end()), torch::kFloat32)
      .reshape({1, f.size()});
}
std::vector<float> to_vec(const torch::Tensor& t) {
  auto c = t.reshape({-1}).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}
void compare(const google::protobuf::RepeatedField<float>& stored, const std::vector<float>& got,
             RecomputedSample* s) {
  if (stored.size() == 0) return;
  for (size_t i = 0; i < got.size(); ++i) {
    double d = std::fabs(static_cast<double>(stored[i]) - got[i]);
    if (!(stored[i] == got[i])) ++s->mismatches;
    if (std::isnan(d)) d = INFINITY;
    s->max_abs_diff = std::max(s->max_abs_diff, d);
  }
}
}  // namespace

std::map<int64_t, float> group_sequence_advantages(
    const std::vector<proto::RolloutRecord>& records) {
  std::map<int64_t, std::vector<const proto::RolloutRecord*>> groups;
  for (const auto& r : records) {
    const auto e = ppo::parse_estimator(r.advantage_estimator());
    if (!e)
      throw Error("sample " + std::to_string(r.index()) + ": unknown advantage_estimator '" +
                  r.advantage_estimator() + "'");
    if (*e != ppo::Estimator::kGae) groups[r.group()].push_back(&r);
  }
  std::map<int64_t, float> out;
  for (auto& [g, rs] : groups) {
    std::sort(rs.begin(), rs.end(), [](auto* a, auto* b) { return a->index() < b->index(); });
    const int64_t k = std::max(1, rs[0]->samples_per_prompt());
    if ((int64_t)rs.size() != k)
      throw Error("group " + std::to_string(g) + ": " + std::to_string(rs.size()) +
                  " records, expected samples_per_prompt = " + std::to_string(k) +
                  " (the group advantage needs every answer to the prompt)");
    std::vector<float> scores;
    for (auto* r : rs) scores.push_back(r->score());
    const auto adv =
        ppo::group_advantages(scores, k, *ppo::parse_estimator(rs[0]->advantage_estimator()));
    for (size_t i = 0; i < rs.size(); ++i) out[rs[i]->index()] = adv[i];
  }
  return out;
}

RecomputedSample recompute_sample(const proto::RolloutRecord& r, const RecomputeParams& p,
                                  std::optional<float> sequence_advantage) {
  const std::string where = "sample " + std::to_string(r.index());
  double gamma = p.gamma ? *p.gamma : r.gamma();
  double lam = p.lam ? *p.lam : r.lam();
  double kl_coef = p.kl_coef ? *p.kl_coef : r.kl_coef();
  if (!p.gamma && !p.lam && r.gamma() == 0 && r.lam() == 0)
    throw Error(where + ": the record stores no gamma/lam; pass --gamma G --lam L");
  const auto estimator = ppo::parse_estimator(r.advantage_estimator());
  if (!estimator)
    throw Error(where + ": unknown advantage_estimator '" + r.advantage_estimator() + "'");
  const bool critic_free = *estimator != ppo::Estimator::kGae;
  if (critic_free && !sequence_advantage)
    throw Error(where + ": advantage_estimator '" + r.advantage_estimator() +
                "' needs the sequence advantage of its group (group_sequence_advantages)");
  if (r.kl_in_loss()) kl_coef = 0;  // the KL was a loss term, not in the rewards
  torch::NoGradGuard no_grad;
  const int64_t n = r.response_ids_size();
  auto mask = torch::ones({1, n}, torch::kFloat32);
  auto kl = ppo::per_token_kl(row(r.logprobs()), row(r.ref_logprobs()), mask);
  RecomputedSample s;
  s.index = r.index();
  s.kl = to_vec(kl);
  if (critic_free) {
    auto seq = torch::tensor(std::vector<float>{*sequence_advantage}, torch::kFloat32);
    auto cf = ppo::critic_free_advantages(kl, seq, mask, kl_coef, gamma);
    s.rewards = to_vec(cf.rewards);
    s.advantages = to_vec(cf.advantages);
    s.returns = s.advantages;
    s.sequence_advantage = sequence_advantage;
    if (!(r.sequence_advantage() == *sequence_advantage)) {
      ++s.mismatches;
      s.max_abs_diff = std::fabs((double)r.sequence_advantage() - *sequence_advantage);
    }
  } else {
    auto score = torch::tensor(std::vector<float>{r.score()}, torch::kFloat32);
    auto rewards = n > 0 ? ppo::compute_rewards(kl, score, mask, kl_coef) : kl;
    auto gae = ppo::compute_gae(rewards, row(r.values()), mask, gamma, lam);
    s.rewards = to_vec(rewards);
    s.advantages = to_vec(gae.advantages);
    s.returns = to_vec(gae.returns);
  }
  s.compared = r.advantages_size() > 0;
  compare(r.kl(), s.kl, &s);
  compare(r.rewards(), s.rewards, &s);
  compare(r.advantages(), s.advantages, &s);
  compare(r.returns(), s.returns, &s);
  return s;
}

std::vector<const proto::RolloutRecord*> select_samples(
    const std::vector<proto::RolloutRecord>& records, const ReplayViewOptions& o) {
  std::vector<const proto::RolloutRecord*> out;
  for (const auto& r : records) {
    if (o.sample && r.index() != *o.sample) continue;
    if (o.min_score && r.score() < *o.min_score) continue;
    if (o.max_score && r.score() > *o.max_score) continue;
    out.push_back(&r);
  }
  if (o.sample && out.empty())
    throw Error("--sample " + std::to_string(*o.sample) + ": no record with that index (" +
                std::to_string(records.size()) + " records)");
  if (o.sort == "score" || o.sort == "-score") {
    bool desc = o.sort == "-score";
    std::stable_sort(out.begin(), out.end(), [desc](auto* a, auto* b) {
      return desc ? a->score() > b->score() : a->score() < b->score();
    });
  } else if (!o.sort.empty()) {
    throw Error("--sort: expected score or -score, got '" + o.sort + "'");
  }
  return out;
}

void print_sample(std::ostream& os, const proto::RolloutRecord& r) {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "== sample %lld (iteration %lld)  score %.4f (raw %.4f)  eos %s  length %d  "
                "kl_coef %.4g\n",
                (long long)r.index(), (long long)r.iteration(), r.score(), r.raw_score(),
                r.ended_with_eos() ? "yes" : "no", r.response_ids_size(), r.kl_coef());
  os << buf;
  if (!r.advantage_estimator().empty() && r.advantage_estimator() != "gae") {
    std::snprintf(buf, sizeof buf,
                  "estimator %s  group %lld of %d answers  sequence advantage %.4f%s\n",
                  r.advantage_estimator().c_str(), (long long)r.group(), r.samples_per_prompt(),
                  r.sequence_advantage(), r.kl_in_loss() ? "  (KL in the loss)" : "");
    os << buf;
  }
  auto ids = [](const auto& f) {
    std::string s;
    for (auto v : f) s += (s.empty() ? "" : " ") + std::to_string(v);
    return s;
  };
  os << "prompt:   "
     << (r.prompt_text().empty() ? "[" + ids(r.prompt_ids()) + "]" : r.prompt_text()) << "\n";
  os << "response: "
     << (r.response_text().empty() ? "[" + ids(r.response_ids()) + "]" : r.response_text()) << "\n";
  os << "     t    token       logp   ref_logp         kl      value     reward  advantage\n";
  auto at = [](const google::protobuf::RepeatedField<float>& f, int i) {
    return i < f.size() ? static_cast<double>(f[i]) : NAN;
  };
  for (int t = 0; t < r.response_ids_size(); ++t) {
    double kl = r.kl_size() ? at(r.kl(), t) : at(r.logprobs(), t) - at(r.ref_logprobs(), t);
    std::snprintf(buf, sizeof buf, "%6d %8lld %10.4f %10.4f %10.4f %10.4f %10.4f %10.4f\n", t,
                  (long long)r.response_ids(t), at(r.logprobs(), t), at(r.ref_logprobs(), t), kl,
                  at(r.values(), t), at(r.rewards(), t), at(r.advantages(), t));
    os << buf;
  }
}

std::vector<LogprobCheck> recompute_logprobs(const std::vector<proto::RolloutRecord>& records,
                                             const std::string& policy_dir,
                                             const std::string& device) {
  LoadedModel loaded;
  try {
    loaded = load_checkpoint(policy_dir);
  } catch (...) {
    rethrow_with_context("replay --policy " + policy_dir);
  }
  const torch::Device dev = resolve_device(device, "replay --device");
  auto& model = loaded.model;
  model->to(dev);
  model->eval();
  torch::NoGradGuard no_grad;
  std::vector<LogprobCheck> out;
  for (const auto& r : records) {
    LogprobCheck c;
    c.index = r.index();
    const int64_t P = r.prompt_ids_size(), N = r.response_ids_size();
    if (N == 0) {
      out.push_back(c);
      continue;
    }
    std::vector<int64_t> ids(r.prompt_ids().begin(), r.prompt_ids().end());
    ids.insert(ids.end(), r.response_ids().begin(), r.response_ids().end());
    auto t = torch::tensor(ids, torch::kLong).reshape({1, -1}).to(dev);
    LogprobOptions lo;
    lo.temperature = r.generation().temperature() > 0 ? r.generation().temperature() : 1.0f;
    auto lp = token_logprobs(model, t, torch::ones_like(t), lo).logprobs;  // [1, P+N-1]
    auto resp = lp.index({0, torch::indexing::Slice(P - 1, P - 1 + N)}).to(torch::kCPU);
    auto stored = torch::tensor(std::vector<float>(r.logprobs().begin(), r.logprobs().end()));
    c.max_abs_diff = (resp - stored).abs().max().item<double>();
    out.push_back(c);
  }
  return out;
}

}  // namespace rlhf::policy
