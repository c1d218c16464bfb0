// `rlhf replay FILE`: show, recompute and check PPO rollout records (policy/ppo/ppo_replay.h).
#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>

#include "common/error.h"
#include "policy/ppo/ppo_replay.h"
#include "policy/ppo/ppo_trainer.h"
#include "policy/ppo/rollout_file.h"
#include "tools/cli.h"

namespace {

using rlhf::cli::Args;

std::optional<double> opt_double(const Args& a, const std::string& name) {
  if (!a.has(name)) return std::nullopt;
  return a.get_double(name);
}

int run_replay(const Args& a);

rlhf::cli::Register reg({
    "replay",
    "show / recompute / check saved PPO rollouts (iter-NNNN.pb or hand-made JSON lines)",
    "FILE [--sample I] [--json] [--sort score|-score] | FILE --recompute [--gamma G --lam L "
    "--kl-coef B] [--json] | FILE --policy DIR | FILE --update --run DIR [--json]",
    {
        {"sample", "only the sample with this index", ""},
        {"json", "machine-readable output: one JSON object per sample per line", "", true},
        {"sort", "order samples by teacher score: score (ascending) or -score (descending)", ""},
        {"min-score", "only samples with score >= this", ""},
        {"max-score", "only samples with score <= this", ""},
        {"recompute",
         "recompute kl, rewards, advantages, returns (unwhitened) from logprobs, ref_logprobs, "
         "values and score; report mismatches with stored values (exit 3 if any)",
         "", true},
        {"gamma", "discount for --recompute (default: the record's)", ""},
        {"lam", "GAE lambda for --recompute (default: the record's)", ""},
        {"kl-coef", "KL coefficient beta for --recompute (default: the record's)", ""},
        {"policy", "checkpoint folder: recompute log-probs and print max |diff| per sample", ""},
        {"device", "device for --policy / --update", "cpu"},
        {"update",
         "re-run this iteration's PPO update from the run's checkpoint before it; prints the "
         "per-minibatch stats (the lines of RUN/minibatches.jsonl)",
         "", true},
        {"run", "the PPO output folder (with checkpoints/) for --update", ""},
    },
    run_replay,
});

// --update: re-runs the iteration's PPO update and prints its per-minibatch stats.
int replay_update(const Args& a, const std::string& path, bool json) {
  if (!a.has("run")) throw rlhf::UsageError("replay --update needs --run DIR (the ppo folder)");
  auto mbs = rlhf::policy::PpoTrainer::replay_update(a.get("run"), path, a.get("device"));
  for (const auto& mb : mbs) {
    if (json) {
      nlohmann::json j;
      for (auto& kv : mb) {
        if (kv.first == "iteration" || kv.first == "epoch" || kv.first == "minibatch")
          j[kv.first] = static_cast<int64_t>(kv.second);
        else
          j[kv.first] = kv.second;
      }
      std::cout << j.dump() << "\n";
      continue;
    }
    auto g = [&](const char* k) { return mb.count(k) ? mb.at(k) : NAN; };
    std::printf(
        "iter %lld epoch %lld mb %lld  loss/policy %.6f  loss/value %.6f  clipfrac %.4f  "
        "approx_kl %.6f  ratio_mean %.6f  grad p %.4f v %.4f\n",
        (long long)g("iteration"), (long long)g("epoch"), (long long)g("minibatch"),
        g("loss/policy"), g("loss/value"), g("policy/clipfrac"), g("policy/approx_kl"),
        g("policy/ratio_mean"), g("grad_norm/policy"), g("grad_norm/value"));
    if (mb.count("policy/early_stopped"))
      std::printf("  target_kl: the epoch's mean approx_kl exceeded it; the update stopped here\n");
  }
  return 0;
}

// --policy DIR: recomputes the selected samples' log-probs with a checkpoint.
int replay_policy(const Args& a, const std::vector<const rlhf::proto::RolloutRecord*>& selected,
                  bool json) {
  std::vector<rlhf::proto::RolloutRecord> subset;
  for (auto* r : selected) subset.push_back(*r);
  double worst = 0;
  for (const auto& c : rlhf::policy::recompute_logprobs(subset, a.get("policy"), a.get("device"))) {
    worst = std::max(worst, c.max_abs_diff);
    if (json)
      std::cout << nlohmann::json{{"index", c.index}, {"max_abs_logprob_diff", c.max_abs_diff}}
                << "\n";
    else
      std::printf("sample %lld: max |logp diff| = %.3g\n", (long long)c.index, c.max_abs_diff);
  }
  if (!json) std::printf("max over %zu samples: %.3g\n", subset.size(), worst);
  return 0;
}

// --recompute: kl, rewards, advantages and returns from the stored inputs; exit 3 on mismatches.
int replay_recompute(const Args& a, const std::string& path,
                     const std::vector<rlhf::proto::RolloutRecord>& records,
                     const std::vector<const rlhf::proto::RolloutRecord*>& selected, bool json) {
  rlhf::policy::RecomputeParams p;
  p.gamma = opt_double(a, "gamma");
  p.lam = opt_double(a, "lam");
  p.kl_coef = opt_double(a, "kl-coef");
  int64_t compared = 0, differing = 0;
  double worst = 0;
  // Critic-free estimators: each group's advantage from all of the file's records.
  const auto seq_adv = rlhf::policy::group_sequence_advantages(records);
  for (auto* r : selected) {
    auto it = seq_adv.find(r->index());
    auto s = rlhf::policy::recompute_sample(
        *r, p, it == seq_adv.end() ? std::nullopt : std::optional<float>(it->second));
    if (s.compared) ++compared;
    if (s.mismatches > 0) ++differing;
    worst = std::max(worst, s.max_abs_diff);
    if (json) {
      nlohmann::json j{{"index", s.index},
                       {"kl", s.kl},
                       {"rewards", s.rewards},
                       {"advantages", s.advantages},
                       {"returns", s.returns}};
      if (s.sequence_advantage) j["sequence_advantage"] = *s.sequence_advantage;
      std::cout << j << "\n";
    } else if (s.compared) {
      std::printf("sample %lld: %s (max |diff| %.3g, %lld entries differ)\n", (long long)s.index,
                  s.mismatches ? "MISMATCH" : "matches", s.max_abs_diff, (long long)s.mismatches);
    } else {
      std::printf("sample %lld: recomputed (no stored values to compare)\n", (long long)s.index);
    }
  }
  if (!json)
    std::printf("%lld of %lld compared samples differ from the stored values (max |diff| %.3g)\n",
                (long long)differing, (long long)compared, worst);
  if (differing > 0) {
    std::fprintf(stderr, "replay --recompute: %lld samples differ from %s\n", (long long)differing,
                 path.c_str());
    return 3;
  }
  return 0;
}

int run_replay(const Args& a) {
  if (a.positional().size() != 1)
    throw rlhf::UsageError("replay: expected exactly one FILE argument");
  const std::string path = a.positional()[0];
  auto records = rlhf::policy::read_rollouts(path);
  rlhf::policy::ReplayViewOptions view;
  if (a.has("sample")) view.sample = a.get_int("sample");
  view.sort = a.get("sort");
  view.min_score = opt_double(a, "min-score");
  view.max_score = opt_double(a, "max-score");
  auto selected = rlhf::policy::select_samples(records, view);
  const bool json = a.get_bool("json");
  if (a.get_bool("update")) return replay_update(a, path, json);
  if (a.has("policy")) return replay_policy(a, selected, json);
  if (a.get_bool("recompute")) return replay_recompute(a, path, records, selected, json);
  for (auto* r : selected) {
    if (json)
      std::cout << rlhf::policy::rollout_to_json(*r) << "\n";
    else
      rlhf::policy::print_sample(std::cout, *r);
  }
  if (!json) std::printf("%zu of %zu samples shown\n", selected.size(), records.size());
  return 0;
}

}  // namespace
