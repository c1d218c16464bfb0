#include "policy/ppo_trainer.h"

#include <google/protobuf/text_format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"
#include "common/metrics.h"
#include "common/text_config.h"
#include "policy/checkpoint.h"
#include "policy/generation.h"
#include "policy/logprobs.h"
#include "policy/lora.h"
#include "policy/lr_schedule.h"
#include "policy/ppo_math.h"
#include "policy/prompt_format.h"
#include "policy/rollout_file.h"

namespace rlhf::policy {

namespace fs = std::filesystem;
using torch::indexing::Slice;

// ---------------------------------------------------------------------------------------------
// Model copies

void copy_weights(Transformer& src, Transformer& dst) {
  torch::NoGradGuard no_grad;
  auto sp = src->named_parameters(true);
  for (auto& p : dst->named_parameters(true)) {
    auto* s = sp.find(p.key());
    TORCH_CHECK(s != nullptr, "copy_weights: source has no parameter ", p.key());
    p.value().copy_(*s);
  }
  auto sb = src->named_buffers(true);
  for (auto& b : dst->named_buffers(true)) {
    auto* s = sb.find(b.key());
    if (s) b.value().copy_(*s);
  }
}

Transformer clone_model(Transformer& model) {
  Transformer copy(model->config());
  auto device = model->parameters().empty() ? torch::Device(torch::kCPU)
                                            : model->parameters()[0].device();
  copy->to(device);
  copy_weights(model, copy);
  return copy;
}

// ---------------------------------------------------------------------------------------------
// Learning rate

double ppo_learning_rate(const proto::PpoConfig& c, double peak_lr, int64_t iteration) {
  const int64_t step = std::max<int64_t>(0, iteration - 1);
  const double min_lr = peak_lr * c.min_lr_ratio();
  const int64_t warmup = c.lr_warmup_iterations(), total = std::max(1, c.iterations());
  if (c.lr_schedule() == "cosine") return WarmupCosine{peak_lr, min_lr, warmup, total}.at(step);
  if (c.lr_schedule() == "linear") return WarmupLinear{peak_lr, min_lr, warmup, total}.at(step);
  if (c.lr_schedule() == "constant")  // the warm-up still applies
    return WarmupLinear{peak_lr, peak_lr, warmup, total}.at(step);
  throw Error("PpoConfig.lr_schedule: \"" + c.lr_schedule() +
              "\" is not one of \"cosine\", \"linear\", \"constant\"");
}

// ---------------------------------------------------------------------------------------------
// Trainer

namespace {

std::string iter_name(int64_t it) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "iter-%04lld", static_cast<long long>(it));
  return buf;
}

uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b = 0) {
  // splitmix64 over the combination: distinct, reproducible streams per (seed, iteration, epoch).
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (a + 1) + 0xBF58476D1CE4E5B9ull * (b + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::vector<int64_t> permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> p(n);
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  std::mt19937_64 rng(seed);
  for (int64_t i = n - 1; i > 0; --i) {  // Fisher-Yates with our own draws: same on every libstdc++
    int64_t j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
    std::swap(p[i], p[j]);
  }
  return p;
}

bool finite(double x) { return std::isfinite(x); }

// One rollout batch as the update sees it: [B, P + N] ids/mask (prompts left-padded, responses
// right-padded), [B, N] response mask, old log-probs, values, advantages as used (whitened when
// configured) and returns.
struct UpdateBatch {
  torch::Tensor ids, full_mask, rmask, old_logp, values, adv_train, returns;
  int64_t P = 0, N = 0, B = 0;
};

struct UpdateTotals {
  double sum_pl = 0, sum_clip = 0, sum_akl = 0, sum_ratio = 0, sum_vl = 0, sum_vclip = 0;
  int64_t n_pol = 0, n_val = 0, train_tokens = 0;
  double ratio_first_dev = 0;
  int64_t minibatches = 0;     // minibatches run (fewer than epochs x batches after an early stop)
  bool early_stopped = false;  // target_kl stopped the epochs
  double policy_lr = 0, value_lr = 0;  // the lr of this iteration (ppo_learning_rate)
};

using MinibatchFn = std::function<void(const std::map<std::string, double>&)>;

std::string minibatch_json(const std::map<std::string, double>& mb) {
  nlohmann::json j;
  for (auto& kv : mb) {
    if (kv.first == "iteration" || kv.first == "epoch" || kv.first == "minibatch")
      j[kv.first] = (int64_t)kv.second;
    else
      j[kv.first] = kv.second;
  }
  return j.dump();
}

}  // namespace

struct PpoTrainer::Impl {
  proto::PpoConfig cfg;
  PpoModels m;
  TeacherFn teacher;
  DecodeFn decode;
  ExtraStatsFn extra_stats;
  std::vector<std::vector<int64_t>> prompts;  // in the fixed shuffled order
  std::string out_dir;
  torch::Device device{torch::kCPU};
  std::unique_ptr<torch::optim::AdamW> policy_opt, critic_opt;
  std::unique_ptr<ppo::KLController> kl_ctl;
  double score_count = 0, score_mean = 0, score_m2 = 0;  // Welford moments of shaped scores
  std::unique_ptr<MetricsWriter> metrics;
  std::string last_checkpoint;
  // LoRA (cfg.lora.rank > 0): adapters on the policy, whose base weights stay frozen; the policy
  // optimizer holds policy_params: the adapters with LoRA, else all policy parameters.
  std::unique_ptr<LoraAdapters> lora;
  std::vector<torch::Tensor> policy_params;

