#include "policy/ppo/ppo_trainer.h"

#include <google/protobuf/text_format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "common/error.h"
#include "common/files.h"
#include "common/metrics.h"
#include "common/text_config.h"
#include "policy/decoding/generation.h"
#include "policy/model/checkpoint.h"
#include "policy/model/logprobs.h"
#include "policy/model/lora.h"
#include "policy/ppo/ppo_math.h"
#include "policy/ppo/rollout_file.h"
#include "policy/runtime/device.h"
#include "policy/runtime/distributed.h"
#include "policy/tokenizer/prompt_format.h"
#include "policy/training/training.h"

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
  auto device =
      model->parameters().empty() ? torch::Device(torch::kCPU) : model->parameters()[0].device();
  copy->to(device);
  copy_weights(model, copy);
  return copy;
}

// ---------------------------------------------------------------------------------------------
// The critic on a shared frozen base: the policy's (critic: "policy_base") or the reward model's
// (critic: "reward_base")

static bool critic_on_policy_base(const proto::PpoConfig& c) { return c.critic() == "policy_base"; }
static bool critic_on_reward_base(const proto::PpoConfig& c) { return c.critic() == "reward_base"; }

// The critic's adapters (critic_lora_config: critic_lora, the policy's lora, or rank 8).
static LoraOptions critic_lora_options(const proto::PpoConfig& c) {
  return LoraOptions::from_proto(critic_lora_config(c));
}

Transformer share_base(Transformer& base) {
  ModelConfig c = base->config();
  c.value_head = false;
  // Built in the base's dtypes (a bf16 base: no float32 transient); freed as rebound below.
  Transformer t(c, WeightDtypes{base->layers[0]->as<DecoderLayer>()->q_proj->weight.scalar_type(),
                                base->tok_embeddings->weight.scalar_type()});
  torch::NoGradGuard no_grad;
  auto params = base->named_parameters();
  for (auto& p : t->named_parameters()) p.value().set_data(params[p.key()]);
  auto buffers = base->named_buffers();
  for (auto& b : t->named_buffers()) b.value().set_data(buffers[b.key()]);
  return t;
}

Transformer reward_base_critic(Transformer& reward_model) {
  if (!reward_model->config().value_head)
    throw Error("ppo: critic \"reward_base\": the reward model has no score (value) head");
  Transformer critic = share_base(reward_model);
  critic->add_value_head();
  torch::NoGradGuard no_grad;
  auto head = reward_model->value_head->named_parameters();
  for (auto& p : critic->value_head->named_parameters()) p.value().copy_(head[p.key()]);
  return critic;
}

// ---------------------------------------------------------------------------------------------
// Learning rate

