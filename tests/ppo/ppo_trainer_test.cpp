// The PPO loop on a toy task: a tiny random decoder learns to emit a chosen token because a
// programmatic teacher counts it. Also: same seed -> same stats, resume -> same numbers, NaN guard.
#include "policy/ppo/ppo_trainer.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/files.h"
#include "common/launch.h"
#include "common/process.h"
#include "policy/model/checkpoint.h"
#include "policy/model/model.h"
#include "policy/ppo/ppo_replay.h"
#include "policy/ppo/rollout_file.h"
#include "policy/runtime/distributed.h"
#include "policy/tokenizer/prompt_format.h"
#include "policy/training/training.h"
#include "tests/fixtures/optimizer_state.h"
#include "tests/fixtures/tiny_model.h"
#include "tests/test_support.h"

using namespace rlhf;
using rlhf::testing::TempDir;

namespace {

constexpr int64_t kTarget = 7;  // the token the teacher rewards

// The tiny model (tests/fixtures/tiny_model.h) over the toy task's 16 tokens.
policy::ModelConfig toy_model_config() {
  policy::ModelConfig c = policy::testing::tiny_config();
  c.vocab_size = 16;
  return c;
}

policy::PpoModels make_models(uint64_t seed) {
  torch::manual_seed(seed);
  policy::PpoModels m;
  m.policy = policy::Transformer(toy_model_config());
  policy::init_weights(m.policy);
  m.reference = policy::clone_model(m.policy);
  m.critic = policy::clone_model(m.policy);
  m.critic->add_value_head();
  return m;
}

std::vector<std::vector<int64_t>> make_prompts() {
  std::vector<std::vector<int64_t>> p;
  for (int i = 0; i < 24; ++i) {
    std::vector<int64_t> ids{1};
    for (int k = 0; k < 1 + i % 3; ++k) ids.push_back(3 + (i * 5 + k * 3) % 13);
    p.push_back(ids);
  }
  return p;
}

// Counts the target token in each response (EOS and anything else score nothing).
std::vector<float> count_teacher(const std::vector<std::vector<int64_t>>&,
                                 const std::vector<std::vector<int64_t>>& responses) {
  std::vector<float> s;
  for (const auto& r : responses) s.push_back((float)std::count(r.begin(), r.end(), kTarget));
  return s;
}

proto::PpoConfig toy_config(int iterations) {
  proto::PpoConfig c;
  c.set_iterations(iterations);
  c.set_batch_size(32);
  c.set_minibatch_size(16);
  c.set_ppo_epochs(4);
  c.mutable_optimizer()->set_lr(3e-3);
  c.set_critic_lr(3e-3);
  c.set_max_new_tokens(10);
  c.set_kl_coef(0.05);
  c.set_seed(42);
  c.set_checkpoint_every(0);
  c.set_device(rlhf::testing::test_device_name());
  return c;
}

bool same_stats(const std::map<std::string, double>& a, const std::map<std::string, double>& b) {
  for (auto& kv : a) {
    if (kv.first.rfind("speed/", 0) == 0 || kv.first.rfind("time/", 0) == 0) continue;
    auto it = b.find(kv.first);
    if (it == b.end() || it->second != kv.second) {
      ADD_FAILURE() << kv.first << ": " << kv.second << " vs "
                    << (it == b.end() ? std::string("missing") : std::to_string(it->second));
      return false;
    }
  }
  return true;
}

}  // namespace

TEST(PpoTrainer, ToyTaskRaisesTeacherScoreWithBoundedKl) {
  TempDir dir("ppo_toy");
  auto cfg = toy_config(30);
  cfg.set_keep_rollouts(5);
  // With beta = 0.3 the KL-regularised optimum (pi ~ pi_ref * exp(r / beta)) puts about 0.65 on
  // the target token: roughly 12 nats per 10-token response, against log(16) * 10 = 27.7 for a
  // policy that only emits the target (what beta = 0.05 reaches on this task).
  cfg.set_kl_coef(0.3);
  policy::PpoTrainer trainer(cfg, make_models(1), count_teacher, make_prompts(), dir.path());
  trainer.run();
  const auto& h = trainer.history();
  ASSERT_EQ(h.size(), 30u);
  auto mean_of = [&](size_t from, size_t to, const char* key) {
    double s = 0;
    for (size_t i = from; i < to; ++i) s += h[i].at(key);
    return s / (to - from);
  };
  double first = mean_of(0, 3, "score/mean"), last = mean_of(27, 30, "score/mean");
  double max_kl = 0;
  for (auto& s : h) max_kl = std::max(max_kl, s.at("kl/mean"));
  std::printf("score/mean first 3: %.3f  last 3: %.3f  max kl/mean %.3f  final kl %.3f\n", first,
              last, max_kl, h.back().at("kl/mean"));
  EXPECT_GT(last, first + 1.5) << "first " << first << " last " << last;
  EXPECT_LT(max_kl, 18.0);
  for (auto& s : h) EXPECT_LT(s.at("policy/ratio_first_dev"), 1e-3);

  // Every listed stat is in metrics.jsonl, one line per iteration.
  std::ifstream in(dir / "metrics.jsonl");
  std::string line;
  int lines = 0;
  nlohmann::json last_json;
  while (std::getline(in, line)) {
    last_json = nlohmann::json::parse(line);
    ++lines;
  }
  EXPECT_EQ(lines, 30);
  for (const char* k :
       {"score/mean", "score/std", "kl/mean", "kl/coef", "entropy/mean", "loss/policy",
        "loss/value", "policy/clipfrac", "policy/approx_kl", "policy/ratio_mean", "value/clipfrac",
        "advantages/mean", "returns/mean", "response/length_mean", "response/eos_frac",
        "speed/gen_tokens_per_s", "speed/train_tokens_per_s", "policy/ratio_first_dev"})
    EXPECT_TRUE(last_json.contains(k)) << k;

  // Rollouts: retention kept the newest 5; the last one replays exactly.
  EXPECT_FALSE(file_exists(dir / "rollouts/iter-0025.pb"));
  EXPECT_TRUE(file_exists(dir / "rollouts/iter-0026.pb"));
  auto recs = policy::read_rollouts(dir / "rollouts/iter-0030.pb");
  ASSERT_EQ(recs.size(), 32u);
  for (const auto& r : recs) {
    auto s = policy::recompute_sample(r, {});
    EXPECT_EQ(s.mismatches, 0);
    EXPECT_EQ(r.iteration(), 30);
  }
  // The final checkpoint holds a regular policy checkpoint folder.
  EXPECT_TRUE(file_exists(dir / "checkpoints/latest"));
  EXPECT_TRUE(file_exists(trainer.checkpoint_dir() + "/policy/model.safetensors"));
}

// dtype bf16: the frozen reference keeps its projection matrices in bfloat16. Under autocast they
// round exactly as the policy's float32 matrices do, so at the first rollout (policy = reference)
// the KL is exactly 0, as in float32.
TEST(PpoTrainer, Bf16ReferenceMatricesStayBf16WithUnchangedLogprobs) {
  TempDir dir("ppo_bf16_ref");
  auto cfg = toy_config(1);
  cfg.set_batch_size(8);
  cfg.set_minibatch_size(8);
  cfg.set_ppo_epochs(1);
  cfg.set_max_new_tokens(4);
  cfg.set_dtype("bf16");
  auto models = make_models(3);
  auto reference = models.reference;
  policy::PpoTrainer t(cfg, models, count_teacher, make_prompts(), dir.path());
  for (auto& [name, p] : reference->hf_named_parameters()) {
    const bool matrix = name.find("_proj.weight") != std::string::npos || name == "lm_head.weight";
    EXPECT_EQ(p.scalar_type(), matrix ? torch::kBFloat16 : torch::kFloat) << name;
  }
  for (auto& p : models.policy->parameters()) EXPECT_EQ(p.scalar_type(), torch::kFloat);
  t.step();
  ASSERT_EQ(t.history().size(), 1u);
  EXPECT_EQ(t.history()[0].at("kl/mean"), 0.0);
}