  void attach_lora() {
    if (cfg.has_lora() && cfg.lora().rank() > 0) {
      lora = std::make_unique<LoraAdapters>(m.policy, LoraOptions::from_proto(cfg.lora()));
      policy_params = lora->parameters();
    } else {
      policy_params = m.policy->parameters();
    }
  }

  std::string ckpt_root() const { return out_dir + "/checkpoints"; }

  // ppo_epochs epochs of shuffled minibatches on one rollout batch (the live loop and
  // `replay --update` share it, so both give the same numbers).
  UpdateTotals update(const UpdateBatch& batch, int64_t iteration, const LogprobOptions& lo,
                      const MinibatchFn& on_minibatch);
};

UpdateTotals PpoTrainer::Impl::update(const UpdateBatch& u, int64_t it, const LogprobOptions& lo,
                                      const MinibatchFn& on_minibatch) {
  auto& I = *this;
  const auto& c = cfg;
  const std::string at = "ppo iteration " + std::to_string(it);
  const int64_t B = u.B, P = u.P, N = u.N;
  const auto &ids = u.ids, &full_mask = u.full_mask, &rmask = u.rmask, &old_logp = u.old_logp,
             &values = u.values, &adv_train = u.adv_train, &returns = u.returns;
  const bool train_policy = it > c.critic_warmup_iterations();
  const int64_t MB = c.minibatch_size();
  double sum_pl = 0, sum_clip = 0, sum_akl = 0, sum_ratio = 0, sum_vl = 0, sum_vclip = 0;
  int64_t n_pol = 0, n_val = 0, train_tokens = 0;
  double ratio_first_dev = 0;
  const double grad_cap = c.max_grad_norm() > 0 ? c.max_grad_norm() : 1e30;
  // The lr of this iteration: a function of `it` only, so replay and resume set the same one.
  const double policy_lr = ppo_learning_rate(c, c.policy_lr(), it);
  const double value_lr = ppo_learning_rate(c, c.value_lr(), it);
  for (auto& g : I.policy_opt->param_groups())
    static_cast<torch::optim::AdamWOptions&>(g.options()).lr(policy_lr);
  for (auto& g : I.critic_opt->param_groups())
    static_cast<torch::optim::AdamWOptions&>(g.options()).lr(value_lr);
  int64_t minibatches = 0;
  bool stop = false;  // target_kl early stop
  for (int epoch = 0; epoch < c.ppo_epochs() && !stop; ++epoch) {
    auto perm = permutation(B, mix_seed(c.seed(), (uint64_t)it, (uint64_t)epoch + 1));
    double epoch_akl = 0;  // running sum of approx_kl over this epoch's policy minibatches
    int64_t epoch_pol = 0;
    for (int64_t s = 0; s < B && !stop; s += MB) {
      int64_t e = std::min(B, s + MB);
      auto idx = torch::tensor(std::vector<int64_t>(perm.begin() + s, perm.begin() + e), torch::kLong)
                     .to(I.device);
      auto ids_mb = ids.index_select(0, idx);
      auto mask_mb = full_mask.index_select(0, idx);
      auto rmask_mb = rmask.index_select(0, idx);
      const bool first = epoch == 0 && s == 0;
      std::map<std::string, double> mb{{"iteration", (double)it}, {"epoch", (double)epoch},
                                       {"minibatch", (double)(s / MB)}};
      train_tokens += (e - s) * (P + N);

      if (train_policy || first) {
        I.m.policy->train();
        if (I.lora) I.lora->refresh(train_policy);  // a fresh graph through the adapters
        std::unique_ptr<torch::NoGradGuard> ng;
        if (!train_policy) ng = std::make_unique<torch::NoGradGuard>();
        LogprobOptions tlo = lo;
        tlo.entropy = c.entropy_coef() > 0;
        auto tl = token_logprobs(I.m.policy, ids_mb, mask_mb, tlo);
        auto new_lp = tl.logprobs.narrow(1, P - 1, N);
        auto pl = ppo::clipped_policy_loss(new_lp, old_logp.index_select(0, idx),
                                           adv_train.index_select(0, idx), rmask_mb, c.clip_range());
        // The policy has not moved before the first minibatch: the ratio must be 1.
        if (first) ratio_first_dev = pl.ratio_max_dev;
        if (train_policy) {
          mb["loss/policy"] = pl.loss.item<double>();
          mb["policy/clipfrac"] = pl.clipfrac;
          mb["policy/approx_kl"] = pl.approx_kl;
          mb["policy/ratio_mean"] = pl.ratio_mean;
          mb["policy/ratio_max_dev"] = pl.ratio_max_dev;
          auto loss = pl.loss;
          if (c.entropy_coef() > 0)
            loss = loss - c.entropy_coef() * ppo::masked_mean(tl.entropy.narrow(1, P - 1, N), rmask_mb);
          const double lv = loss.item<double>();
          if (!finite(lv))
            throw Error(at + ": loss/policy is non-finite (" + std::to_string(lv) +
                        "); stopped, last good checkpoint: " +
                        (I.last_checkpoint.empty() ? "none" : I.last_checkpoint));
          I.policy_opt->zero_grad();
          loss.backward();
          double gn = torch::nn::utils::clip_grad_norm_(I.policy_params, grad_cap);
          if (!finite(gn))
            throw Error(at + ": policy gradient norm is non-finite; stopped, last good checkpoint: " +
                        (I.last_checkpoint.empty() ? "none" : I.last_checkpoint));
          mb["grad_norm/policy"] = gn;
          I.policy_opt->step();
          sum_pl += pl.loss.item<double>();
          sum_clip += pl.clipfrac;
          sum_akl += pl.approx_kl;
          sum_ratio += pl.ratio_mean;
          ++n_pol;
          epoch_akl += pl.approx_kl;
          ++epoch_pol;
        }
      }

      I.m.critic->train();
      auto h = I.m.critic->hidden_states(ids_mb, mask_mb);
      auto v = I.m.critic->values_from_hidden(h.narrow(1, P - 1, N)).to(torch::kFloat);
      auto vl = ppo::clipped_value_loss(v, values.index_select(0, idx),
                                        returns.index_select(0, idx), rmask_mb,
                                        c.value_clip_range());
      const double vlv = vl.loss.item<double>();
      if (!finite(vlv))
        throw Error(at + ": loss/value is non-finite (" + std::to_string(vlv) +
                    "); stopped, last good checkpoint: " +
                    (I.last_checkpoint.empty() ? "none" : I.last_checkpoint));
      I.critic_opt->zero_grad();
      vl.loss.backward();
      double gn = torch::nn::utils::clip_grad_norm_(I.m.critic->parameters(), grad_cap);
      if (!finite(gn))
        throw Error(at + ": critic gradient norm is non-finite; stopped, last good checkpoint: " +
                    (I.last_checkpoint.empty() ? "none" : I.last_checkpoint));
      mb["loss/value"] = vlv;
      mb["value/clipfrac"] = vl.clipfrac;
      mb["grad_norm/value"] = gn;
      I.critic_opt->step();
      ++minibatches;
      const bool last = epoch + 1 == c.ppo_epochs() && e == B;  // nothing left to skip
      if (c.target_kl() > 0 && !last && epoch_pol > 0 && epoch_akl / epoch_pol > c.target_kl()) {
        stop = true;  // skip the rest of this iteration's minibatches and epochs (SB3/CleanRL)
        mb["policy/early_stopped"] = 1;
      }
      if (on_minibatch) on_minibatch(mb);
      sum_vl += vlv;
      sum_vclip += vl.clipfrac;
      ++n_val;
    }
  }
  I.m.policy->eval();
  I.m.critic->eval();
  if (I.lora) I.lora->refresh(false);  // the weights after the last optimizer step

  return {sum_pl, sum_clip, sum_akl, sum_ratio, sum_vl, sum_vclip, n_pol, n_val, train_tokens,
          ratio_first_dev, minibatches, stop, policy_lr, value_lr};
}