double ppo_learning_rate(const proto::PpoConfig& c, double peak_lr, int64_t iteration) {
  proto::OptimizerConfig o = resolved_ppo_config(c).optimizer();
  o.set_lr(peak_lr);
  return training::make_schedule(o, std::max(1, c.iterations()), training::OptimizerDefaults::kPpo)
      .at(std::max<int64_t>(0, iteration - 1));
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
// Data parallelism: a rank holds rows [row0, row0 + B) of the global batch of B_global rows.
struct UpdateBatch {
  torch::Tensor ids, full_mask, rmask, old_logp, values, adv_train, returns;
  int64_t P = 0, N = 0, B = 0;
  int64_t row0 = 0, B_global = 0;  // B_global 0: B (one process)
  int64_t global_rows() const { return B_global > 0 ? B_global : B; }
  torch::Tensor ref_logp;  // [B, N]: for kl_in_loss (the k3 loss term), else undefined
  double beta = 0;         // the iteration's KL coefficient (kl_in_loss)
};

struct UpdateTotals {
  double sum_pl = 0, sum_clip = 0, sum_akl = 0, sum_ratio = 0, sum_vl = 0, sum_vclip = 0;
  double sum_kl_loss = 0;  // kl_in_loss: the k3 term (before kl_coef) per policy minibatch
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

// The padded update batch of a saved iteration, exactly as the live iteration had it: prompts
// left-padded to P, responses right-padded to N, advantages whitened as configured. On the CPU.
UpdateBatch update_batch_from_records(const std::vector<proto::RolloutRecord>& recs, int64_t pad,
                                      const proto::PpoConfig& c, const std::string& file) {
  UpdateBatch u;
  u.B = (int64_t)recs.size();
  for (const auto& r : recs) {
    u.P = std::max<int64_t>(u.P, r.prompt_ids_size());
    u.N = std::max<int64_t>(u.N, r.response_ids_size());
  }
  if (u.P == 0 || u.N == 0) throw Error(file + ": empty prompts or responses");
  const int64_t B = u.B, P = u.P, N = u.N;
  u.ids = torch::full({B, P + N}, pad, torch::kLong);
  u.full_mask = torch::zeros({B, P + N});
  auto adv = torch::zeros({B, N});
  u.old_logp = torch::zeros({B, N});
  u.values = torch::zeros({B, N});
  u.returns = torch::zeros({B, N});
  if (c.kl_in_loss()) {
    u.ref_logp = torch::zeros({B, N});
    u.beta = recs[0].kl_coef();
  }
  for (int64_t b = 0; b < B; ++b) {
    const auto& r = recs[b];
    const int64_t p = r.prompt_ids_size(), n = r.response_ids_size();
    if (r.advantages_size() != n || r.returns_size() != n)
      throw Error(file + ": record " + std::to_string(b) + " has no stored advantages/returns");
    for (int64_t t = 0; t < p; ++t) {
      u.ids[b][P - p + t] = r.prompt_ids(t);
      u.full_mask[b][P - p + t] = 1;
    }
    for (int64_t t = 0; t < n; ++t) {
      u.ids[b][P + t] = r.response_ids(t);
      u.full_mask[b][P + t] = 1;
      u.old_logp[b][t] = r.logprobs(t);
      u.values[b][t] = r.values(t);  // critic-free: zeros (unused)
      if (c.kl_in_loss()) u.ref_logp[b][t] = r.ref_logprobs(t);
      adv[b][t] = r.advantages(t);
      u.returns[b][t] = r.returns(t);
    }
  }
  u.rmask = u.full_mask.narrow(1, P, N).contiguous();
  u.adv_train = whitens_advantages(c) ? ppo::whiten(adv, u.rmask) : adv;
  return u;
}

// Everything one iteration produces before the update, filled phase by phase in step().
// Data parallelism: tensors and per-sample vectors hold this rank's rows [row0, row0 + B) of the
// global batch of B_global; the *_all vectors hold every rank's samples in global order.
struct Rollout {
  int64_t iteration = 0;
  int64_t row0 = 0, B_global = 0;
  std::vector<std::vector<int64_t>> prompts;  // this iteration's prompt ids (this rank's rows)
  GenerationOutput gen;
  uint64_t seed = 0;                    // generation seed
  torch::Tensor ids, full_mask, rmask;  // [B, P + N], [B, P + N], [B, N]
  int64_t B = 0, P = 0, N = 0;
  std::vector<int64_t> lengths;
  std::vector<bool> has_eos;
  std::vector<float> raw;                  // teacher scores
  std::vector<float> shaped;               // after penalties, normalisation, clipping
  std::vector<float> raw_all, shaped_all;  // the global batch's
  std::vector<int64_t> lengths_all;
  std::vector<bool> has_eos_all;
  torch::Tensor scores;                               // [B] shaped, on the device
  torch::Tensor old_logp, ref_logp, values, entropy;  // [B, N], under no-grad
  double gen_logprob_dev = 0;
  double beta = 0;                       // KL coefficient used
  torch::Tensor kl, rewards, adv_train;  // [B, N]
  std::vector<float> seq_adv;            // critic-free: this rank's sequence advantages
  ppo::GaeResult gae;
  double kl_mean = 0;
};

}  // namespace

struct PpoTrainer::Impl {
  proto::PpoConfig cfg;
  PpoModels m;
  TeacherFn teacher;
  DecodeFn decode;
  ExtraStatsFn extra_stats;
  std::vector<int64_t> stop_ids;              // set_stop_ids
  std::vector<std::vector<int64_t>> prompts;  // in the fixed shuffled order
  std::string out_dir;
  std::string fingerprint;
  torch::Device device{torch::kCPU};
  Precision precision = Precision::kFp32;  // bf16: autocast forwards, bf16 KV cache in rollouts
  dist::Comm* comm = nullptr;  // the ranks sharing each iteration's batch (one when alone)
  std::unique_ptr<training::Optimizer> policy_opt, critic_opt;
  std::unique_ptr<ppo::KLController> kl_ctl;
  double score_count = 0, score_mean = 0, score_m2 = 0;  // Welford moments of shaped scores
  std::unique_ptr<MetricsWriter> metrics;
  std::string last_checkpoint;
  // LoRA (cfg.lora.rank > 0): adapters on the policy, whose base weights stay frozen; the policy
  // optimizer holds the adapters then, else all policy parameters.
  std::unique_ptr<LoraAdapters> lora;
  // The advantage estimator (cfg.advantage_estimator). Critic-free (not kGae): m.critic and
  // critic_opt stay null; nothing of a critic is evaluated, trained or checkpointed.
  ppo::Estimator estimator = ppo::Estimator::kGae;
  bool has_critic() const { return estimator == ppo::Estimator::kGae; }
  // Iterations that train only the critic: none without one.
  int critic_warmup() const { return has_critic() ? cfg.critic_warmup_iterations() : 0; }
  // critic "policy_base" / "reward_base": the critic's own adapters on the shared frozen base.
  std::unique_ptr<LoraAdapters> critic_lora;

  std::string at(int64_t it) const { return "ppo iteration " + std::to_string(it); }
  std::string last_good() const {
    return "; stopped, last good checkpoint: " +
           (last_checkpoint.empty() ? "none" : last_checkpoint);
  }
  training::StateFolder checkpoints() const {
    return training::StateFolder(out_dir + "/checkpoints", cfg.keep_checkpoints());
  }

  // The construction path shared by the live trainer and `replay --update`.
  void setup(const proto::PpoConfig& config, PpoModels models);
  training::NamedTensors policy_tensors();
  training::NamedTensors critic_tensors();
  void load_checkpoint(const std::string& dir);
  void save_checkpoint(int64_t completed);

  // The phases of one iteration, in order.
  Rollout sample(int64_t it);
  void score(Rollout& r);
  void shape_scores(Rollout& r);
  void evaluate(Rollout& r);
  torch::Tensor reference_logprobs(const torch::Tensor& ids, const torch::Tensor& mask,
                                   const LogprobOptions& lo);
  void advantages(Rollout& r);
  void critic_free_advantages(Rollout& r, double reward_beta);
  void write_rollouts(const Rollout& r);
  torch::Tensor whiten(const torch::Tensor& x, const torch::Tensor& mask, bool shift_mean = true);
  // Sum over ranks of (masked sum, mask count) pairs -> global masked means.
  std::vector<double> masked_means(const std::vector<std::pair<torch::Tensor, torch::Tensor>>& xs);
  // ppo_epochs epochs of shuffled minibatches on one rollout batch (the live loop and
  // `replay --update` share it, so both give the same numbers).
  UpdateTotals update(const UpdateBatch& batch, int64_t iteration, const LogprobOptions& lo,
                      const MinibatchFn& on_minibatch);
  std::map<std::string, double> log(const Rollout& r, const UpdateTotals& tot, double train_s,
                                    double iteration_s);
  void report(const Rollout& r, const UpdateTotals& tot, const std::map<std::string, double>& stats,
              double iteration_s);

 private:
  void policy_minibatch(const UpdateBatch& u, const torch::Tensor& idx, int64_t it, bool first,
                        const LogprobOptions& lo, double lr, std::map<std::string, double>& mb,
                        UpdateTotals& tot);
  void critic_minibatch(const UpdateBatch& u, const torch::Tensor& idx, int64_t it, double lr,
                        std::map<std::string, double>& mb, UpdateTotals& tot);
};

LogprobOptions logprob_options(const proto::PpoConfig& c) {
  LogprobOptions lo;
  lo.temperature = c.temperature() > 0 ? c.temperature() : 1.0f;
  return lo;
}

// ---- construction and checkpoints ---------------------------------------------------------------

void PpoTrainer::Impl::setup(const proto::PpoConfig& config, PpoModels models) {
  cfg = resolved_ppo_config(config);
  m = std::move(models);
  const training::Placement place =
      training::place_trainer(cfg.device(), cfg.dtype(), cfg.threads(), "ppo config");
  device = place.device;
  precision = place.precision;
  comm = place.comm;
  estimator = *ppo::parse_estimator(cfg.advantage_estimator());
  m.policy->to(device);
  const bool with_lora = cfg.has_lora() && cfg.lora().rank() > 0;
  // bf16 with LoRA: the policy's frozen base (matrices and embedding table) is stored bfloat16, in
  // place (a no-op for a base the stage loaded so), before the critic may share it.
  const auto frozen = with_lora ? StoredWeights::kMatricesAndEmbeddings : StoredWeights::kMatrices;
  if (precision == Precision::kBf16 && with_lora)
    store_matrices_as(m.policy, torch::kBFloat16, frozen);
  if (has_critic()) {
    if (critic_on_policy_base(cfg)) {
      m.critic = share_base(m.policy);  // no copy of the weights (after the move: one device copy)
      torch::manual_seed(cfg.seed());   // the fresh value head, as the stage seeds a copied critic
    }
    if (!m.critic->config().value_head) m.critic->add_value_head();
    m.critic->to(device);
  } else {
    m.critic = Transformer{nullptr};  // no critic: none is kept, trained or saved
  }
  if (m.reference) {
    m.reference->to(device);
    m.reference->eval();
    for (auto& p : m.reference->parameters()) p.set_requires_grad(false);
    // bf16: the reference only runs under autocast, which rounds its matrices to bfloat16 anyway;
    // keeping them so halves its memory and leaves its log-probs bit for bit as they were.
    // With LoRA it is stored as the policy's base is (the embedding table too).
    if (precision == Precision::kBf16) store_matrices_as(m.reference, torch::kBFloat16, frozen);
  }
  if (with_lora)
    lora = std::make_unique<LoraAdapters>(m.policy, LoraOptions::from_proto(cfg.lora()));
  // With LoRA the policy's base is frozen: its optimizer holds the adapters alone. PPO's defaults
  // (proto/optimizer.proto): betas (0.9, 0.999), eps 1e-5, no weight decay.
  policy_opt = std::make_unique<training::Optimizer>(
      training::trainable_parameters(*m.policy, lora.get()), cfg.optimizer());
  if (has_critic() && critic_on_shared_base(cfg)) {
    critic_lora = std::make_unique<LoraAdapters>(m.critic, critic_lora_options(cfg));
    for (auto& p : m.critic->value_head->parameters()) p.set_requires_grad(true);  // and the head
  }
  if (has_critic())
    critic_opt = std::make_unique<training::Optimizer>(
        training::trainable_parameters(*m.critic, critic_lora.get()), critic_optimizer_config(cfg));
  if (cfg.adaptive_kl())
    kl_ctl = std::make_unique<ppo::AdaptiveKLController>(cfg.kl_coef(), cfg.kl_target(),
                                                         cfg.kl_horizon());
  else
    kl_ctl = std::make_unique<ppo::FixedKLController>(cfg.kl_coef());
}

// The policy's trained state: with LoRA the frozen base and the adapters.
training::NamedTensors PpoTrainer::Impl::policy_tensors() {
  return training::state_tensors(*m.policy, lora.get());
}

// The critic's: its weights and value head, with critic "policy_base" also its adapters. With
// critic "reward_base" its value head and adapters only: the base is the teacher's, read from the
// reward model folder (the checkpoint neither repeats nor overwrites it).
training::NamedTensors PpoTrainer::Impl::critic_tensors() {
  if (!critic_on_reward_base(cfg)) return training::state_tensors(*m.critic, critic_lora.get());
  training::NamedTensors t;
  for (auto& p : m.critic->value_head->named_parameters())
    t.emplace_back("value_head." + p.key(), p.value());
  for (auto& [name, a] : critic_lora->named_parameters()) t.emplace_back("lora." + name, a);
  return t;
}

void PpoTrainer::Impl::load_checkpoint(const std::string& dir) {
  proto::PpoState st;
  if (!st.ParseFromString(read_file(dir + "/state.pb")))
    throw Error(dir + "/state.pb: cannot parse PpoState");
  training::load_tensors(policy_tensors(), dir + "/policy.pt");
  policy_opt->load(dir + "/policy_optimizer.pt", device);
  if (has_critic()) {
    training::load_tensors(critic_tensors(), dir + "/critic.pt");
    critic_opt->load(dir + "/critic_optimizer.pt", device);
  }
  training::load_cpu_rng(dir + "/rng.pt");
  kl_ctl->set_value(st.kl_coef());
  score_count = st.score_count();
  score_mean = st.score_mean();
  score_m2 = st.score_m2();
  last_checkpoint = dir;
}

void PpoTrainer::Impl::save_checkpoint(int64_t completed) {
  if (!comm->is_root()) {  // rank 0 alone writes; every rank holds the same state
    last_checkpoint = checkpoints().root() + "/" + iter_name(completed);
    return;
  }
  proto::PpoState st;
  st.set_iteration(completed);
  st.set_kl_coef(kl_ctl->value());
  st.set_score_count(score_count);
  st.set_score_mean(score_mean);
  st.set_score_m2(score_m2);
  std::string cfg_text;
  google::protobuf::TextFormat::PrintToString(cfg, &cfg_text);
  st.set_config_text(cfg_text);
  last_checkpoint =
      checkpoints().save(iter_name(completed), fingerprint, [&](const std::string& tmp) {
        training::save_tensors(policy_tensors(), tmp + "/policy.pt");  // with LoRA: base + adapters
        policy_opt->save(tmp + "/policy_optimizer.pt");
        if (has_critic()) {
          training::save_tensors(critic_tensors(), tmp + "/critic.pt");
          critic_opt->save(tmp + "/critic_optimizer.pt");
        }
        training::save_cpu_rng(tmp + "/rng.pt");
        if (lora) lora->save(tmp + "/adapter");
        CheckpointInfo info;  // readable checkpoint folders (merged weights with LoRA)
        info.kind = "policy";
        info.created_by = "ppo";
        info.step = completed;
        policy::save_checkpoint(m.policy, tmp + "/policy", info);
        info.kind = "critic";
        // critic "reward_base": written with its adapters off (the reward model's plain base and
        // the trained head), the model `replay --update` puts critic.pt's adapters back on.
        const bool plain_critic = has_critic() && critic_on_reward_base(cfg);
        if (plain_critic) critic_lora->disable();
        if (has_critic()) policy::save_checkpoint(m.critic, tmp + "/critic", info);
        if (plain_critic) critic_lora->refresh(false);
        write_file_atomic(tmp + "/state.pb", st.SerializeAsString());
      });
}

// ---- the phases of one iteration
// ------------------------------------------------------------------

// 1-2. This iteration's prompts (the shuffled list, cycled) and their sampled responses.
Rollout PpoTrainer::Impl::sample(int64_t it) {
  Rollout r;
  r.iteration = it;
  r.B_global = cfg.batch_size();
  // samples_per_prompt K: global row j answers prompt j / K of the iteration's B / K prompts, and
  // the ranks split the batch at group boundaries (a group is never split across ranks).
  const int64_t K = cfg.samples_per_prompt(), G = r.B_global / K;
  const auto [g0, g1] = dist::shard_range(G, comm->rank(), comm->size());
  const int64_t row0 = g0 * K, row1 = g1 * K;
  r.row0 = row0;
  r.B = row1 - row0;
  for (int64_t j = row0; j < row1; ++j)
    r.prompts.push_back(prompts[((it - 1) * G + j / K) % (int64_t)prompts.size()]);
  SamplingOptions so;
  so.max_new_tokens = cfg.max_new_tokens();
  so.temperature = cfg.temperature();
  so.top_k = cfg.top_k();
  so.top_p = cfg.top_p();
  so.stop_ids = stop_ids;
  so.seed = r.seed = mix_seed(cfg.seed(), (uint64_t)it, 0x9e4);
  so.row_offset = r.row0;
  so.total_rows = r.B_global;
  so.precision = precision;
  m.policy->eval();
  if (lora) lora->refresh(false);
  r.gen = generate(m.policy, r.prompts, so);
  r.P = r.gen.prompt_ids.size(1);
  r.N = r.gen.response_ids.size(1);
  r.ids = torch::cat({r.gen.prompt_ids, r.gen.response_ids}, 1).to(torch::kLong).to(device);
  r.full_mask =
      torch::cat({r.gen.prompt_mask.to(torch::kFloat), r.gen.response_mask.to(torch::kFloat)}, 1)
          .to(device);
  r.rmask = r.gen.response_mask.to(torch::kFloat).to(device);
  const int64_t eos_id = m.policy->config().eos_id;
  for (const auto& resp : r.gen.responses) {
    r.lengths.push_back((int64_t)resp.size());
    r.has_eos.push_back(!resp.empty() &&
                        (resp.back() == eos_id || std::find(stop_ids.begin(), stop_ids.end(),
                                                            resp.back()) != stop_ids.end()));
  }
  if (comm->max(r.N == 0 ? 1.0 : 0.0) > 0)
    throw Error(at(it) + ": generation produced no tokens on a rank");
  return r;
}

// 3. The teacher's scores.
void PpoTrainer::Impl::score(Rollout& r) {
  r.raw = teacher(r.prompts, r.gen.responses);
  if ((int64_t)r.raw.size() != r.B)
    throw Error(at(r.iteration) + ": teacher returned " + std::to_string(r.raw.size()) +
                " scores for " + std::to_string(r.B) + " samples");
  for (int64_t b = 0; b < r.B; ++b)
    if (!finite(r.raw[b]))
      throw Error(at(r.iteration) + ": teacher score of sample " + std::to_string(r.row0 + b) +
                  " is " + std::to_string(r.raw[b]) + " (non-finite)" + last_good());
  // Every rank's (score, length, eos) in global order: shaping and statistics see the whole batch.
  std::string mine;
  for (int64_t b = 0; b < r.B; ++b) {
    const double rec[3] = {r.raw[b], (double)r.lengths[b], r.has_eos[b] ? 1.0 : 0.0};
    mine.append(reinterpret_cast<const char*>(rec), sizeof rec);
  }
  for (const auto& part : comm->all_gather_bytes(mine)) {
    const auto* rec = reinterpret_cast<const double*>(part.data());
    for (size_t k = 0; k + 3 <= part.size() / sizeof(double); k += 3) {
      r.raw_all.push_back((float)rec[k]);
      r.lengths_all.push_back((int64_t)rec[k + 1]);
      r.has_eos_all.push_back(rec[k + 2] != 0);
    }
  }
}

// Penalties (missing EOS, short response: TRL), running normalisation (OpenRLHF), clipping.
// Computed over the global batch (every rank the same), then this rank's rows are taken.
void PpoTrainer::Impl::shape_scores(Rollout& r) {
  std::vector<double> shaped(r.B_global);
  for (int64_t b = 0; b < r.B_global; ++b) {
    double s = r.raw_all[b];
    if (!r.has_eos_all[b]) s -= cfg.missing_eos_penalty();
    if (r.lengths_all[b] < cfg.min_new_tokens()) s -= cfg.short_response_penalty();
    shaped[b] = s;
  }
  if (cfg.normalize_scores()) {
    // Running mean/std over all scores seen so far, batch included (Welford).
    for (double s : shaped) {
      score_count += 1;
      const double d = s - score_mean;
      score_mean += d / score_count;
      score_m2 += d * (s - score_mean);
    }
    const double var = score_count > 1 ? score_m2 / (score_count - 1) : 1.0;
    const double sd = std::sqrt(std::max(var, 1e-8));
    for (auto& s : shaped) s = (s - score_mean) / sd;
  }
  if (cfg.score_clip() > 0)
    for (auto& s : shaped) s = std::clamp(s, -cfg.score_clip(), cfg.score_clip());
  r.shaped_all.assign(shaped.begin(), shaped.end());
  r.shaped.assign(shaped.begin() + r.row0, shaped.begin() + r.row0 + r.B);
  r.scores = torch::tensor(r.shaped, torch::kFloat).to(device);
}

// The reference's log-probs [B, T]: the separate reference model, or (LoRA without one) the
// policy with its adapters switched off, whose frozen base is the model PPO started from.
torch::Tensor PpoTrainer::Impl::reference_logprobs(const torch::Tensor& ids,
                                                   const torch::Tensor& mask,
                                                   const LogprobOptions& lo) {
  if (m.reference) return token_logprobs(m.reference, ids, mask, lo).logprobs;
  lora->disable();
  auto lp = token_logprobs(m.policy, ids, mask, lo).logprobs;
  lora->refresh(false);  // the same adapters, the same effective weights as before
  return lp;
}

// 4. Log-probs under policy and reference, entropy, critic values (teacher forcing, no grad).
void PpoTrainer::Impl::evaluate(Rollout& r) {
  torch::NoGradGuard no_grad;
  AutocastScope autocast(device, precision);
  LogprobOptions lo = logprob_options(cfg);
  lo.entropy = true;
  auto pol = token_logprobs(m.policy, r.ids, r.full_mask, lo);
  r.old_logp = pol.logprobs.narrow(1, r.P - 1, r.N) * r.rmask;
  r.entropy = pol.entropy.narrow(1, r.P - 1, r.N);
  lo.entropy = false;
  r.ref_logp = reference_logprobs(r.ids, r.full_mask, lo).narrow(1, r.P - 1, r.N) * r.rmask;
  if (has_critic()) {
    m.critic->eval();
    if (critic_lora) critic_lora->refresh(false);  // e.g. adapters just loaded by a resume
    auto h = m.critic->hidden_states(r.ids, r.full_mask);
    r.values = m.critic->values_from_hidden(h.narrow(1, r.P - 1, r.N)).to(torch::kFloat) * r.rmask;
  } else {
    r.values = torch::zeros_like(r.old_logp);  // no critic: V = 0, returns = advantages
  }
  r.gen_logprob_dev = comm->max(
      ((r.gen.response_logprobs.to(device).to(torch::kFloat) - r.old_logp).abs() * r.rmask)
          .max()
          .item<double>());
}

// 5. Per-token KL, rewards, GAE (unwhitened in the rollouts; whitened for the update).
void PpoTrainer::Impl::advantages(Rollout& r) {
  r.beta = kl_ctl->value();
  r.kl = ppo::per_token_kl(r.old_logp, r.ref_logp, r.rmask);
  const double reward_beta = cfg.kl_in_loss() ? 0.0 : r.beta;  // kl_in_loss: a loss term instead
  if (has_critic()) {
    r.rewards = ppo::compute_rewards(r.kl, r.scores, r.rmask, reward_beta);
    if (cfg.whiten_rewards()) r.rewards = whiten(r.rewards, r.rmask, /*shift_mean=*/false);
    r.gae = ppo::compute_gae(r.rewards, r.values, r.rmask, cfg.gamma(), cfg.lam());
  } else {
    critic_free_advantages(r, reward_beta);
  }
  r.adv_train = whitens_advantages(cfg) ? whiten(r.gae.advantages, r.rmask) : r.gae.advantages;
  // The mean over the global batch of the per-sequence KL sum (Ziegler et al.).
  r.kl_mean = comm->alone() ? r.kl.sum(1).mean().item<double>()
                            : comm->sum(r.kl.sum().item<double>()) / (double)r.B_global;
  if (!finite(r.kl_mean)) throw Error(at(r.iteration) + ": kl/mean is non-finite" + last_good());
}

// The critic-free estimators: sequence advantages from the global batch's shaped scores in groups
// of K (every rank computes all, groups never straddle ranks), then per token with the KL to go
// (none with kl_in_loss); returns = advantages.
void PpoTrainer::Impl::critic_free_advantages(Rollout& r, double reward_beta) {
  const auto all = ppo::group_advantages(r.shaped_all, cfg.samples_per_prompt(), estimator);
  r.seq_adv.assign(all.begin() + r.row0, all.begin() + r.row0 + r.B);
  auto seq = torch::tensor(r.seq_adv, torch::kFloat).to(device);
  auto cf = ppo::critic_free_advantages(r.kl, seq, r.rmask, reward_beta, cfg.gamma());
  r.rewards = cf.rewards;
  r.gae.advantages = cf.advantages;
  r.gae.returns = cf.advantages;
}

// ppo::whiten over the global batch: the masked mean and variance (Bessel) of all ranks' rows.
torch::Tensor PpoTrainer::Impl::whiten(const torch::Tensor& x, const torch::Tensor& mask,
                                       bool shift_mean) {
  if (comm->alone()) return ppo::whiten(x, mask, shift_mean);
  auto m = mask.to(x.scalar_type());
  const auto s = comm->sum({(x * m).sum().item<double>(), m.sum().item<double>()});
  const double mean = s[0] / s[1];
  const double ss = comm->sum(((x - mean).pow(2) * m).sum().item<double>());
  const double var = s[1] > 1 ? ss / (s[1] - 1) : 0.0;
  auto w = (x - mean) * (1.0 / std::sqrt(var + 1e-8));
  if (!shift_mean) w = w + mean;
  return w * m;
}

std::vector<double> PpoTrainer::Impl::masked_means(
    const std::vector<std::pair<torch::Tensor, torch::Tensor>>& xs) {
  std::vector<double> sums;
  for (const auto& [x, mask] : xs) {
    auto m = mask.to(x.scalar_type());
    sums.push_back((x * m).sum().item<double>());
    sums.push_back(m.sum().item<double>());
  }
  sums = comm->sum(sums);
  std::vector<double> means;
  for (size_t i = 0; i < sums.size(); i += 2)
    means.push_back(sums[i + 1] > 0 ? sums[i] / sums[i + 1] : 0.0);
  return means;
}

namespace {
// What `replay --recompute` needs to rebuild the advantages of a critic-free estimator, K > 1 or
// kl_in_loss (absent for plain PPO: its files stay as they were).
void set_estimator_fields(const proto::PpoConfig& cfg, int64_t global_row, float seq_adv,
                          proto::RolloutRecord* rec) {
  if (uses_critic(cfg) && cfg.samples_per_prompt() == 1 && !cfg.kl_in_loss()) return;
  rec->set_advantage_estimator(cfg.advantage_estimator());
  rec->set_samples_per_prompt(cfg.samples_per_prompt());
  rec->set_group(global_row / cfg.samples_per_prompt());
  rec->set_kl_in_loss(cfg.kl_in_loss());
  rec->set_sequence_advantage(seq_adv);
}
}  // namespace

// <out>/rollouts/iter-NNNN.pb, with retention (keep_rollouts newest). Data-parallel ranks send
// their records to every rank; rank 0 writes one file in global order.
void PpoTrainer::Impl::write_rollouts(const Rollout& r) {
  auto cpu = [](const torch::Tensor& t) { return t.to(torch::kCPU).contiguous(); };
  auto lp_c = cpu(r.old_logp), ref_c = cpu(r.ref_logp), v_c = cpu(r.values), kl_c = cpu(r.kl),
       r_c = cpu(r.rewards), a_c = cpu(r.gae.advantages), ret_c = cpu(r.gae.returns);
  std::vector<proto::RolloutRecord> recs;
  for (int64_t b = 0; b < r.B; ++b) {
    proto::RolloutRecord rec;
    rec.set_schema_version(1);
    rec.set_iteration(r.iteration);
    rec.set_index(r.row0 + b);
    for (auto id : r.prompts[b]) rec.add_prompt_ids(id);
    for (auto id : r.gen.responses[b]) rec.add_response_ids(id);
    if (decode) {
      rec.set_prompt_text(decode(r.prompts[b]));
      rec.set_response_text(decode(r.gen.responses[b]));
    }
    auto put = [&](const torch::Tensor& t, google::protobuf::RepeatedField<float>* f) {
      const float* p = t.data_ptr<float>() + b * r.N;
      f->Add(p, p + r.lengths[b]);
    };
    put(lp_c, rec.mutable_logprobs());
    put(ref_c, rec.mutable_ref_logprobs());
    put(v_c, rec.mutable_values());  // critic-free: zeros
    put(kl_c, rec.mutable_kl());
    put(r_c, rec.mutable_rewards());
    put(a_c, rec.mutable_advantages());
    put(ret_c, rec.mutable_returns());
    rec.set_score(r.shaped[b]);
    rec.set_raw_score(r.raw[b]);
    rec.set_ended_with_eos(r.has_eos[b]);
    rec.set_kl_coef(r.beta);
    rec.set_gamma(cfg.gamma());
    rec.set_lam(cfg.lam());
    auto* g = rec.mutable_generation();
    g->set_temperature(cfg.temperature());
    g->set_top_k(cfg.top_k());
    g->set_top_p(cfg.top_p());
    g->set_max_new_tokens(cfg.max_new_tokens());
    g->set_eos_id(m.policy->config().eos_id);
    g->set_seed(r.seed);
    set_estimator_fields(cfg, r.row0 + b, has_critic() ? 0.f : r.seq_adv[b], &rec);
    recs.push_back(std::move(rec));
  }
  if (!comm->alone()) {
    std::string mine;
    for (const auto& rec : recs) {
      const std::string bytes = rec.SerializeAsString();
      const uint64_t n = bytes.size();
      mine.append(reinterpret_cast<const char*>(&n), sizeof n).append(bytes);
    }
    recs.clear();
    for (const auto& part : comm->all_gather_bytes(mine)) {
      for (size_t off = 0; off + sizeof(uint64_t) <= part.size();) {
        uint64_t n = 0;
        std::memcpy(&n, part.data() + off, sizeof n);
        off += sizeof n;
        recs.emplace_back().ParseFromString(part.substr(off, n));
        off += n;
      }
    }
    if (!comm->is_root()) return;
  }
  const std::string dir = out_dir + "/rollouts";
  policy::write_rollouts(dir + "/" + iter_name(r.iteration) + ".pb", recs);
  if (cfg.keep_rollouts() <= 0) return;
  std::vector<std::string> files;
  for (auto& e : fs::directory_iterator(dir)) {
    auto n = e.path().filename().string();
    if (n.rfind("iter-", 0) == 0 && e.path().extension() == ".pb")
      files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  for (size_t i = 0; i + cfg.keep_rollouts() < files.size(); ++i) fs::remove(files[i]);
}

// The clipped-ratio policy step on one minibatch (or, in the critic warm-up, only the first
// minibatch's ratio check without a step). Data parallelism: idx holds this rank's rows of the
// global minibatch (maybe none); its token-mean loss is weighted by its share of the minibatch's
// tokens, so the gradients summed over ranks are those of the global token mean.
void PpoTrainer::Impl::policy_minibatch(const UpdateBatch& u, const torch::Tensor& idx, int64_t it,
                                        bool first, const LogprobOptions& lo, double lr,
                                        std::map<std::string, double>& mb, UpdateTotals& tot) {
  const bool train_policy = it > critic_warmup();
  m.policy->train();
  if (lora) lora->refresh(train_policy);  // a fresh graph through the adapters
  std::unique_ptr<torch::NoGradGuard> ng;
  if (!train_policy) ng = std::make_unique<torch::NoGradGuard>();
  const bool rows = idx.numel() > 0;
  const auto how = ppo::loss_aggregation(estimator);
  const bool token_mean = how == ppo::LossAggregation::kTokenMean;
  ppo::PolicyLossResult pl;
  torch::Tensor loss, kl_term;
  double share = 0, row_share = (double)idx.numel();  // tokens; rows (other aggregations)
  if (rows) {
    AutocastScope autocast(device, precision);  // forward and loss; backward() runs outside
    LogprobOptions tlo = lo;
    tlo.entropy = cfg.entropy_coef() > 0;
    const auto rmask = u.rmask.index_select(0, idx);
    auto tl =
        token_logprobs(m.policy, u.ids.index_select(0, idx), u.full_mask.index_select(0, idx), tlo);
    auto new_lp = tl.logprobs.narrow(1, u.P - 1, u.N);
    pl = ppo::clipped_policy_loss(new_lp, u.old_logp.index_select(0, idx),
                                  u.adv_train.index_select(0, idx), rmask, cfg.clip_range(), how,
                                  cfg.max_new_tokens());
    loss = pl.loss;
    if (cfg.kl_in_loss()) {  // + beta * k3 (GRPO), aggregated like the policy loss
      kl_term = ppo::aggregate_loss(ppo::k3_kl(new_lp, u.ref_logp.index_select(0, idx), rmask),
                                    rmask, how, cfg.max_new_tokens());
      loss = loss + u.beta * kl_term;
    }
    if (cfg.entropy_coef() > 0)
      loss =
          loss - cfg.entropy_coef() * ppo::masked_mean(tl.entropy.narrow(1, u.P - 1, u.N), rmask);
    share = rmask.sum().item<double>();
  }
  if (!comm->alone()) {
    share /= comm->sum(share);
    if (!token_mean) row_share /= comm->sum(row_share);
  } else {
    share = row_share = 1.0;
  }
  // The loss's weight: its share of the minibatch's tokens (token mean) or of its rows.
  const double lshare = token_mean ? share : row_share;
  if (first) tot.ratio_first_dev = comm->max(pl.ratio_max_dev);  // unmoved policy: ratio 1
  if (!train_policy) return;
  const auto g = comm->sum({rows ? pl.loss.item<double>() * lshare : 0.0, pl.clipfrac * share,
                            pl.approx_kl * share, pl.ratio_mean * share,
                            rows ? loss.item<double>() * lshare : 0.0});
  if (cfg.kl_in_loss()) {
    mb["loss/kl"] = comm->sum(rows ? kl_term.item<double>() * lshare : 0.0);
    tot.sum_kl_loss += mb["loss/kl"];
  }
  mb["loss/policy"] = g[0];
  mb["policy/clipfrac"] = g[1];
  mb["policy/approx_kl"] = g[2];
  mb["policy/ratio_mean"] = g[3];
  mb["policy/ratio_max_dev"] = comm->max(pl.ratio_max_dev);
  if (!finite(g[4]))
    throw Error(at(it) + ": loss/policy is non-finite (" + std::to_string(g[4]) + ")" +
                last_good());
  policy_opt->zero_grad();
  if (rows) (lshare == 1.0 ? loss : loss * lshare).backward();
  dist::all_reduce_gradients(*comm, policy_opt->parameters());
  const double gn = policy_opt->step(lr);
  if (!finite(gn)) throw Error(at(it) + ": policy gradient norm is non-finite" + last_good());
  mb["grad_norm/policy"] = gn;
  tot.sum_pl += mb["loss/policy"];
  tot.sum_clip += mb["policy/clipfrac"];
  tot.sum_akl += mb["policy/approx_kl"];
  tot.sum_ratio += mb["policy/ratio_mean"];
  ++tot.n_pol;
}

// The clipped value-loss step of the critic on one minibatch (this rank's rows of it, weighted as
// in policy_minibatch).
void PpoTrainer::Impl::critic_minibatch(const UpdateBatch& u, const torch::Tensor& idx, int64_t it,
                                        double lr, std::map<std::string, double>& mb,
                                        UpdateTotals& tot) {
  m.critic->train();
  if (critic_lora) critic_lora->refresh(true);  // a fresh graph through the critic's adapters
  const bool rows = idx.numel() > 0;
  ppo::ValueLossResult vl;
  double share = 0;
  if (rows) {
    AutocastScope autocast(device, precision);
    auto h = m.critic->hidden_states(u.ids.index_select(0, idx), u.full_mask.index_select(0, idx));
    auto v = m.critic->values_from_hidden(h.narrow(1, u.P - 1, u.N)).to(torch::kFloat);
    const auto rmask = u.rmask.index_select(0, idx);
    vl = ppo::clipped_value_loss(v, u.values.index_select(0, idx), u.returns.index_select(0, idx),
                                 rmask, cfg.value_clip_range());
    share = rmask.sum().item<double>();
  }
  if (!comm->alone())
    share /= comm->sum(share);
  else
    share = 1.0;
  const auto g = comm->sum({rows ? vl.loss.item<double>() * share : 0.0, vl.clipfrac * share});
  const double vlv = g[0];
  if (!finite(vlv))
    throw Error(at(it) + ": loss/value is non-finite (" + std::to_string(vlv) + ")" + last_good());
  critic_opt->zero_grad();
  if (rows) (share == 1.0 ? vl.loss : vl.loss * share).backward();
  dist::all_reduce_gradients(*comm, critic_opt->parameters());
  const double gn = critic_opt->step(lr);
  if (!finite(gn)) throw Error(at(it) + ": critic gradient norm is non-finite" + last_good());
  mb["loss/value"] = vlv;
  mb["value/clipfrac"] = g[1];
  mb["grad_norm/value"] = gn;
  tot.sum_vl += vlv;
  tot.sum_vclip += g[1];
  ++tot.n_val;
}

// 6. PPO epochs over shuffled minibatches, with the optional target-KL early stop (SB3/CleanRL):
// after a minibatch whose epoch's running mean approx_kl exceeds target_kl, the rest is skipped.
UpdateTotals PpoTrainer::Impl::update(const UpdateBatch& u, int64_t it, const LogprobOptions& lo,
                                      const MinibatchFn& on_minibatch) {
  UpdateTotals tot;
  // The lr of this iteration: a function of `it` only, so replay and resume use the same one.
  tot.policy_lr = ppo_learning_rate(cfg, cfg.optimizer().lr(), it);
  if (has_critic()) tot.value_lr = ppo_learning_rate(cfg, cfg.critic_lr(), it);
  const int64_t MB = cfg.minibatch_size();
  const int64_t B = u.global_rows();  // minibatches are drawn from the global batch
  for (int epoch = 0; epoch < cfg.ppo_epochs() && !tot.early_stopped; ++epoch) {
    auto perm = permutation(B, mix_seed(cfg.seed(), (uint64_t)it, (uint64_t)epoch + 1));
    const double akl_before = tot.sum_akl;
    const int64_t pol_before = tot.n_pol;
    for (int64_t s = 0; s < B && !tot.early_stopped; s += MB) {
      const int64_t e = std::min(B, s + MB);
      std::vector<int64_t> mine;  // this rank's rows of the minibatch, as local indices
      for (int64_t k = s; k < e; ++k)
        if (perm[k] >= u.row0 && perm[k] < u.row0 + u.B) mine.push_back(perm[k] - u.row0);
      auto idx = torch::tensor(mine, torch::kLong).to(device);
      std::map<std::string, double> mb{
          {"iteration", (double)it}, {"epoch", (double)epoch}, {"minibatch", (double)(s / MB)}};
      tot.train_tokens += (int64_t)mine.size() * (u.P + u.N);
      const bool first = epoch == 0 && s == 0;
      if (it > critic_warmup() || first)
        policy_minibatch(u, idx, it, first, lo, tot.policy_lr, mb, tot);
      if (has_critic()) critic_minibatch(u, idx, it, tot.value_lr, mb, tot);
      ++tot.minibatches;
      const bool last = epoch + 1 == cfg.ppo_epochs() && e == B;  // nothing left to skip
      const int64_t epoch_pol = tot.n_pol - pol_before;
      if (cfg.target_kl() > 0 && !last && epoch_pol > 0 &&
          (tot.sum_akl - akl_before) / epoch_pol > cfg.target_kl()) {
        tot.early_stopped = true;
        mb["policy/early_stopped"] = 1;
      }
      if (on_minibatch) on_minibatch(mb);
    }
  }
  m.policy->eval();
  if (has_critic()) m.critic->eval();
  if (lora) lora->refresh(false);  // the weights after the last optimizer step
  if (critic_lora) critic_lora->refresh(false);
  return tot;
}

// 7. The iteration's stats (metrics.jsonl, TensorBoard, the progress line, warnings).
std::map<std::string, double> PpoTrainer::Impl::log(const Rollout& r, const UpdateTotals& tot,
                                                    double train_s, double iteration_s) {
  // Over the global batch: per-sample vectors are global already; masked means and rates are
  // summed over ranks (every rank makes the same collective calls; rank 0 writes).
  std::map<std::string, double> stats;
  const int64_t B = r.B_global;
  auto raw_t = torch::tensor(r.raw_all, torch::kFloat);
  double len_sum = 0, eos_sum = 0;
  for (int64_t b = 0; b < B; ++b) {
    len_sum += r.lengths_all[b];
    eos_sum += r.has_eos_all[b] ? 1 : 0;
  }
  auto mean_of = [](double sum, int64_t n, double none) { return n ? sum / n : none; };
  stats["score/mean"] = raw_t.mean().item<double>();
  stats["score/std"] = B > 1 ? raw_t.std().item<double>() : 0.0;
  stats["score/shaped_mean"] = torch::tensor(r.shaped_all, torch::kFloat).mean().item<double>();
  stats["kl/mean"] = r.kl_mean;
  stats["kl/coef"] = r.beta;
  stats["kl/coef_next"] = kl_ctl->value();
  const auto means =
      masked_means({{r.entropy, r.rmask}, {r.gae.advantages, r.rmask}, {r.gae.returns, r.rmask}});
  stats["entropy/mean"] = means[0];
  stats["loss/policy"] = mean_of(tot.sum_pl, tot.n_pol, 0.0);
  if (has_critic()) {
    stats["loss/value"] = mean_of(tot.sum_vl, tot.n_val, 0.0);
    stats["value/clipfrac"] = mean_of(tot.sum_vclip, tot.n_val, 0.0);
    stats["lr/value"] = tot.value_lr;
  }
  if (cfg.kl_in_loss()) stats["loss/kl"] = mean_of(tot.sum_kl_loss, tot.n_pol, 0.0);
  stats["policy/clipfrac"] = mean_of(tot.sum_clip, tot.n_pol, 0.0);
  stats["policy/approx_kl"] = mean_of(tot.sum_akl, tot.n_pol, 0.0);
  stats["policy/ratio_mean"] = mean_of(tot.sum_ratio, tot.n_pol, 1.0);
  stats["policy/ratio_first_dev"] = tot.ratio_first_dev;
  stats["policy/gen_logprob_dev"] = r.gen_logprob_dev;
  stats["policy/early_stopped"] = tot.early_stopped ? 1.0 : 0.0;
  stats["policy/minibatches"] = (double)tot.minibatches;
  stats["lr/policy"] = tot.policy_lr;
  // TRL's objective/*: per-sample means, each rank's weighted by its share of the batch.
  const double weight = (double)r.B / (double)B;
  const auto objective = ppo::objective_stats(r.kl, r.scores, r.beta);
  const auto obj = comm->sum({objective.non_score_reward * weight, objective.rlhf_reward * weight,
                              objective.scores * weight});
  stats["objective/non_score_reward"] = obj[0];
  stats["objective/rlhf_reward"] = obj[1];
  stats["objective/scores"] = obj[2];
  stats["advantages/mean"] = means[1];
  stats["returns/mean"] = means[2];
  stats["response/length_mean"] = len_sum / B;
  stats["response/eos_frac"] = eos_sum / B;
  const auto rates =
      comm->sum({r.gen.seconds > 0 ? r.gen.generated_tokens / r.gen.seconds : 0.0,
                 train_s > 0 ? tot.train_tokens / train_s : 0.0});  // ranks run side by side
  stats["speed/gen_tokens_per_s"] = rates[0];
  stats["speed/train_tokens_per_s"] = rates[1];
  stats["time/iteration_s"] = comm->max(iteration_s);
  if (extra_stats) {
    // Extra stats are means over samples (e.g. the gold monitor): weighted like objective/*.
    auto extra = extra_stats(r.prompts, r.gen.responses);
    std::vector<double> v;
    for (auto& kv : extra) v.push_back(kv.second * weight);
    v = comm->sum(v);
    size_t k = 0;
    for (auto& kv : extra) stats[kv.first] = v[k++];
  }
  for (auto& kv : stats)
    if (!finite(kv.second) && kv.first.rfind("speed/", 0) != 0)
      throw Error(at(r.iteration) + ": " + kv.first + " is non-finite" + last_good());
  if (comm->is_root()) report(r, tot, stats, iteration_s);
  return stats;
}

// The progress line's value loss: " v 0.1234" with a critic, nothing without one (critic-free
// estimators have no value loss to show).
static std::string value_loss_text(const std::map<std::string, double>& stats) {
  const auto it = stats.find("loss/value");
  if (it == stats.end()) return "";
  char buf[32];
  std::snprintf(buf, sizeof buf, " v %.4f", it->second);
  return buf;
}

// Rank 0's part of 7.: the warnings, the metrics line and the progress line.
void PpoTrainer::Impl::report(const Rollout& r, const UpdateTotals& tot,
                              const std::map<std::string, double>& stats, double iteration_s) {
  if (tot.ratio_first_dev > cfg.ratio_warn())
    std::fprintf(
        stderr,
        "ppo: warning: iteration %lld: policy/ratio_first_dev %.3g > %.3g: train/inference "
        "mismatch (padding, positions, dropout, or temperature not applied to log-probs)\n",
        (long long)r.iteration, tot.ratio_first_dev, cfg.ratio_warn());
  if (r.kl_mean > cfg.kl_warn_bound())
    std::fprintf(stderr, "ppo: warning: iteration %lld: kl/mean %.3f above kl_warn_bound %.3f\n",
                 (long long)r.iteration, r.kl_mean, cfg.kl_warn_bound());
  metrics->write(r.iteration, stats);
  std::fprintf(stderr,
               "ppo %lld/%d  score %.3f  kl %.3f  beta %.4f  loss p %.4f%s  len %.1f  eos %.2f"
               "  %.0f gen tok/s  %.1fs\n",
               (long long)r.iteration, cfg.iterations(), stats.at("score/mean"), r.kl_mean, r.beta,
               stats.at("loss/policy"), value_loss_text(stats).c_str(),
               stats.at("response/length_mean"), stats.at("response/eos_frac"),
               stats.at("speed/gen_tokens_per_s"), iteration_s);
}

// ---- the trainer
// ------------------------------------------------------------------------------------

namespace {

// Lines of iterations after the resumed checkpoint (run before an interruption) are re-run:
// drop them from a JSON-lines log.
void prune_log(const std::string& path, const char* key, int64_t completed) {
  if (!file_exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.contains(key) && j[key].is_number() && j[key].get<int64_t>() > completed)
      continue;
    kept += line + "\n";
  }
  write_file_atomic(path, kept);
}

// The run's identity for the resume rule (policy/training/training.h): the resolved config without
// out_dir, device, dtype, threads and iterations (a finished run can be extended; the lr schedule
// then stretches from there on), and the prompt ids (the models are named by paths in the config).
std::string ppo_fingerprint(const proto::PpoConfig& c,
                            const std::vector<std::vector<int64_t>>& prompts) {
  std::string ids;
  for (const auto& p : prompts) {
    for (auto id : p) ids += std::to_string(id) + " ";
    ids += "\n";
  }
  proto::PpoConfig copy = c;
  copy.set_prompts(c.prompts() + " sha256:" + sha256_hex(ids));
  return training::config_fingerprint(copy, {"out_dir", "device", "dtype", "threads", "iterations"},
                                      {});
}

}  // namespace

PpoTrainer::PpoTrainer(const proto::PpoConfig& config, PpoModels models, TeacherFn teacher,
                       std::vector<std::vector<int64_t>> prompts, std::string out_dir,
                       DecodeFn decode)
    : impl_(std::make_unique<Impl>()) {
  validate_ppo_config(config);
  auto& I = *impl_;
  const bool critic = uses_critic(config);
  const bool with_lora = config.has_lora() && config.lora().rank() > 0;
  if (!models.policy) throw Error("ppo: the policy model is required");
  if (critic && !models.critic && config.critic() != "policy_base")
    throw Error(critic_on_reward_base(config)
                    ? "ppo: critic \"reward_base\" needs PpoModels::critic built on the reward "
                      "model's base (reward_base_critic)"
                    : "ppo: a critic model is required (or critic: \"policy_base\")");
  if (!models.reference && !with_lora)
    throw Error("ppo: a reference model is required (without LoRA the policy's weights train)");
  if (models.reference &&
      models.policy->config().vocab_size != models.reference->config().vocab_size)
    throw Error("ppo: policy vocab_size " + std::to_string(models.policy->config().vocab_size) +
                " differs from the reference's " +
                std::to_string(models.reference->config().vocab_size));
  if (prompts.empty()) throw Error("ppo: no prompts");
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) throw Error("ppo: prompt " + std::to_string(i) + " has no tokens");
    // Long prompts keep their end, and their BOS: [bos] + the last max_prompt_tokens - 1 tokens.
    prompts[i] = truncate_prompt(std::move(prompts[i]), config.max_prompt_tokens(),
                                 models.policy->config().bos_id);
  }
  for (auto i : permutation((int64_t)prompts.size(), mix_seed(config.seed(), 0x5eed)))
    I.prompts.push_back(prompts[i]);
  I.teacher = std::move(teacher);
  I.decode = std::move(decode);
  I.out_dir = std::move(out_dir);
  I.setup(config, std::move(models));
  if (config.batch_size() / config.samples_per_prompt() < I.comm->size())
    throw Error(
        "ppo config: field 'batch_size': expected at least one prompt (group of "
        "samples_per_prompt = " +
        std::to_string(config.samples_per_prompt()) + " answers) per rank (" +
        std::to_string(I.comm->size()) + " ranks), got " + std::to_string(config.batch_size()));
  I.fingerprint = ppo_fingerprint(I.cfg, I.prompts);
  make_dirs(I.out_dir + "/rollouts");
  if (auto dir = I.checkpoints().resume_dir(I.fingerprint)) {
    try {
      I.load_checkpoint(*dir);
      proto::PpoState st;
      st.ParseFromString(read_file(*dir + "/state.pb"));
      completed_ = st.iteration();
    } catch (...) {
      rethrow_with_context("ppo: resuming from " + *dir);
    }
    if (I.comm->is_root()) {
      std::fprintf(stderr, "ppo: resuming from %s (iteration %lld done, kl_coef %.5g)\n",
                   dir->c_str(), (long long)completed_, I.kl_ctl->value());
      prune_log(I.out_dir + "/metrics.jsonl", "step", completed_);
      prune_log(I.out_dir + "/minibatches.jsonl", "iteration", completed_);
    }
  }
  // Every rank starts where rank 0 does (the prompts of an iteration follow from its number).
  training::NamedTensors weights = I.policy_tensors();
  if (I.has_critic())
    for (auto& t : training::module_tensors(*I.m.critic)) weights.push_back(t);
  training::check_same_start(
      *I.comm, "ppo", I.out_dir,
      {I.fingerprint, completed_, "iteration " + std::to_string(completed_ + 1) + " next"},
      weights);
  if (I.comm->is_root())
    I.metrics = std::make_unique<MetricsWriter>(I.out_dir, /*append=*/completed_ > 0);
}