// dtype bf16 with LoRA: the trainer stores the policy's frozen base, matrices and embedding table,
// in bfloat16 in place (no float32 copy remains: the parameters hold exactly those bytes), the
// adapters float32; the critic on that base shares it; the run ends with a float32 merged
// policy (checkpoints are float32). fp32 leaves the base float32.
TEST(PpoTrainer, Bf16LoraBaseIsStoredBf16AndMergesToFloat32) {
  for (const std::string dtype : {"bf16", "fp32"}) {
    auto cfg = toy_config(2);
    cfg.set_batch_size(8);
    cfg.set_minibatch_size(8);
    cfg.set_ppo_epochs(1);
    cfg.set_dtype(dtype);
    cfg.mutable_lora()->set_rank(4);
    cfg.set_critic("policy_base");
    auto models = make_models(8);
    models.reference = nullptr;
    models.critic = nullptr;
    auto policy = models.policy;
    int64_t f32_bytes = 0, narrowed_bytes = 0;
    for (auto& [name, p] : policy->hf_named_parameters()) {
      f32_bytes += p.numel() * 4;
      const bool narrowed = name.find("_proj.weight") != std::string::npos ||
                            name == "lm_head.weight" || name == "model.embed_tokens.weight";
      narrowed_bytes += p.numel() * (narrowed ? 2 : 4);
    }
    TempDir dir("ppo_bf16_base_" + dtype);
    policy::PpoTrainer t(cfg, models, count_teacher, make_prompts(), dir.path());
    int64_t bytes = 0;
    for (auto& [name, p] : policy->hf_named_parameters()) {
      const bool narrowed = name.find("_proj.weight") != std::string::npos ||
                            name == "lm_head.weight" || name == "model.embed_tokens.weight";
      EXPECT_EQ(p.scalar_type(), narrowed && dtype == "bf16" ? torch::kBFloat16 : torch::kFloat)
          << dtype << " " << name;
      bytes += p.numel() * p.element_size();
    }
    EXPECT_EQ(bytes, dtype == "bf16" ? narrowed_bytes : f32_bytes) << dtype;
    t.run();
    ASSERT_EQ(t.history().size(), 2u);
    for (const auto& [k, v] : t.history()[1]) EXPECT_TRUE(std::isfinite(v)) << dtype << " " << k;
    for (auto& p : policy->parameters()) EXPECT_EQ(p.scalar_type(), torch::kFloat) << dtype;
  }
}

TEST(PpoTrainer, SameSeedSameStatsAndResume) {
  TempDir a("ppo_a"), b("ppo_b");
  auto cfg = toy_config(6);
  cfg.set_checkpoint_every(3);
  cfg.set_adaptive_kl(true);  // the controller's value must survive the resume too
  cfg.set_kl_target(1.0);
  cfg.set_kl_horizon(200);
  cfg.set_normalize_scores(true);
  policy::PpoTrainer ta(cfg, make_models(5), count_teacher, make_prompts(), a.path());
  ta.run();
  auto full = ta.history();
  ASSERT_EQ(full.size(), 6u);

  {
    // Interrupted after 3 iterations (same config: the lr schedule depends on `iterations`).
    policy::PpoTrainer tb(cfg, make_models(5), count_teacher, make_prompts(), b.path());
    tb.save_checkpoint_now();
    for (int i = 0; i < 3; ++i) tb.step();
    tb.save_checkpoint_now();
    ASSERT_EQ(tb.history().size(), 3u);
    for (int i = 0; i < 3; ++i)
      EXPECT_TRUE(same_stats(full[i], tb.history()[i])) << "iter " << i + 1;
  }
  // A new trainer resumes at 4. The reference is an input (re-loaded by the stage); the policy and
  // critic start from other weights here and must be replaced by the checkpoint's.
  auto models = make_models(5);
  auto other = make_models(99);
  models.policy = other.policy;
  models.critic = other.critic;
  policy::PpoTrainer tc(cfg, models, count_teacher, make_prompts(), b.path());
  EXPECT_EQ(tc.completed_iterations(), 3);
  tc.run();
  ASSERT_EQ(tc.history().size(), 3u);
  for (int i = 0; i < 3; ++i)
    EXPECT_TRUE(same_stats(full[3 + i], tc.history()[i])) << "iter " << i + 4;
  EXPECT_EQ(ta.kl_coef(), tc.kl_coef());
}

TEST(PpoTrainer, NonFiniteScoreStopsNamingIterationAndResumes) {
  TempDir dir("ppo_nan");
  auto cfg = toy_config(5);
  cfg.set_checkpoint_every(2);
  int calls = 0;
  auto teacher = [&](const std::vector<std::vector<int64_t>>& p,
                     const std::vector<std::vector<int64_t>>& r) {
    auto s = count_teacher(p, r);
    if (++calls == 4) s[4] = std::nanf("");
    return s;
  };
  {
    policy::PpoTrainer t(cfg, make_models(2), teacher, make_prompts(), dir.path());
    try {
      t.run();
      FAIL() << "expected an error";
    } catch (const Error& e) {
      std::string m = e.what();
      EXPECT_NE(m.find("iteration 4"), std::string::npos) << m;
      EXPECT_NE(m.find("teacher score"), std::string::npos) << m;
      EXPECT_NE(m.find("iter-0002"), std::string::npos) << m;  // the last good checkpoint
    }
  }
  EXPECT_EQ(read_file(dir / "checkpoints/latest"), "iter-0002\n");
  // Resuming re-runs iteration 3 (logged before the failure) without duplicating its line.
  cfg.set_iterations(4);
  policy::PpoTrainer t2(cfg, make_models(2), count_teacher, make_prompts(), dir.path());
  EXPECT_EQ(t2.completed_iterations(), 2);
  t2.run();
  std::ifstream in(dir / "metrics.jsonl");
  std::string line;
  std::vector<int> steps;
  while (std::getline(in, line)) steps.push_back(nlohmann::json::parse(line)["step"].get<int>());
  EXPECT_EQ(steps, (std::vector<int>{1, 2, 3, 4}));
}

TEST(PpoTrainer, ReplayUpdateReproducesLiveMinibatchStats) {
  TempDir dir("ppo_replay_update");
  auto cfg = toy_config(3);
  cfg.set_checkpoint_every(1);
  cfg.set_keep_checkpoints(10);
  policy::PpoTrainer t(cfg, make_models(8), count_teacher, make_prompts(), dir.path());
  t.run();
  // Live per-minibatch lines of iteration 3.
  std::vector<nlohmann::json> live;
  std::ifstream in(dir / "minibatches.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j["iteration"].get<int>() == 3) live.push_back(j);
  }
  ASSERT_EQ(live.size(), 8u);  // 4 epochs x 2 minibatches
  auto replayed = policy::PpoTrainer::replay_update(dir.path(), dir / "rollouts/iter-0003.pb");
  ASSERT_EQ(replayed.size(), live.size());
  for (size_t i = 0; i < live.size(); ++i)
    for (auto& kv : replayed[i]) {
      ASSERT_TRUE(live[i].contains(kv.first)) << kv.first;
      EXPECT_EQ(live[i][kv.first].get<double>(), kv.second) << kv.first << " minibatch " << i;
    }
  // Iteration 1 replays from the start state (iter-0000).
  EXPECT_EQ(policy::PpoTrainer::replay_update(dir.path(), dir / "rollouts/iter-0001.pb").size(),
            8u);

  // The command prints the same lines (when the rlhf binary is built).
  if (file_exists(rlhf::testing::rlhf_binary())) {
    std::string out;
    int rc = rlhf::testing::run_command(rlhf::testing::rlhf_binary() + " replay " +
                                            (dir / "rollouts/iter-0003.pb") + " --update --run " +
                                            dir.path() + " --json",
                                        &out, /*merge_stderr=*/false);
    ASSERT_EQ(rc, 0) << out;
    std::istringstream lines(out);
    size_t i = 0;
    while (std::getline(lines, line)) {
      ASSERT_LT(i, live.size());
      auto j = nlohmann::json::parse(line);
      EXPECT_EQ(j["loss/policy"].get<double>(), live[i]["loss/policy"].get<double>()) << i;
      EXPECT_EQ(j["loss/value"].get<double>(), live[i]["loss/value"].get<double>()) << i;
      ++i;
    }
    EXPECT_EQ(i, live.size());
  }
}