PpoTrainer::PpoTrainer(const proto::PpoConfig& config, PpoModels models, TeacherFn teacher,
                       std::vector<std::vector<int64_t>> prompts, std::string out_dir,
                       DecodeFn decode)
    : impl_(std::make_unique<Impl>()) {
  validate_ppo_config(config);
  auto& I = *impl_;
  I.cfg = config;
  I.m = std::move(models);
  I.teacher = std::move(teacher);
  I.decode = std::move(decode);
  I.out_dir = std::move(out_dir);
  I.device = torch::Device(config.device());
  if (!I.m.policy || !I.m.reference || !I.m.critic)
    throw Error("ppo: policy, reference and critic models are all required");
  if (!I.m.critic->config().value_head) I.m.critic->add_value_head();
  if (I.m.policy->config().vocab_size != I.m.reference->config().vocab_size)
    throw Error("ppo: policy vocab_size " + std::to_string(I.m.policy->config().vocab_size) +
                " differs from the reference's " +
                std::to_string(I.m.reference->config().vocab_size));
  if (prompts.empty()) throw Error("ppo: no prompts");
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) throw Error("ppo: prompt " + std::to_string(i) + " has no tokens");
    // Long prompts keep their end, and their BOS: [bos] + the last max_prompt_tokens - 1 tokens.
    prompts[i] = truncate_prompt(std::move(prompts[i]), config.max_prompt_tokens(),
                                 I.m.policy->config().bos_id);
  }
  for (auto i : permutation((int64_t)prompts.size(), mix_seed(config.seed(), 0x5eed)))
    I.prompts.push_back(prompts[i]);

  I.m.policy->to(I.device);
  I.m.reference->to(I.device);
  I.m.critic->to(I.device);
  I.m.reference->eval();
  for (auto& p : I.m.reference->parameters()) p.set_requires_grad(false);
  I.attach_lora();

  // N implementation details #3: Adam epsilon 1e-5; TRL/OpenRLHF: no weight decay by default.
  auto opts = [&](double lr) {
    return torch::optim::AdamWOptions(lr).eps(config.adam_eps()).weight_decay(config.weight_decay());
  };
  I.policy_opt = std::make_unique<torch::optim::AdamW>(I.policy_params, opts(config.policy_lr()));
  I.critic_opt = std::make_unique<torch::optim::AdamW>(I.m.critic->parameters(), opts(config.value_lr()));
  if (config.adaptive_kl())
    I.kl_ctl = std::make_unique<ppo::AdaptiveKLController>(config.kl_coef(), config.kl_target(),
                                                           config.kl_horizon());
  else
    I.kl_ctl = std::make_unique<ppo::FixedKLController>(config.kl_coef());

  make_dirs(I.out_dir + "/rollouts");
  // Resume from the newest complete checkpoint.
  const std::string latest = I.ckpt_root() + "/latest";
  if (file_exists(latest)) {
    std::string name = read_file(latest);
    while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
    const std::string dir = I.ckpt_root() + "/" + name;
    try {
      proto::PpoState st;
      if (!st.ParseFromString(read_file(dir + "/state.pb")))
        throw Error(dir + "/state.pb: cannot parse PpoState");
      torch::load(I.m.policy, dir + "/policy.pt", I.device);
      if (I.lora) I.lora->load(dir + "/adapter");
      torch::load(I.m.critic, dir + "/critic.pt", I.device);
      torch::load(*I.policy_opt, dir + "/policy_optimizer.pt", I.device);
      torch::load(*I.critic_opt, dir + "/critic_optimizer.pt", I.device);
      completed_ = st.iteration();
      I.kl_ctl->set_value(st.kl_coef());
      I.score_count = st.score_count();
      I.score_mean = st.score_mean();
      I.score_m2 = st.score_m2();
      I.last_checkpoint = dir;
    } catch (const c10::Error& e) {
      throw Error("ppo: resuming from " + dir + ": " + e.what_without_backtrace());
    } catch (...) {
      rethrow_with_context("ppo: resuming from " + dir);
    }
    std::fprintf(stderr, "ppo: resuming from %s (iteration %lld done, kl_coef %.5g)\n",
                 dir.c_str(), (long long)completed_, I.kl_ctl->value());
  }
  if (completed_ > 0) {
    // Lines of iterations after the checkpoint (run before an interruption) are re-run: drop them.
    auto prune = [&](const std::string& path, const char* key) {
      if (!file_exists(path)) return;
      std::ifstream in(path);
      std::string line, kept;
      while (std::getline(in, line)) {
        auto j = nlohmann::json::parse(line, nullptr, false);
        if (j.is_object() && j.contains(key) && j[key].is_number() &&
            j[key].get<int64_t>() > completed_)
          continue;
        kept += line + "\n";
      }
      write_file_atomic(path, kept);
    };
    prune(I.out_dir + "/metrics.jsonl", "step");
    prune(I.out_dir + "/minibatches.jsonl", "iteration");
  }
  I.metrics = std::make_unique<MetricsWriter>(I.out_dir, /*append=*/completed_ > 0);
}