PpoTrainer::~PpoTrainer() = default;

void PpoTrainer::set_extra_stats(ExtraStatsFn fn) { impl_->extra_stats = std::move(fn); }

void PpoTrainer::set_stop_ids(std::vector<int64_t> ids) { impl_->stop_ids = std::move(ids); }

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
  if (impl_->last_checkpoint.empty() ||
      impl_->last_checkpoint.find(iter_name(completed_)) == std::string::npos)
    save_checkpoint_now();
  if (impl_->lora) {
    // The caller's policy becomes the merged plain model (what the stage saves as <out>/model).
    impl_->lora->merge();
    impl_->lora.reset();
    store_matrices_as(impl_->m.policy, torch::kFloat);  // a bf16 base: checkpoints are float32
  }
}

void PpoTrainer::save_checkpoint_now() { impl_->save_checkpoint(completed_); }

std::map<std::string, double> PpoTrainer::step() {
  auto& I = *impl_;
  const auto t_start = std::chrono::steady_clock::now();
  Rollout r = I.sample(completed_ + 1);
  I.score(r);
  I.shape_scores(r);
  I.evaluate(r);
  I.advantages(r);
  I.write_rollouts(r);

  const auto t_train = std::chrono::steady_clock::now();
  // kl_in_loss: the reference log-probs and beta for the k3 loss term.
  const bool kl_loss = I.cfg.kl_in_loss();
  UpdateBatch ub{r.ids,
                 r.full_mask,
                 r.rmask,
                 r.old_logp,
                 r.values,
                 r.adv_train,
                 r.gae.returns,
                 r.P,
                 r.N,
                 r.B,
                 r.row0,
                 r.B_global,
                 kl_loss ? r.ref_logp : torch::Tensor(),
                 kl_loss ? r.beta : 0.0};
  std::ofstream mb_log;
  if (I.comm->is_root()) mb_log.open(I.out_dir + "/minibatches.jsonl", std::ios::app);
  UpdateTotals tot = I.update(ub, r.iteration, logprob_options(I.cfg),
                              [&](const std::map<std::string, double>& mb) {
                                if (mb_log.is_open()) mb_log << minibatch_json(mb) << "\n";
                              });
  mb_log.close();
  const auto t_end = std::chrono::steady_clock::now();

  I.kl_ctl->update(r.kl_mean, r.B_global);  // per-sequence KL sum (Ziegler et al.)
  auto stats = I.log(r, tot, std::chrono::duration<double>(t_end - t_train).count(),
                     std::chrono::duration<double>(t_end - t_start).count());
  completed_ = r.iteration;
  history_.push_back(stats);
  return stats;
}