// LoRA: only the adapters train (the base weights stay bit-identical), the reference is the
// untouched separate copy, and after run() the policy is the merged plain model.
TEST(PpoTrainer, LoraTrainsAdaptersOnlyAndMerges) {
  TempDir dir("ppo_lora");
  auto cfg = toy_config(3);
  cfg.set_batch_size(16);
  cfg.set_minibatch_size(8);
  cfg.set_ppo_epochs(2);
  cfg.mutable_optimizer()->set_lr(2e-2);
  cfg.mutable_lora()->set_rank(4);  // targets default q, v
  auto models = make_models(3);
  auto snapshot = [](policy::Transformer& m) {
    std::map<std::string, torch::Tensor> out;
    for (auto& np : m->named_parameters()) out[np.key()] = np.value().detach().clone();
    return out;
  };
  auto base = snapshot(models.policy);
  policy::PpoTrainer trainer(cfg, models, count_teacher, make_prompts(), dir.path());
  trainer.run();
  ASSERT_EQ(trainer.history().size(), 3u);
  const std::string ck = trainer.checkpoint_dir();
  EXPECT_TRUE(file_exists(ck + "/adapter/adapter_model.safetensors"));

  // The checkpoint's base weights (policy.pt, what a resume loads before the adapters) are
  // bit-identical to the start: nothing but the adapters trained.
  policy::Transformer saved_base(toy_model_config());
  policy::training::load_tensors(policy::training::module_tensors(*saved_base), ck + "/policy.pt");
  for (auto& [name, t] : snapshot(saved_base))
    EXPECT_TRUE(torch::equal(t, base.at(name))) << name << " changed in the frozen base";
  for (auto& [name, t] : snapshot(models.reference))
    EXPECT_TRUE(torch::equal(t, base.at(name))) << name << " changed in the reference";

  // The policy is now the merged model: q/v projections moved, nothing else did.
  int moved = 0;
  for (auto& [name, t] : snapshot(models.policy)) {
    const bool adapted =
        name.find(".q_proj.") != std::string::npos || name.find(".v_proj.") != std::string::npos;
    if (adapted)
      moved += !torch::equal(t, base.at(name));
    else
      EXPECT_TRUE(torch::equal(t, base.at(name))) << name;
  }
  EXPECT_EQ(moved, 2 * toy_model_config().n_layers);

  // Saved as a plain checkpoint, it loads and computes the same logits; the checkpoint's
  // policy/ folder is the same merged model.
  policy::save_checkpoint(models.policy, dir / "model", {});
  {
    auto ids = torch::tensor(std::vector<int64_t>{1, 5, 9, 7, 3}).unsqueeze(0);
    torch::NoGradGuard ng;
    models.policy->eval();
    auto want = models.policy->forward(ids);
    for (const std::string& d : {dir / "model", ck + "/policy"}) {
      auto loaded = policy::load_checkpoint(d).model;
      loaded->eval();
      EXPECT_TRUE(torch::allclose(loaded->forward(ids), want, 1e-5, 1e-6)) << d;
    }
  }

  // Resume: 2 iterations, then a new trainer (other starting weights) continues from the
  // checkpoint's base + adapters and reproduces iteration 3 of the uninterrupted run.
  TempDir b("ppo_lora_b");
  auto full_cfg = cfg;
  full_cfg.set_checkpoint_every(1);
  {
    // Interrupted after 2 iterations (same config: the lr schedule depends on `iterations`).
    policy::PpoTrainer tb(full_cfg, make_models(3), count_teacher, make_prompts(), b.path());
    tb.step();
    tb.step();
    tb.save_checkpoint_now();
  }
  auto resumed_models = make_models(3);
  resumed_models.policy = make_models(77).policy;
  policy::PpoTrainer tc(full_cfg, resumed_models, count_teacher, make_prompts(), b.path());
  EXPECT_EQ(tc.completed_iterations(), 2);
  tc.run();
  ASSERT_EQ(tc.history().size(), 1u);
  EXPECT_TRUE(same_stats(trainer.history()[2], tc.history()[0]));
}

// LoRA without a separate reference: the reference is the policy's base with its adapters off.
// Its log-probs (saved in the rollout files) and every stat equal, bit for bit, those of a run
// with a separate reference copy, in fp32 and bf16; iteration 2 runs after the adapters moved,
// so switching them off is what makes the two agree.
TEST(PpoTrainer, LoraReferenceIsTheBaseWithAdaptersOff) {
  for (const std::string dtype : {"fp32", "bf16"}) {
    auto cfg = toy_config(2);
    cfg.set_batch_size(8);
    cfg.set_minibatch_size(8);
    cfg.set_ppo_epochs(1);
    cfg.set_dtype(dtype);
    cfg.mutable_optimizer()->set_lr(2e-2);
    cfg.mutable_lora()->set_rank(4);
    TempDir a("ppo_lora_ref_a"), b("ppo_lora_ref_b");
    policy::PpoTrainer separate(cfg, make_models(5), count_teacher, make_prompts(), a.path());
    separate.run();
    auto shared_models = make_models(5);
    shared_models.reference = nullptr;
    policy::PpoTrainer shared(cfg, shared_models, count_teacher, make_prompts(), b.path());
    shared.run();
    ASSERT_EQ(shared.history().size(), 2u);
    for (size_t i = 0; i < 2; ++i)
      EXPECT_TRUE(same_stats(separate.history()[i], shared.history()[i])) << dtype << " " << i;
    auto ra = policy::read_rollouts(a / "rollouts/iter-0002.pb");
    auto rb = policy::read_rollouts(b / "rollouts/iter-0002.pb");
    ASSERT_EQ(ra.size(), rb.size());
    for (size_t i = 0; i < ra.size(); ++i) {
      ASSERT_EQ(ra[i].ref_logprobs_size(), rb[i].ref_logprobs_size());
      for (int t = 0; t < ra[i].ref_logprobs_size(); ++t)
        EXPECT_EQ(ra[i].ref_logprobs(t), rb[i].ref_logprobs(t)) << dtype << " " << i << " " << t;
      ASSERT_EQ(ra[i].logprobs_size(), ra[i].ref_logprobs_size());
    }
    // The adapters moved by iteration 2: policy and reference log-probs differ somewhere.
    bool differ = false;
    for (const auto& r : rb)
      for (int t = 0; t < r.logprobs_size(); ++t) differ |= r.logprobs(t) != r.ref_logprobs(t);
    EXPECT_TRUE(differ) << dtype;
  }
  // Without LoRA the policy trains in full and cannot be its own reference.
  auto models = make_models(5);
  models.reference = nullptr;
  TempDir c("ppo_no_ref");
  EXPECT_THROW(policy::PpoTrainer(toy_config(1), models, count_teacher, make_prompts(), c.path()),
               Error);
}

// share_base: the critic of critic "policy_base" holds the policy's tensors (the same storage),
// computes the same hidden states, and adding a value head or adapters to it leaves the policy as
// it was.
TEST(PpoTrainer, ShareBaseAliasesThePolicyWeights) {
  auto models = make_models(4);
  auto critic = policy::share_base(models.policy);
  auto pp = models.policy->named_parameters();
  for (auto& p : critic->named_parameters())
    EXPECT_EQ(p.value().data_ptr(), pp[p.key()].data_ptr()) << p.key();
  critic->add_value_head();
  EXPECT_FALSE(models.policy->config().value_head);
  torch::NoGradGuard ng;
  auto ids = torch::tensor(std::vector<int64_t>{1, 5, 9, 7}).unsqueeze(0);
  EXPECT_TRUE(torch::equal(critic->hidden_states(ids), models.policy->hidden_states(ids)));
}