PpoTrainer::~PpoTrainer() = default;

void PpoTrainer::set_extra_stats(ExtraStatsFn fn) { impl_->extra_stats = std::move(fn); }

double PpoTrainer::kl_coef() const { return impl_->kl_ctl->value(); }
std::string PpoTrainer::checkpoint_dir() const { return impl_->last_checkpoint; }

void PpoTrainer::run() {
  // The start state, so that `replay --update` can re-run iteration 1 too.
  if (completed_ == 0 && impl_->cfg.checkpoint_every() > 0 && impl_->last_checkpoint.empty())
    save_checkpoint_now();
  while (completed_ < impl_->cfg.iterations()) {
    step();
    const int every = impl_->cfg.checkpoint_every();
    if (every > 0 && completed_ % every == 0) save_checkpoint_now();
  }
  if (impl_->last_checkpoint.empty() || impl_->last_checkpoint.find(iter_name(completed_)) ==
                                            std::string::npos)
    save_checkpoint_now();
  if (impl_->lora) {
    // The caller's policy becomes the merged plain model (what the stage saves as <out>/model).
    impl_->lora->merge();
    impl_->lora.reset();
    impl_->policy_params.clear();
  }
}

void PpoTrainer::save_checkpoint_now() {
  auto& I = *impl_;
  const std::string root = I.ckpt_root();
  make_dirs(root);
  const std::string name = iter_name(completed_);
  const std::string tmp = root + "/.tmp-" + name;
  const std::string dir = root + "/" + name;
  fs::remove_all(tmp);
  make_dirs(tmp);
  try {
    torch::save(I.m.policy, tmp + "/policy.pt");  // with LoRA: the frozen base weights
    if (I.lora) I.lora->save(tmp + "/adapter");
    torch::save(I.m.critic, tmp + "/critic.pt");
    torch::save(*I.policy_opt, tmp + "/policy_optimizer.pt");
    torch::save(*I.critic_opt, tmp + "/critic_optimizer.pt");
    CheckpointInfo info;
    info.kind = "policy";
    info.created_by = "ppo";
    info.step = completed_;
    save_checkpoint(I.m.policy, tmp + "/policy", info);
    info.kind = "critic";
    save_checkpoint(I.m.critic, tmp + "/critic", info);
  } catch (const c10::Error& e) {
    throw Error("ppo: writing checkpoint " + tmp + ": " + e.what_without_backtrace());
  }
  proto::PpoState st;
  st.set_iteration(completed_);
  st.set_kl_coef(I.kl_ctl->value());
  st.set_score_count(I.score_count);
  st.set_score_mean(I.score_mean);
  st.set_score_m2(I.score_m2);
  std::string cfg_text;
  google::protobuf::TextFormat::PrintToString(I.cfg, &cfg_text);
  st.set_config_text(cfg_text);
  write_file_atomic(tmp + "/state.pb", st.SerializeAsString());
  fs::remove_all(dir);
  rename_atomic(tmp, dir);
  write_file_atomic(root + "/latest", name + "\n");  // the switch to the new checkpoint
  std::vector<std::string> dirs;  // retention: the newest keep_checkpoints folders
  for (auto& e : fs::directory_iterator(root)) {
    auto n = e.path().filename().string();
    if (e.is_directory() && n.rfind("iter-", 0) == 0 && n <= name) dirs.push_back(e.path().string());
  }
  std::sort(dirs.begin(), dirs.end());
  const size_t keep = std::max(1, I.cfg.keep_checkpoints());
  for (size_t i = 0; i + keep < dirs.size(); ++i) fs::remove_all(dirs[i]);
  I.last_checkpoint = dir;
}