std::vector<std::map<std::string, double>> PpoTrainer::replay_update(
    const std::string& run_dir, const std::string& rollout_file, const std::string& device) {
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
  proto::PpoConfig cfg;
  parse_text_config(st.config_text(), ck + "/state.pb config_text", &cfg);
  if (!device.empty()) cfg.set_device(device);
  // The trainer as the live run built it: the same setup, then the checkpoint's state.
  Impl I;
  I.out_dir = run_dir;
  try {
    PpoModels models;
    models.policy = policy::load_checkpoint(ck + "/policy").model;
    if (uses_critic(cfg)) models.critic = policy::load_checkpoint(ck + "/critic").model;
    I.setup(cfg, std::move(models));
    I.load_checkpoint(ck);
  } catch (...) {
    rethrow_with_context("replay --update: loading " + ck);
  }
  UpdateBatch ub = update_batch_from_records(recs, I.m.policy->config().pad_id, cfg, rollout_file);
  auto dev = [&](const torch::Tensor& t) { return t.to(I.device); };
  for (auto* t : {&ub.ids, &ub.full_mask, &ub.rmask, &ub.old_logp, &ub.values, &ub.adv_train,
                  &ub.returns, &ub.ref_logp})
    if (t->defined()) *t = dev(*t);
  std::vector<std::map<std::string, double>> out;
  I.update(ub, it, logprob_options(cfg),
           [&](const std::map<std::string, double>& mb) { out.push_back(mb); });
  return out;
}

}  // namespace rlhf::policy