// critic "policy_base": the value head and the critic's own adapters train on the policy's shared
// frozen base (no critic model is given); the base stays bit-identical, the value loss falls
// over the iterations, critic.pt holds the critic's adapters, and a resume reproduces the run.
TEST(PpoTrainer, CriticOnThePolicyBaseTrainsItsAdaptersAndResumes) {
  auto cfg = toy_config(3);
  cfg.set_batch_size(16);
  cfg.set_minibatch_size(8);
  cfg.set_ppo_epochs(2);
  cfg.set_checkpoint_every(1);
  cfg.mutable_lora()->set_rank(4);
  cfg.set_critic("policy_base");
  cfg.mutable_critic_lora()->set_rank(2);
  auto models = make_models(6);
  models.reference = nullptr;
  models.critic = nullptr;
  std::map<std::string, torch::Tensor> base;
  for (auto& np : models.policy->named_parameters()) base[np.key()] = np.value().detach().clone();
  TempDir a("ppo_critic_base");
  policy::PpoTrainer trainer(cfg, models, count_teacher, make_prompts(), a.path());
  for (int i = 0; i < 3; ++i) trainer.step();
  trainer.save_checkpoint_now();
  const auto& h = trainer.history();
  EXPECT_LT(h[2].at("loss/value"), h[0].at("loss/value"));
  for (auto& np : models.policy->named_parameters())
    EXPECT_TRUE(torch::equal(np.value(), base.at(np.key()))) << np.key() << " moved";
  torch::serialize::InputArchive ar;
  ar.load_from(trainer.checkpoint_dir() + "/critic.pt");
  torch::Tensor t;
  EXPECT_TRUE(
      ar.try_read("lora.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", t));
  EXPECT_EQ(t.size(0), 2);  // critic_lora's rank, not the policy's
  EXPECT_TRUE(ar.try_read("value_head.weight", t));

  TempDir b("ppo_critic_base_b");
  {
    auto m = make_models(6);
    m.reference = m.critic = nullptr;
    policy::PpoTrainer first(cfg, m, count_teacher, make_prompts(), b.path());
    first.step();
    first.step();
    first.save_checkpoint_now();
  }
  auto m = make_models(6);
  m.reference = m.critic = nullptr;
  policy::PpoTrainer resumed(cfg, m, count_teacher, make_prompts(), b.path());
  ASSERT_EQ(resumed.completed_iterations(), 2);
  resumed.step();
  EXPECT_TRUE(same_stats(h[2], resumed.history()[0]));

  // It needs LoRA (a frozen base to share) and no value_model.
  auto bad = toy_config(1);
  bad.set_critic("policy_base");
  EXPECT_THROW(policy::validate_ppo_config(bad), Error);
  bad.mutable_lora()->set_rank(4);
  EXPECT_NO_THROW(policy::validate_ppo_config(bad));
  bad.set_value_model("rm");
  EXPECT_THROW(policy::validate_ppo_config(bad), Error);
}

namespace {

// A toy reward model (the toy task's tiny model with a score head) and a teacher scoring with it:
// the value head read at each sequence's last token, as a reward model scores.
policy::Transformer toy_reward_model(uint64_t seed) {
  torch::manual_seed(seed);
  auto c = toy_model_config();
  c.value_head = true;
  policy::Transformer rm(c);
  policy::init_weights(rm);
  rm->eval();
  return rm;
}

std::vector<float> reward_scores(policy::Transformer& rm,
                                 const std::vector<std::vector<int64_t>>& prompts,
                                 const std::vector<std::vector<int64_t>>& responses) {
  torch::NoGradGuard no_grad;
  std::vector<float> out;
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::vector<int64_t> ids = prompts[i];
    ids.insert(ids.end(), responses[i].begin(), responses[i].end());
    auto h = rm->hidden_states(torch::tensor(ids).unsqueeze(0));
    out.push_back(rm->values_from_hidden(h).index({0, -1}).item<float>());
  }
  return out;
}

proto::PpoConfig reward_base_config() {
  auto cfg = toy_config(3);
  cfg.set_batch_size(16);
  cfg.set_minibatch_size(8);
  cfg.set_ppo_epochs(2);
  cfg.set_checkpoint_every(1);
  cfg.set_keep_checkpoints(10);
  cfg.set_critic("reward_base");
  return cfg;
}

}  // namespace

// critic "reward_base": the critic is the reward model's base (the same storage) with a value head
// copied from the score head and its own adapters (rank 8 by default: the policy has no LoRA).
// While its adapters and head train, the teacher scores with the plain reward model: bit-equal to
// a separate copy of the reward model on every batch; the reward model stays bit-identical;
// critic.pt holds the head and the adapters only; a resume restores them bit for bit and
// reproduces the run; `replay --update` reproduces the live minibatches.
TEST(PpoTrainer, CriticOnTheRewardBaseSharesTheTeachersWeights) {
  const auto cfg = reward_base_config();
  auto rm = toy_reward_model(21);
  auto separate = policy::clone_model(rm);  // a separate teacher holding the same weights
  std::map<std::string, torch::Tensor> rm_start;
  for (auto& np : rm->named_parameters()) rm_start[np.key()] = np.value().detach().clone();
  int batches = 0, unequal = 0;
  auto teacher = [&](const std::vector<std::vector<int64_t>>& p,
                     const std::vector<std::vector<int64_t>>& r) {
    auto shared = reward_scores(rm, p, r);
    auto plain = reward_scores(separate, p, r);
    ++batches;
    for (size_t i = 0; i < shared.size(); ++i) unequal += shared[i] != plain[i];
    return shared;
  };
  auto models = make_models(9);
  models.critic = policy::reward_base_critic(rm);
  auto rp = rm->named_parameters();
  for (auto& p : models.critic->named_parameters()) {
    if (p.key().rfind("value_head.", 0) == 0) {  // a copy of the score head, not the same tensor
      EXPECT_TRUE(torch::equal(p.value(), rp[p.key()])) << p.key();
      EXPECT_NE(p.value().data_ptr(), rp[p.key()].data_ptr()) << p.key();
    } else {
      EXPECT_EQ(p.value().data_ptr(), rp[p.key()].data_ptr()) << p.key();
    }
  }
  TempDir a("ppo_reward_base");
  policy::PpoTrainer trainer(cfg, models, teacher, make_prompts(), a.path());
  trainer.run();  // checkpoints iter-0000 .. iter-0003
  const auto h = trainer.history();
  EXPECT_EQ(batches, 3);
  EXPECT_EQ(unequal, 0) << "the shared teacher's scores differ from the plain reward model's";
  // The critic fits each iteration's returns: its value loss on the same batch falls from the
  // first epoch to the second.
  std::vector<nlohmann::json> mbs;
  {
    std::ifstream in(a / "minibatches.jsonl");
    for (std::string line; std::getline(in, line);) mbs.push_back(nlohmann::json::parse(line));
  }
  ASSERT_EQ(mbs.size(), 12u);  // 3 iterations x 2 epochs x 2 minibatches
  for (int it = 0; it < 3; ++it) {
    const auto& e1 = mbs[4 * it];
    double first = 0, second = 0;
    for (int k = 0; k < 2; ++k) {
      first += mbs[4 * it + k]["loss/value"].get<double>();
      second += mbs[4 * it + 2 + k]["loss/value"].get<double>();
    }
    EXPECT_EQ(e1["epoch"].get<int>(), 0);
    EXPECT_LT(second, first) << "iteration " << it + 1;
  }
  for (auto& np : rm->named_parameters())
    EXPECT_TRUE(torch::equal(np.value(), rm_start.at(np.key()))) << np.key() << " moved";
  EXPECT_FALSE(torch::equal(models.critic->value_head->weight, rm->value_head->weight));
  {
    torch::serialize::InputArchive ar;
    ar.load_from(trainer.checkpoint_dir() + "/critic.pt");
    torch::Tensor t;
    ASSERT_TRUE(
        ar.try_read("lora.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", t));
    EXPECT_EQ(t.size(0), 8);  // the default rank without critic_lora or lora
    EXPECT_GT(ar.keys().size(), 1u);
    for (const auto& k : ar.keys())
      EXPECT_TRUE(k.rfind("lora.", 0) == 0 || k.rfind("value_head.", 0) == 0) << k;
  }

  // Resume after 2 iterations: the critic's head and adapters come back bit for bit, and the third
  // iteration equals the uninterrupted run's.
  TempDir b("ppo_reward_base_b");
  std::string ck2;
  {
    auto rm1 = toy_reward_model(21);
    auto m = make_models(9);
    m.critic = policy::reward_base_critic(rm1);
    auto t1 = [&](const auto& p, const auto& r) { return reward_scores(rm1, p, r); };
    policy::PpoTrainer first(cfg, m, t1, make_prompts(), b.path());
    first.step();
    first.step();
    first.save_checkpoint_now();
    ck2 = first.checkpoint_dir();
  }
  auto rm2 = toy_reward_model(21);
  auto m = make_models(9);
  m.critic = policy::reward_base_critic(rm2);
  auto t2 = [&](const auto& p, const auto& r) { return reward_scores(rm2, p, r); };
  policy::PpoTrainer resumed(cfg, m, t2, make_prompts(), b.path());
  ASSERT_EQ(resumed.completed_iterations(), 2);
  {
    torch::serialize::InputArchive ar;
    ar.load_from(ck2 + "/critic.pt");
    torch::Tensor t;
    ASSERT_TRUE(ar.try_read("value_head.weight", t));
    EXPECT_TRUE(torch::equal(t, m.critic->value_head->weight));
  }
  resumed.step();
  EXPECT_TRUE(same_stats(h[2], resumed.history()[0]));

  // replay --update of iteration 3 from checkpoint iter-0002 (critic/ + critic.pt).
  std::vector<nlohmann::json> live(mbs.begin() + 8, mbs.end());
  auto replayed = policy::PpoTrainer::replay_update(a.path(), a / "rollouts/iter-0003.pb");
  ASSERT_EQ(replayed.size(), live.size());
  for (size_t i = 0; i < live.size(); ++i)
    for (auto& kv : replayed[i])
      EXPECT_EQ(live[i][kv.first].get<double>(), kv.second) << kv.first << " minibatch " << i;

  // Without the critic built on the reward model's base the trainer refuses to start.
  auto no_critic = make_models(9);
  no_critic.critic = nullptr;
  TempDir c("ppo_reward_base_c");
  EXPECT_THROW(policy::PpoTrainer(cfg, no_critic, teacher, make_prompts(), c.path()), Error);
}