std::vector<std::map<std::string, double>> PpoTrainer::replay_update(const std::string& run_dir,
                                                                     const std::string& rollout_file,
                                                                     const std::string& device) {
  auto recs = read_rollouts(rollout_file);
  if (recs.empty()) throw Error(rollout_file + ": no rollout records");
  std::sort(recs.begin(), recs.end(), [](auto& a, auto& b) { return a.index() < b.index(); });
  const int64_t it = recs[0].iteration();
  for (const auto& r : recs)
    if (r.iteration() != it)
      throw Error(rollout_file + ": records of iterations " + std::to_string(it) + " and " +
                  std::to_string(r.iteration()) + " are mixed");
  const std::string ck = run_dir + "/checkpoints/" + iter_name(it - 1);
  if (!file_exists(ck + "/state.pb"))
    throw Error("replay --update: " + ck + " does not exist: iteration " + std::to_string(it) +
                " needs the checkpoint written after iteration " + std::to_string(it - 1) +
                " (run with checkpoint_every: 1 and keep_checkpoints large enough)");
  proto::PpoState st;
  if (!st.ParseFromString(read_file(ck + "/state.pb"))) throw Error(ck + "/state.pb: cannot parse");
  Impl I;
  parse_text_config(st.config_text(), ck + "/state.pb config_text", &I.cfg);
  if (!device.empty()) I.cfg.set_device(device);
  const auto& c = I.cfg;
  I.device = torch::Device(c.device());
  I.out_dir = run_dir;
  I.last_checkpoint = ck;
  try {
    I.m.policy = load_checkpoint(ck + "/policy").model;
    I.m.critic = load_checkpoint(ck + "/critic").model;
    I.m.policy->to(I.device);
    I.m.critic->to(I.device);
    torch::load(I.m.policy, ck + "/policy.pt", I.device);
    torch::load(I.m.critic, ck + "/critic.pt", I.device);
    I.attach_lora();
    if (I.lora) I.lora->load(ck + "/adapter");
    auto opts = [&](double lr) {
      return torch::optim::AdamWOptions(lr).eps(c.adam_eps()).weight_decay(c.weight_decay());
    };
    I.policy_opt = std::make_unique<torch::optim::AdamW>(I.policy_params, opts(c.policy_lr()));
    I.critic_opt = std::make_unique<torch::optim::AdamW>(I.m.critic->parameters(), opts(c.value_lr()));
    torch::load(*I.policy_opt, ck + "/policy_optimizer.pt", I.device);
    torch::load(*I.critic_opt, ck + "/critic_optimizer.pt", I.device);
  } catch (const c10::Error& e) {
    throw Error("replay --update: loading " + ck + ": " + e.what_without_backtrace());
  }
  // Rebuild the padded batch exactly as the live iteration had it.
  const int64_t B = (int64_t)recs.size();
  int64_t P = 0, N = 0;
  for (const auto& r : recs) {
    P = std::max<int64_t>(P, r.prompt_ids_size());
    N = std::max<int64_t>(N, r.response_ids_size());
  }
  if (P == 0 || N == 0) throw Error(rollout_file + ": empty prompts or responses");
  const int64_t pad = I.m.policy->config().pad_id;
  auto ids = torch::full({B, P + N}, pad, torch::kLong);
  auto full_mask = torch::zeros({B, P + N});
  auto old_logp = torch::zeros({B, N}), values = torch::zeros({B, N}), adv = torch::zeros({B, N}),
       returns = torch::zeros({B, N});
  for (int64_t b = 0; b < B; ++b) {
    const auto& r = recs[b];
    const int64_t p = r.prompt_ids_size(), n = r.response_ids_size();
    if (r.advantages_size() != n || r.returns_size() != n)
      throw Error(rollout_file + ": record " + std::to_string(b) + " has no stored advantages/returns");
    for (int64_t t = 0; t < p; ++t) {
      ids[b][P - p + t] = r.prompt_ids(t);
      full_mask[b][P - p + t] = 1;
    }
    for (int64_t t = 0; t < n; ++t) {
      ids[b][P + t] = r.response_ids(t);
      full_mask[b][P + t] = 1;
      old_logp[b][t] = r.logprobs(t);
      values[b][t] = r.values(t);
      adv[b][t] = r.advantages(t);
      returns[b][t] = r.returns(t);
    }
  }
  auto rmask = full_mask.narrow(1, P, N).contiguous();
  auto dev = [&](const torch::Tensor& t) { return t.to(I.device); };
  auto adv_train = c.whiten_advantages() ? ppo::whiten(adv, rmask) : adv;
  UpdateBatch ub{dev(ids), dev(full_mask), dev(rmask), dev(old_logp), dev(values), dev(adv_train),
                 dev(returns), P, N, B};
  LogprobOptions lo;
  lo.temperature = c.temperature() > 0 ? c.temperature() : 1.0f;
  std::vector<std::map<std::string, double>> out;
  I.update(ub, it, lo, [&](const std::map<std::string, double>& mb) { out.push_back(mb); });
  return out;
}