// critic "reward_base" is refused, naming the field, without a reward model teacher, with a
// value_model, or with a critic-free estimator; critic_lora is refused with critic "separate".
TEST(PpoConfig, RewardBaseCriticNeedsARewardModelAndNoValueModel) {
  auto expect_error = [](const proto::PpoConfig& c, const std::string& field,
                         const std::string& words) {
    try {
      policy::validate_ppo_config(c);
      ADD_FAILURE() << "accepted; expected an error on " << field;
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("'" + field + "'"), std::string::npos) << msg;
      EXPECT_NE(msg.find(words), std::string::npos) << msg;
    }
  };
  auto ok = reward_base_config();
  EXPECT_NO_THROW(policy::validate_ppo_config(ok));
  auto no_rm = ok;  // a rule teacher has no base to share
  no_rm.mutable_teacher()->set_rule("arithmetic");
  expect_error(no_rm, "critic", "needs a reward_model teacher");
  auto vm = ok;
  vm.set_value_model("rm");
  expect_error(vm, "value_model", "the reward model's base");
  auto grpo = ok;
  grpo.set_advantage_estimator("grpo");
  grpo.set_samples_per_prompt(4);
  expect_error(grpo, "critic", "trains no critic");
  auto sep = toy_config(1);
  sep.mutable_critic_lora()->set_rank(4);
  expect_error(sep, "critic_lora", "\"reward_base\" only");
  auto typo = ok;
  typo.set_critic("reward");
  expect_error(typo, "critic", "\"reward_base\"");
  // The critic's adapters: critic_lora, else the policy's lora, else rank 8.
  EXPECT_EQ(policy::critic_lora_config(ok).rank(), 8);
  ok.mutable_lora()->set_rank(4);
  EXPECT_EQ(policy::critic_lora_config(ok).rank(), 4);
  ok.mutable_critic_lora()->set_rank(2);
  EXPECT_EQ(policy::critic_lora_config(ok).rank(), 2);
}

// The lr of an iteration (ppo_learning_rate) by hand, and the trainer applies it: with a linear
// decay to 0 over 2 iterations, iteration 2 runs at lr 0 and leaves the weights bit-identical.
TEST(PpoTrainer, LearningRateScheduleByIteration) {
  proto::PpoConfig c;
  c.set_iterations(5);
  // Default: cosine, no warm-up, floor 0.1 * peak; progress (iteration - 1) / 4.
  EXPECT_EQ(c.optimizer().schedule(), "cosine");
  EXPECT_DOUBLE_EQ(policy::ppo_learning_rate(c, 1e-3, 1), 1e-3);
  EXPECT_NEAR(policy::ppo_learning_rate(c, 1e-3, 3), 1e-4 + 9e-4 * 0.5, 1e-15);
  EXPECT_NEAR(policy::ppo_learning_rate(c, 1e-3, 5), 1e-4, 1e-15);
  // Linear with 1 warm-up iteration: the decay runs over iterations 2..5 (progress 0, 1/3, ..).
  c.mutable_optimizer()->set_schedule("linear");
  c.mutable_optimizer()->set_warmup_steps(1);
  EXPECT_NEAR(policy::ppo_learning_rate(c, 1e-3, 1), 1e-3, 1e-15);
  EXPECT_NEAR(policy::ppo_learning_rate(c, 1e-3, 2), 1e-3, 1e-15);
  EXPECT_NEAR(policy::ppo_learning_rate(c, 1e-3, 3), 7e-4, 1e-15);
  EXPECT_NEAR(policy::ppo_learning_rate(c, 1e-3, 5), 1e-4, 1e-15);
  // Constant with 2 warm-up iterations: 1/2 then the peak.
  c.mutable_optimizer()->set_schedule("constant");
  c.mutable_optimizer()->set_warmup_steps(2);
  EXPECT_NEAR(policy::ppo_learning_rate(c, 1e-3, 1), 5e-4, 1e-15);
  EXPECT_NEAR(policy::ppo_learning_rate(c, 1e-3, 4), 1e-3, 1e-15);
  c.mutable_optimizer()->set_schedule("step");
  EXPECT_THROW(policy::ppo_learning_rate(c, 1e-3, 1), Error);
  EXPECT_THROW(policy::validate_ppo_config(c), Error);

  TempDir dir("ppo_lr");
  auto cfg = toy_config(2);
  cfg.mutable_optimizer()->set_schedule("linear");
  cfg.mutable_optimizer()->set_min_lr_ratio(0.0);
  auto models = make_models(4);  // handles: the trainer trains these very modules
  auto snapshot = [&] {
    std::vector<torch::Tensor> out;
    for (auto& p : models.policy->parameters()) out.push_back(p.detach().clone());
    for (auto& p : models.critic->parameters()) out.push_back(p.detach().clone());
    return out;
  };
  auto start = snapshot();
  policy::PpoTrainer t(cfg, models, count_teacher, make_prompts(), dir.path());
  auto s1 = t.step();
  EXPECT_EQ(s1.at("lr/policy"), 3e-3);
  EXPECT_EQ(s1.at("lr/value"), 3e-3);
  auto a = snapshot();
  auto s2 = t.step();
  EXPECT_EQ(s2.at("lr/policy"), 0.0);
  EXPECT_EQ(s2.at("lr/value"), 0.0);
  auto b = snapshot();
  ASSERT_EQ(a.size(), b.size());
  int moved_in_1 = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::equal(a[i], b[i])) << "parameter " << i << " moved at lr 0";
    moved_in_1 += !torch::equal(a[i], start[i]);
  }
  EXPECT_GT(moved_in_1, 0);  // iteration 1 (lr 3e-3) did train
}

// target_kl: a tiny target stops the epochs after the first minibatches; the iteration reports
// it, minibatches.jsonl has only the minibatches run, and `replay --update` stops at the same one.
TEST(PpoTrainer, TargetKlStopsEpochsEarlyAndReplayReproducesIt) {
  TempDir dir("ppo_target_kl");
  auto cfg = toy_config(2);
  cfg.set_checkpoint_every(1);
  cfg.set_keep_checkpoints(10);
  cfg.set_target_kl(1e-9);
  policy::PpoTrainer t(cfg, make_models(6), count_teacher, make_prompts(), dir.path());
  t.run();
  ASSERT_EQ(t.history().size(), 2u);
  for (int it = 1; it <= 2; ++it) {
    const auto& s = t.history()[it - 1];
    EXPECT_EQ(s.at("policy/early_stopped"), 1.0) << "iteration " << it;
    const int ran = (int)s.at("policy/minibatches");
    EXPECT_GE(ran, 1);
    EXPECT_LT(ran, 8);  // 4 epochs x 2 minibatches without the stop
    std::vector<nlohmann::json> live;
    std::ifstream in(dir / "minibatches.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line);
      if (j["iteration"].get<int>() == it) live.push_back(j);
    }
    ASSERT_EQ((int)live.size(), ran);
    // The stop came after the first minibatch whose epoch's running mean approx_kl exceeded the
    // target, and not before.
    EXPECT_TRUE(live.back().contains("policy/early_stopped"));
    double sum = 0;
    int n = 0;
    for (size_t i = 0; i < live.size(); ++i) {
      if (live[i]["epoch"] != live.back()["epoch"]) continue;
      sum += live[i]["policy/approx_kl"].get<double>();
      ++n;
      if (i + 1 < live.size()) {
        EXPECT_LE(sum / n, 1e-9) << "should have stopped at " << i;
      }
      EXPECT_EQ(live[i].contains("policy/early_stopped"), i + 1 == live.size());
    }
    EXPECT_GT(sum / n, 1e-9);

    auto replayed = policy::PpoTrainer::replay_update(
        dir.path(), dir / ("rollouts/iter-000" + std::to_string(it) + ".pb"));
    ASSERT_EQ(replayed.size(), live.size()) << "iteration " << it;
    for (size_t i = 0; i < live.size(); ++i)
      for (auto& kv : replayed[i]) {
        ASSERT_TRUE(live[i].contains(kv.first)) << kv.first;
        EXPECT_EQ(live[i][kv.first].get<double>(), kv.second) << kv.first << " minibatch " << i;
      }
  }
  // Off (the default): every minibatch runs.
  TempDir off("ppo_target_kl_off");
  auto cfg_off = toy_config(1);
  policy::PpoTrainer t_off(cfg_off, make_models(6), count_teacher, make_prompts(), off.path());
  auto s = t_off.step();
  EXPECT_EQ(s.at("policy/early_stopped"), 0.0);
  EXPECT_EQ(s.at("policy/minibatches"), 8.0);
}

// TRL's objective stats, recomputed from the iteration's rollout records: non_score_reward is the
// mean over samples of sum_t -beta * kl_t, scores the mean shaped score.
TEST(PpoTrainer, ObjectiveStatsMatchRollouts) {
  TempDir dir("ppo_objective");
  auto cfg = toy_config(1);
  cfg.set_missing_eos_penalty(0.5);  // the shaped score differs from the raw one
  auto models = make_models(7);
  models.reference = make_models(70).policy;  // another model: the KL term is not 0
  policy::PpoTrainer t(cfg, models, count_teacher, make_prompts(), dir.path());
  auto s = t.step();
  auto recs = policy::read_rollouts(dir / "rollouts/iter-0001.pb");
  ASSERT_EQ(recs.size(), 32u);
  double nsr = 0, score = 0;
  for (const auto& r : recs) {
    double kl_sum = 0;
    for (float k : r.kl()) kl_sum += k;
    nsr += -r.kl_coef() * kl_sum;
    score += r.score();
  }
  nsr /= recs.size();
  score /= recs.size();
  EXPECT_NEAR(s.at("objective/non_score_reward"), nsr, 1e-5);
  EXPECT_NEAR(s.at("objective/scores"), score, 1e-5);
  EXPECT_NEAR(s.at("objective/rlhf_reward"), score + nsr, 1e-5);
  EXPECT_NE(s.at("objective/non_score_reward"), 0.0);
}

// Prompts longer than max_prompt_tokens keep BOS and their last max_prompt_tokens - 1 tokens.
TEST(PpoTrainer, TruncatedPromptsKeepBos) {
  using policy::truncate_prompt;
  EXPECT_EQ(truncate_prompt({1, 3, 4, 5, 6}, 3, 1), (std::vector<int64_t>{1, 5, 6}));
  EXPECT_EQ(truncate_prompt({3, 4, 5, 6}, 3, 1), (std::vector<int64_t>{4, 5, 6}));  // no BOS
  EXPECT_EQ(truncate_prompt({1, 3, 4}, 3, 1), (std::vector<int64_t>{1, 3, 4}));     // fits
  EXPECT_EQ(truncate_prompt({1, 3, 4}, 1, 1), (std::vector<int64_t>{1}));
  EXPECT_EQ(truncate_prompt({1, 3, 4, 5}, 2, -1), (std::vector<int64_t>{4, 5}));  // no BOS id

  TempDir dir("ppo_bos");
  auto cfg = toy_config(1);
  cfg.set_batch_size(4);
  cfg.set_minibatch_size(4);
  cfg.set_max_prompt_tokens(3);
  std::vector<std::vector<int64_t>> prompts{
      {1, 3, 4, 5, 6}, {1, 8, 9, 10, 11, 12}, {1, 4}, {5, 6, 7, 8}};
  policy::PpoTrainer t(cfg, make_models(9), count_teacher, prompts, dir.path());
  t.step();
  std::set<std::vector<int64_t>> got;
  for (const auto& r : policy::read_rollouts(dir / "rollouts/iter-0001.pb"))
    got.insert(std::vector<int64_t>(r.prompt_ids().begin(), r.prompt_ids().end()));
  EXPECT_EQ(got, (std::set<std::vector<int64_t>>{{1, 5, 6}, {1, 11, 12}, {1, 4}, {6, 7, 8}}));
}

// value_coef was removed (never read): a config that still sets it is an error naming the file,
// the line and the field.
TEST(PpoTrainer, ValueCoefInConfigIsAnErrorNamingTheLine) {
  TempDir dir("ppo_value_coef");
  write_file_atomic(dir / "ppo.pbtxt", "iterations: 2\nvalue_coef: 0.1\n");
  try {
    policy::load_ppo_config(dir / "ppo.pbtxt");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("ppo.pbtxt:2:"), std::string::npos) << m;
    EXPECT_NE(m.find("value_coef"), std::string::npos) << m;
  }
  // The new fields parse.
  write_file_atomic(dir / "ok.pbtxt",
                    "optimizer { schedule: \"linear\" warmup_steps: 2 min_lr_ratio: 0 }\n"
                    "critic_lr: 2e-5 target_kl: 0.02\n");
  auto c = policy::load_ppo_config(dir / "ok.pbtxt");
  EXPECT_EQ(c.optimizer().schedule(), "linear");
  EXPECT_EQ(c.optimizer().warmup_steps(), 2);
  EXPECT_EQ(c.critic_lr(), 2e-5);
  EXPECT_EQ(c.target_kl(), 0.02);
  c.mutable_optimizer()->set_min_lr_ratio(1.5);
  EXPECT_THROW(policy::validate_ppo_config(c), Error);
}