std::map<std::string, double> PpoTrainer::step() {
  auto& I = *impl_;
  const auto& c = I.cfg;
  const int64_t it = completed_ + 1;
  const std::string at = "ppo iteration " + std::to_string(it);
  const int64_t B = c.batch_size();
  std::map<std::string, double> stats;
  auto t_start = std::chrono::steady_clock::now();

  // 1. prompts of this iteration.
  std::vector<std::vector<int64_t>> batch_prompts;
  for (int64_t j = 0; j < B; ++j)
    batch_prompts.push_back(I.prompts[((it - 1) * B + j) % (int64_t)I.prompts.size()]);

  // 2. generate.
  SamplingOptions so;
  so.max_new_tokens = c.max_new_tokens();
  so.temperature = c.temperature();
  so.top_k = c.top_k();
  so.top_p = c.top_p();
  so.seed = mix_seed(c.seed(), (uint64_t)it, 0x9e4);
  I.m.policy->eval();
  if (I.lora) I.lora->refresh(false);
  GenerationOutput gen = generate(I.m.policy, batch_prompts, so);
  const int64_t eos_id = I.m.policy->config().eos_id;
  const int64_t P = gen.prompt_ids.size(1);
  const int64_t N = gen.response_ids.size(1);
  if (N == 0) throw Error(at + ": generation produced no tokens");
  auto ids = torch::cat({gen.prompt_ids, gen.response_ids}, 1).to(torch::kLong).to(I.device);
  auto full_mask = torch::cat({gen.prompt_mask.to(torch::kFloat), gen.response_mask.to(torch::kFloat)}, 1)
                       .to(I.device);
  auto rmask = gen.response_mask.to(torch::kFloat).to(I.device);  // [B, N]
  std::vector<int64_t> lengths(B);
  std::vector<bool> has_eos(B);
  for (int64_t b = 0; b < B; ++b) {
    lengths[b] = (int64_t)gen.responses[b].size();
    has_eos[b] = lengths[b] > 0 && gen.responses[b].back() == eos_id;
  }

  // 3. teacher scores and shaping.
  std::vector<float> raw = I.teacher(batch_prompts, gen.responses);
  if ((int64_t)raw.size() != B)
    throw Error(at + ": teacher returned " + std::to_string(raw.size()) + " scores for " +
                std::to_string(B) + " samples");
  for (int64_t b = 0; b < B; ++b)
    if (!finite(raw[b]))
      throw Error(at + ": teacher score of sample " + std::to_string(b) + " is " +
                  std::to_string(raw[b]) + " (non-finite); stopped, last good checkpoint: " +
                  (I.last_checkpoint.empty() ? "none" : I.last_checkpoint));
  std::vector<double> shaped(B);
  for (int64_t b = 0; b < B; ++b) {
    double s = raw[b];
    if (!has_eos[b]) s -= c.missing_eos_penalty();  // TRL missing_eos_penalty
    if (lengths[b] < c.min_new_tokens()) s -= c.short_response_penalty();
    shaped[b] = s;
  }
  if (c.normalize_scores()) {
    // Running mean/std over all scores seen so far (OpenRLHF normalize_reward), batch included.
    for (double s : shaped) {
      I.score_count += 1;
      double d = s - I.score_mean;
      I.score_mean += d / I.score_count;
      I.score_m2 += d * (s - I.score_mean);
    }
    double var = I.score_count > 1 ? I.score_m2 / (I.score_count - 1) : 1.0;
    double sd = std::sqrt(std::max(var, 1e-8));
    for (auto& s : shaped) s = (s - I.score_mean) / sd;
  }
  if (c.score_clip() > 0)
    for (auto& s : shaped) s = std::clamp(s, -c.score_clip(), c.score_clip());
  std::vector<float> shaped_f(shaped.begin(), shaped.end());
  auto scores = torch::tensor(shaped_f, torch::kFloat).to(I.device);

  // 4. log-probs, entropy, values under teacher forcing (no grad).
  LogprobOptions lo;
  lo.temperature = c.temperature() > 0 ? c.temperature() : 1.0f;
  torch::Tensor old_logp, ref_logp, values, entropy;
  {
    torch::NoGradGuard no_grad;
    lo.entropy = true;
    auto pol = token_logprobs(I.m.policy, ids, full_mask, lo);
    old_logp = pol.logprobs.narrow(1, P - 1, N) * rmask;
    entropy = pol.entropy.narrow(1, P - 1, N);
    lo.entropy = false;
    ref_logp = token_logprobs(I.m.reference, ids, full_mask, lo).logprobs.narrow(1, P - 1, N) * rmask;
    I.m.critic->eval();
    auto h = I.m.critic->hidden_states(ids, full_mask);
    values = I.m.critic->values_from_hidden(h.narrow(1, P - 1, N)).to(torch::kFloat) * rmask;
  }
  const double gen_dev =
      ((gen.response_logprobs.to(I.device).to(torch::kFloat) - old_logp).abs() * rmask).max().item<double>();

  // 5. KL, rewards, GAE (unwhitened; whitening below is for the update only).
  const double beta = I.kl_ctl->value();
  auto kl = ppo::per_token_kl(old_logp, ref_logp, rmask);
  auto rewards = ppo::compute_rewards(kl, scores, rmask, beta);
  if (c.whiten_rewards()) rewards = ppo::whiten(rewards, rmask, /*shift_mean=*/false);
  auto gae = ppo::compute_gae(rewards, values, rmask, c.gamma(), c.lam());
  auto adv_train = c.whiten_advantages() ? ppo::whiten(gae.advantages, rmask) : gae.advantages;
  auto kl_seq = kl.sum(1);  // per-sequence KL sum (Ziegler et al.)
  const double kl_mean = kl_seq.mean().item<double>();
  if (!finite(kl_mean)) throw Error(at + ": kl/mean is non-finite");

  // Rollout records.
  {
    auto cpu = [](const torch::Tensor& t) { return t.to(torch::kCPU).contiguous(); };
    auto lp_c = cpu(old_logp), ref_c = cpu(ref_logp), v_c = cpu(values), kl_c = cpu(kl),
         r_c = cpu(rewards), a_c = cpu(gae.advantages), ret_c = cpu(gae.returns);
    std::vector<proto::RolloutRecord> recs;
    for (int64_t b = 0; b < B; ++b) {
      proto::RolloutRecord r;
      r.set_schema_version(1);
      r.set_iteration(it);
      r.set_index(b);
      for (auto id : batch_prompts[b]) r.add_prompt_ids(id);
      for (auto id : gen.responses[b]) r.add_response_ids(id);
      if (I.decode) {
        r.set_prompt_text(I.decode(batch_prompts[b]));
        r.set_response_text(I.decode(gen.responses[b]));
      }
      auto put = [&](const torch::Tensor& t, google::protobuf::RepeatedField<float>* f) {
        const float* p = t.data_ptr<float>() + b * N;
        f->Add(p, p + lengths[b]);
      };
      put(lp_c, r.mutable_logprobs());
      put(ref_c, r.mutable_ref_logprobs());
      put(v_c, r.mutable_values());
      put(kl_c, r.mutable_kl());
      put(r_c, r.mutable_rewards());
      put(a_c, r.mutable_advantages());
      put(ret_c, r.mutable_returns());
      r.set_score(shaped_f[b]);
      r.set_raw_score(raw[b]);
      r.set_ended_with_eos(has_eos[b]);
      r.set_kl_coef(beta);
      r.set_gamma(c.gamma());
      r.set_lam(c.lam());
      auto* g = r.mutable_generation();
      g->set_temperature(c.temperature());
      g->set_top_k(c.top_k());
      g->set_top_p(c.top_p());
      g->set_max_new_tokens(c.max_new_tokens());
      g->set_eos_id(eos_id);
      g->set_seed(so.seed);
      recs.push_back(std::move(r));
    }
    const std::string dir = I.out_dir + "/rollouts";
    write_rollouts(dir + "/" + iter_name(it) + ".pb", recs);
    if (c.keep_rollouts() > 0) {  // retention: keep the newest keep_rollouts files
      std::vector<std::string> files;
      for (auto& e : fs::directory_iterator(dir)) {
        auto n = e.path().filename().string();
        if (n.rfind("iter-", 0) == 0 && e.path().extension() == ".pb") files.push_back(e.path().string());
      }
      std::sort(files.begin(), files.end());
      for (size_t i = 0; i + c.keep_rollouts() < files.size(); ++i) fs::remove(files[i]);
    }
  }

  // 6. PPO epochs over minibatches.
  auto t_train = std::chrono::steady_clock::now();
  UpdateBatch ub{ids, full_mask, rmask, old_logp, values, adv_train, gae.returns, P, N, B};
  std::ofstream mb_log(I.out_dir + "/minibatches.jsonl", std::ios::app);
  UpdateTotals tot = I.update(ub, it, lo, [&](const std::map<std::string, double>& mb) {
    mb_log << minibatch_json(mb) << "\n";
  });
  mb_log.flush();
  const double sum_pl = tot.sum_pl, sum_clip = tot.sum_clip, sum_akl = tot.sum_akl,
               sum_ratio = tot.sum_ratio, sum_vl = tot.sum_vl, sum_vclip = tot.sum_vclip;
  const int64_t n_pol = tot.n_pol, n_val = tot.n_val, train_tokens = tot.train_tokens;
  const double ratio_first_dev = tot.ratio_first_dev;
  auto t_end = std::chrono::steady_clock::now();
  const double train_s = std::chrono::duration<double>(t_end - t_train).count();

  // 7. KL controller (per-sequence KL sum, Ziegler et al.), stats.
  I.kl_ctl->update(kl_mean, B);
  auto raw_t = torch::tensor(std::vector<float>(raw.begin(), raw.end()), torch::kFloat);
  double len_sum = 0, eos_sum = 0;
  for (int64_t b = 0; b < B; ++b) {
    len_sum += lengths[b];
    eos_sum += has_eos[b] ? 1 : 0;
  }
  stats["score/mean"] = raw_t.mean().item<double>();
  stats["score/std"] = B > 1 ? raw_t.std().item<double>() : 0.0;
  stats["score/shaped_mean"] = scores.mean().item<double>();
  stats["kl/mean"] = kl_mean;
  stats["kl/coef"] = beta;
  stats["kl/coef_next"] = I.kl_ctl->value();
  stats["entropy/mean"] = ppo::masked_mean(entropy, rmask).item<double>();
  stats["loss/policy"] = n_pol ? sum_pl / n_pol : 0.0;
  stats["loss/value"] = n_val ? sum_vl / n_val : 0.0;
  stats["policy/clipfrac"] = n_pol ? sum_clip / n_pol : 0.0;
  stats["policy/approx_kl"] = n_pol ? sum_akl / n_pol : 0.0;
  stats["policy/ratio_mean"] = n_pol ? sum_ratio / n_pol : 1.0;
  stats["policy/ratio_first_dev"] = ratio_first_dev;
  stats["policy/gen_logprob_dev"] = gen_dev;
  stats["value/clipfrac"] = n_val ? sum_vclip / n_val : 0.0;
  stats["policy/early_stopped"] = tot.early_stopped ? 1.0 : 0.0;
  stats["policy/minibatches"] = (double)tot.minibatches;
  stats["lr/policy"] = tot.policy_lr;
  stats["lr/value"] = tot.value_lr;
  const auto objective = ppo::objective_stats(kl, scores, beta);  // TRL's objective/*
  stats["objective/non_score_reward"] = objective.non_score_reward;
  stats["objective/rlhf_reward"] = objective.rlhf_reward;
  stats["objective/scores"] = objective.scores;
  stats["advantages/mean"] = ppo::masked_mean(gae.advantages, rmask).item<double>();
  stats["returns/mean"] = ppo::masked_mean(gae.returns, rmask).item<double>();
  stats["response/length_mean"] = len_sum / B;
  stats["response/eos_frac"] = eos_sum / B;
  stats["speed/gen_tokens_per_s"] = gen.seconds > 0 ? gen.generated_tokens / gen.seconds : 0.0;
  stats["speed/train_tokens_per_s"] = train_s > 0 ? train_tokens / train_s : 0.0;
  stats["time/iteration_s"] = std::chrono::duration<double>(t_end - t_start).count();
  if (I.extra_stats)
    for (auto& kv : I.extra_stats(batch_prompts, gen.responses)) stats[kv.first] = kv.second;
  for (auto& kv : stats)
    if (!finite(kv.second) && kv.first.rfind("speed/", 0) != 0)
      throw Error(at + ": " + kv.first + " is non-finite; stopped, last good checkpoint: " +
                  (I.last_checkpoint.empty() ? "none" : I.last_checkpoint));

  if (ratio_first_dev > c.ratio_warn())
    std::fprintf(stderr,
                 "ppo: warning: iteration %lld: policy/ratio_first_dev %.3g > %.3g: train/inference "
                 "mismatch (padding, positions, dropout, or temperature not applied to log-probs)\n",
                 (long long)it, ratio_first_dev, c.ratio_warn());
  if (kl_mean > c.kl_warn_bound())
    std::fprintf(stderr, "ppo: warning: iteration %lld: kl/mean %.3f above kl_warn_bound %.3f\n",
                 (long long)it, kl_mean, c.kl_warn_bound());
  I.metrics->write(it, stats);
  std::fprintf(stderr,
               "ppo %lld/%d  score %.3f  kl %.3f  beta %.4f  loss p %.4f v %.4f  len %.1f  eos %.2f"
               "  %.0f gen tok/s  %.1fs\n",
               (long long)it, c.iterations(), stats["score/mean"], kl_mean, beta,
               stats["loss/policy"], stats["loss/value"], stats["response/length_mean"],
               stats["response/eos_frac"], stats["speed/gen_tokens_per_s"], stats["time/iteration_s"]);
  completed_ = it;
  history_.push_back(stats);
  return stats;
}

}  // namespace rlhf::policy