// The optimizer knobs moved into the shared `optimizer { }` section (value_lr to critic_lr): a
// config with an old name is refused with a message naming the file, the line, the old field and
// where it went.
TEST(PpoTrainer, OldOptimizerFieldNamesAreRefusedWithTheReplacement) {
  const std::vector<std::pair<std::string, std::string>> moved = {
      {"policy_lr", "optimizer { lr }"},
      {"value_lr", "critic_lr"},
      {"weight_decay", "optimizer { weight_decay }"},
      {"max_grad_norm", "optimizer { grad_clip }"},
      {"adam_eps", "optimizer { eps }"},
      {"lr_schedule", "optimizer { schedule }"},
      {"lr_warmup_iterations", "optimizer { warmup_steps }"},
      {"min_lr_ratio", "optimizer { min_lr_ratio }"}};
  for (const auto& [old_name, replacement] : moved) {
    const std::string value = old_name == "lr_schedule" ? "\"linear\"" : "1";
    try {
      policy::parse_ppo_config("iterations: 2\n\n" + old_name + ": " + value + "\n", "ppo.pbtxt");
      ADD_FAILURE() << old_name << " was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()), "ppo.pbtxt:3: field '" + old_name +
                                           "' of PpoConfig moved to '" + replacement + "'");
    }
  }
}

// PPO's optimizers: the toolkit's, from the optimizer section with PPO's defaults (betas
// (0.9, 0.999), eps 1e-5, no weight decay); the critic's the same at critic_lr.
TEST(PpoTrainer, OptimizersComeFromTheOptimizerSectionWithPpoDefaults) {
  proto::PpoConfig c;
  c.mutable_optimizer()->set_lr(2e-5);
  c.mutable_optimizer()->set_grad_clip(0.5);
  c.set_critic_lr(3e-5);
  const proto::PpoConfig r = policy::resolved_ppo_config(c);
  EXPECT_EQ(r.optimizer().lr(), 2e-5);
  EXPECT_EQ(r.optimizer().grad_clip(), 0.5);
  EXPECT_EQ(r.optimizer().beta1(), 0.9);
  EXPECT_EQ(r.optimizer().beta2(), 0.999);
  EXPECT_EQ(r.optimizer().eps(), 1e-5);
  EXPECT_EQ(r.optimizer().weight_decay(), 0.0);
  EXPECT_EQ(r.optimizer().warmup_ratio(), 0.0);
  const proto::OptimizerConfig critic = policy::critic_optimizer_config(c);
  EXPECT_EQ(critic.lr(), 3e-5);
  EXPECT_EQ(critic.grad_clip(), 0.5);
  EXPECT_EQ(critic.eps(), 1e-5);

  // The saved optimizer states of a run: decay / no-decay groups with those options.
  TempDir dir("ppo_adamw");
  auto cfg = toy_config(1);
  cfg.set_batch_size(8);
  cfg.set_minibatch_size(8);
  cfg.set_ppo_epochs(1);
  cfg.mutable_optimizer()->set_weight_decay(0.01);
  cfg.set_checkpoint_every(1);
  policy::PpoTrainer t(cfg, make_models(5), count_teacher, make_prompts(), dir.path());
  t.run();
  const std::string ck = t.checkpoint_dir();
  for (const char* who : {"policy", "critic"}) {
    const auto groups = policy::testing::saved_adamw_groups(ck + "/" + who + "_optimizer.pt");
    ASSERT_EQ(groups.size(), 2u) << who;
    EXPECT_EQ(groups[0].weight_decay, 0.01) << who;
    EXPECT_EQ(groups[1].weight_decay, 0.0) << who;
    for (const auto& g : groups) {
      EXPECT_EQ(g.beta1, 0.9) << who;
      EXPECT_EQ(g.beta2, 0.999) << who;
      EXPECT_EQ(g.eps, 1e-5) << who;
    }
  }
}

// ---- ranks sharing a machine (two real processes) -----------------------------------------------

// Two PPO ranks on one machine started without OMP_NUM_THREADS (as Slurm or a script starts them)
// take their share of the cores, as SFT and reward ranks do (training::place_trainer): each worker
// sets another count first, so a trainer that left threads alone fails.
TEST(PpoTrainer, RanksSizeTheirThreadsLikeTheOtherTrainers) {
  TempDir dir("ppo_threads");
  const int port = rlhf::launch::free_loopback_port();
  std::vector<rlhf::process::Child> ranks;
  for (int rank = 0; rank < 2; ++rank) {
    rlhf::process::Options o;
    o.argv = {"/proc/self/exe", "--gtest_filter=PpoTrainerWorker.Threads"};
    o.clear_env = true;
    o.env = {{"WORLD_SIZE", "2"},
             {"RANK", std::to_string(rank)},
             {"LOCAL_RANK", std::to_string(rank)},
             {"LOCAL_WORLD_SIZE", "2"},
             {"MASTER_ADDR", "127.0.0.1"},
             {"MASTER_PORT", std::to_string(port)},
             {"RLHF_DIST_TIMEOUT_S", "30"},
             {"RLHF_PPO_WORKER_DIR", dir.path()}};
    ranks.push_back(rlhf::process::Child::start(o));
  }
  for (auto& r : ranks) EXPECT_TRUE(r.wait().success());
  for (int rank = 0; rank < 2; ++rank) {
    const std::string got = read_file(dir / ("rank" + std::to_string(rank) + ".txt"));
    const std::string expected = std::to_string(policy::dist::threads_per_rank(2));
    EXPECT_EQ(got, "threads " + expected + "\n") << "rank " << rank;
  }
}

// The worker side of the test above (only with RLHF_PPO_WORKER_DIR).
TEST(PpoTrainerWorker, Threads) {
  const char* dir = std::getenv("RLHF_PPO_WORKER_DIR");
  if (!dir) GTEST_SKIP() << "runs as a spawned rank only";
  torch::set_num_threads(policy::dist::threads_per_rank(2) + 3);
  auto cfg = toy_config(1);
  cfg.set_device("cpu");
  cfg.set_batch_size(4);
  cfg.set_minibatch_size(2);
  policy::PpoTrainer trainer(cfg, make_models(1), count_teacher, make_prompts(),
                             std::string(dir) + "/run");
  const char* rank = std::getenv("RANK");
  std::ofstream(std::string(dir) + "/rank" + rank + ".txt")
      << "threads " << torch::get_num_threads() << "\n";
}

// ---- critic-free advantage estimators (advantage_estimator, samples_per_prompt, kl_in_loss) ----

namespace {

std::vector<nlohmann::json> minibatch_lines(const std::string& run, int iteration) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run + "/minibatches.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j["iteration"].get<int>() == iteration) out.push_back(j);
  }
  return out;
}

// A 2-iteration critic-free run: batch 16 = 4 prompts x K 4, minibatches of 8, 2 epochs.
proto::PpoConfig estimator_config(const std::string& estimator, bool kl_in_loss) {
  auto cfg = toy_config(2);
  cfg.set_advantage_estimator(estimator);
  cfg.set_samples_per_prompt(4);
  cfg.set_kl_in_loss(kl_in_loss);
  cfg.set_batch_size(16);
  cfg.set_minibatch_size(8);
  cfg.set_ppo_epochs(2);
  cfg.set_max_new_tokens(6);
  cfg.set_checkpoint_every(1);
  cfg.set_keep_checkpoints(10);
  return cfg;
}

}  // namespace

// Each critic-free estimator: no critic is built, trained or saved; an iteration's K answers share
// their prompt and group; the rollouts replay exactly (`--recompute`: the group advantages and the
// per-token ones) and the update replays exactly (`--update`: every minibatch's numbers).
TEST(PpoTrainer, CriticFreeEstimatorsTrainNoCriticAndReplayExactly) {
  for (const auto& [estimator, kl_in_loss] :
       std::vector<std::pair<std::string, bool>>{{"grpo", true},
                                                 {"dr_grpo", false},
                                                 {"rloo", false},
                                                 {"reinforce_baseline", false},
                                                 {"grpo", false}}) {
    SCOPED_TRACE(estimator + (kl_in_loss ? " kl_in_loss" : ""));
    TempDir dir("ppo_est_" + estimator);
    auto models = make_models(11);
    models.critic = policy::Transformer{nullptr};  // none needed
    policy::PpoTrainer t(estimator_config(estimator, kl_in_loss), models, count_teacher,
                         make_prompts(), dir.path());
    t.run();
    ASSERT_EQ(t.history().size(), 2u);
    const auto& s = t.history().back();
    EXPECT_EQ(s.count("loss/value"), 0u);
    EXPECT_EQ(s.count("loss/kl"), kl_in_loss ? 1u : 0u);
    EXPECT_LT(s.at("policy/ratio_first_dev"), 1e-3);
    const std::string ck = t.checkpoint_dir();
    EXPECT_TRUE(file_exists(ck + "/policy.pt"));
    EXPECT_FALSE(file_exists(ck + "/critic.pt"));
    EXPECT_FALSE(file_exists(ck + "/critic_optimizer.pt"));
    EXPECT_FALSE(std::filesystem::exists(ck + "/critic"));

    for (int it = 1; it <= 2; ++it) {
      const std::string file = dir / ("rollouts/iter-000" + std::to_string(it) + ".pb");
      auto recs = policy::read_rollouts(file);
      ASSERT_EQ(recs.size(), 16u);
      const auto seq = policy::group_sequence_advantages(recs);
      ASSERT_EQ(seq.size(), 16u);
      bool varied = false;
      for (const auto& r : recs) {
        EXPECT_EQ(r.advantage_estimator(), estimator);
        EXPECT_EQ(r.samples_per_prompt(), 4);
        EXPECT_EQ(r.group(), r.index() / 4);
        EXPECT_EQ(r.kl_in_loss(), kl_in_loss);
        const auto& first = recs[r.group() * 4];  // records are in index order
        EXPECT_EQ(std::vector<int64_t>(r.prompt_ids().begin(), r.prompt_ids().end()),
                  std::vector<int64_t>(first.prompt_ids().begin(), first.prompt_ids().end()));
        auto rs = policy::recompute_sample(r, {}, seq.at(r.index()));
        EXPECT_EQ(rs.mismatches, 0) << "sample " << r.index();
        EXPECT_EQ(r.sequence_advantage(), seq.at(r.index()));
        varied = varied || r.sequence_advantage() != 0;
        if (kl_in_loss) {  // rewards hold the sequence advantage alone, every token carries it
          for (int k = 0; k < r.advantages_size(); ++k) {
            EXPECT_EQ(r.advantages(k), r.sequence_advantage());
          }
        }
      }
      EXPECT_TRUE(varied) << "iteration " << it << ": every group scored alike";
      // The group mean of the sequence advantages is 0 (grpo up to its std scaling).
      for (int g = 0; g < 4; ++g) {
        double sum = 0;
        for (int i = 0; i < 4; ++i) sum += recs[g * 4 + i].sequence_advantage();
        EXPECT_NEAR(sum, 0.0, 1e-5) << "group " << g;
      }
      // A missing group member is an error naming the group.
      auto partial = recs;
      partial.pop_back();
      EXPECT_THROW(policy::group_sequence_advantages(partial), rlhf::Error);

      const auto live = minibatch_lines(dir.path(), it);
      ASSERT_EQ(live.size(), 4u);  // 2 epochs x 2 minibatches
      auto replayed = policy::PpoTrainer::replay_update(dir.path(), file);
      ASSERT_EQ(replayed.size(), live.size());
      for (size_t i = 0; i < live.size(); ++i) {
        EXPECT_EQ(replayed[i].count("loss/value"), 0u);
        for (auto& kv : replayed[i]) {
          ASSERT_TRUE(live[i].contains(kv.first)) << kv.first;
          EXPECT_EQ(live[i][kv.first].get<double>(), kv.second) << kv.first << " minibatch " << i;
        }
      }
    }
  }
}

// GRPO on the toy task: the teacher's score rises without a critic.
TEST(PpoTrainer, GrpoRaisesTeacherScore) {
  TempDir dir("ppo_grpo_toy");
  auto cfg = toy_config(16);
  cfg.set_advantage_estimator("grpo");
  cfg.set_samples_per_prompt(4);
  cfg.set_kl_in_loss(true);
  cfg.set_kl_coef(0.05);
  auto models = make_models(1);
  models.critic = policy::Transformer{nullptr};
  policy::PpoTrainer t(cfg, models, count_teacher, make_prompts(), dir.path());
  t.run();
  const auto& h = t.history();
  const double first = (h[0].at("score/mean") + h[1].at("score/mean")) / 2;
  const double last = (h[14].at("score/mean") + h[15].at("score/mean")) / 2;
  std::printf("grpo score/mean first 2: %.3f  last 2: %.3f\n", first, last);
  EXPECT_GT(last, first + 1.0);
}

// The estimator settings are checked with the field named.
TEST(PpoTrainer, EstimatorSettingsAreChecked) {
  auto bad = [](const std::string& text, const std::string& want) {
    try {
      policy::parse_ppo_config(text, "e.pbtxt");
      ADD_FAILURE() << "accepted: " << text;
    } catch (const rlhf::Error& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  };
  bad("advantage_estimator: \"ppo\"", "advantage_estimator");
  bad("advantage_estimator: \"grpo\" samples_per_prompt: 1", "samples_per_prompt");
  bad("batch_size: 10 minibatch_size: 5 samples_per_prompt: 4", "divisor of batch_size");
  EXPECT_NO_THROW(policy::parse_ppo_config(
      "advantage_estimator: \"reinforce_baseline\" samples_per_prompt: 1", "ok.pbtxt"));
  EXPECT_NO_THROW(policy::parse_ppo_config(
      "advantage_estimator: \"dr_grpo\" samples_per_prompt: 8 batch_size: 64 kl_in_loss: true",
      "ok.pbtxt"));
}

// A critic-free run resumes from its checkpoint (policy and optimizer, no critic) to the numbers
// of an uninterrupted one.
TEST(PpoTrainer, CriticFreeRunResumesToTheSameNumbers) {
  TempDir a("ppo_rloo_a"), b("ppo_rloo_b");
  auto cfg = estimator_config("rloo", false);
  cfg.set_iterations(3);
  auto critic_free = [](uint64_t seed) {
    auto m = make_models(seed);
    m.critic = policy::Transformer{nullptr};
    return m;
  };
  policy::PpoTrainer ta(cfg, critic_free(5), count_teacher, make_prompts(), a.path());
  ta.run();
  ASSERT_EQ(ta.history().size(), 3u);
  {
    policy::PpoTrainer tb(cfg, critic_free(5), count_teacher, make_prompts(), b.path());
    tb.step();
    tb.save_checkpoint_now();
  }
  auto models = critic_free(5);
  models.policy = critic_free(99).policy;  // replaced by the checkpoint's
  policy::PpoTrainer tc(cfg, models, count_teacher, make_prompts(), b.path());
  EXPECT_EQ(tc.completed_iterations(), 1);
  tc.run();
  ASSERT_EQ(tc.history().size(), 2u);
  for (int i = 0; i < 2; ++i)
    EXPECT_TRUE(same_stats(ta.history()[1 + i], tc.history()[i])) << "iter " << i + 2;
}
