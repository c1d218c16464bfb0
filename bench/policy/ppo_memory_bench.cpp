// Peak resident memory of one PPO iteration against the memory plan (docs/performance.md,
// "Memory that fits"). A Qwen2.5-0.5B-shaped random-weight policy (hidden 896, 24 layers, 14
// heads, 2 kv heads, intermediate 4864, vocab 151936, tied embeddings, q/k/v biases), LoRA rank 16,
// dtype bf16, batch 8 x 64 new tokens, in one of two layouts:
//   shared: the policy's frozen base (matrices and embedding table) stored bfloat16 as the PPO
//           stage holds it, the reference = the policy with its
//           adapters off, the critic on the policy's base (critic "policy_base"), a reward model;
//   four:   four copies: policy, a cloned reference (bf16 matrices, as the trainer stores them), a
//           cloned critic trained in full, a reward model. The trainer now stores the policy's
//           LoRA base bf16 under bf16 as well; the float32-base four-copy figure in
//           docs/performance.md was measured with the binary from before that change.
// Two more compare the critic's placement when it starts from the reward model (InstructGPT),
// both with the policy, reference and reward model of "shared":
//   reward_base: the critic on the reward model's base (critic "reward_base", its own rank-8
//                adapters and a head copied from the score head; one base for teacher and critic);
//   reward_copy: the critic a full copy of the reward model trained in full (value_model: reward).
// The models are built, the peak is reset (/proc/self/clear_refs 5), one iteration runs, and the
// peak (VmHWM) is printed beside the plan's total. Usage:
//   ppo_memory_bench [shared|four|reward_base|reward_copy] [layers=24] [new_tokens=64] [batch=8]
//   [dtype=bf16] [plan]
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "pipelines/memory_plans.h"
#include "policy/model/checkpoint.h"
#include "policy/model/model.h"
#include "policy/ppo/ppo_trainer.h"
#include "policy/training/training.h"

using namespace rlhf;

namespace {

int64_t status_kb(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string k;
  int64_t v = 0;
  std::string unit;
  while (in >> k) {
    if (k == key) {
      in >> v;
      return v;
    }
  }
  return -1;
}

policy::ModelConfig qwen_shape(int layers) {
  policy::ModelConfig c;
  c.model_type = "qwen2";
  c.vocab_size = 151936;
  c.dim = 896;
  c.n_layers = layers;
  c.n_heads = 14;
  c.n_kv_heads = 2;
  c.hidden_dim = 4864;
  c.tie_embeddings = true;
  c.qkv_bias = true;
  c.max_seq_len = 256;
  c.bos_id = 1;
  c.eos_id = 2;
  c.pad_id = 0;
  return c;
}

double secs(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The plan for the run (ppo_memory_plan reads model folders; here from the same shape). "four" is
// today's layout before this change: a float32 policy base, a separate bf16 reference and critic.
policy::MemoryPlan bench_plan(const policy::ModelConfig& mc, const std::string& layout,
                              const std::string& dtype, int batch, int new_tokens) {
  const bool shared = layout != "four";
  policy::MemoryPlan plan;
  plan.stage = "ppo";
  plan.device = "cpu";
  plan.dtype = dtype;
  auto s = pipelines::model_shape(mc);
  const int64_t lora = s.lora_params(16, {"q", "v"});
  const bool bf16 = dtype == "bf16";
  const int base_bytes = bf16 ? 2 : 4;  // the trainer stores a LoRA base bf16 under bf16
  policy::add_model(plan, {"policy", s, base_bytes, false, lora, base_bytes});
  policy::add_model(plan, {"reference", s, base_bytes, shared, 0, base_bytes});
  auto cs = s;
  cs.value_head = true;
  if (layout == "reward_base") {
    policy::add_model(plan, {"critic", cs, 4, true, cs.lora_params(8, {"q", "v"}) + cs.dim + 1, 4,
                             "reward model"});
    plan.add("critic", "fused cache", cs.fused_params() * 4, "its own concatenated weights");
  } else if (layout == "shared") {
    policy::add_model(plan, {"critic", cs, 4, true, cs.lora_params(16, {"q", "v"}) + cs.dim + 1});
    plan.add("critic", "fused cache", cs.fused_params() * (bf16 ? 2 : 4),
             "its own concatenated weights");
  } else {
    policy::add_model(plan, {"critic", cs, 4, false, cs.matrix_params() + cs.other_params()});
  }
  policy::add_model(plan, {"reward model", cs, 4, false, 0});
  const int64_t seq = 16 + new_tokens;
  plan.add("generation", "KV cache", policy::kv_cache_bytes(s, batch, seq, bf16));
  plan.add("activations", "training", policy::activation_bytes(s, batch, seq, true, bf16));
  return plan;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string layout = argc > 1 ? argv[1] : "shared";
  const int layers = argc > 2 ? std::atoi(argv[2]) : 24;
  const int new_tokens = argc > 3 ? std::atoi(argv[3]) : 64;
  const int batch = argc > 4 ? std::atoi(argv[4]) : 8;
  const std::string dtype = argc > 5 ? argv[5] : "bf16";
  const bool shared = layout != "four";
  const bool on_reward = layout == "reward_base" || layout == "reward_copy";
  if (layout != "shared" && layout != "four" && !on_reward) {
    std::fprintf(stderr, "ppo_memory_bench: unknown layout \"%s\"\n", layout.c_str());
    return 2;
  }
  if (argc > 6 && std::string(argv[6]) == "plan") {  // the plan alone, no model built
    std::fputs(bench_plan(qwen_shape(layers), layout, dtype, batch, new_tokens).table().c_str(),
               stdout);
    return 0;
  }
  const auto t0 = std::chrono::steady_clock::now();
  torch::manual_seed(1);
  const auto mc = qwen_shape(layers);

  proto::PpoConfig cfg;
  cfg.set_iterations(1);
  cfg.set_batch_size(batch);
  cfg.set_minibatch_size(batch);
  cfg.set_ppo_epochs(1);
  cfg.set_max_new_tokens(new_tokens);
  cfg.set_max_prompt_tokens(16);
  cfg.set_dtype(dtype);
  cfg.set_checkpoint_every(0);
  cfg.mutable_lora()->set_rank(16);
  if (layout == "shared") cfg.set_critic("policy_base");
  if (layout == "reward_base") cfg.set_critic("reward_base");

  policy::PpoModels m;
  // Built in float32 and narrowed, as before this bench's first figures (the stage reads the base
  // straight into bfloat16 instead; "build" below, docs/performance.md), so that the iteration
  // runs on the same heap as then: RSS depends on the order of earlier allocations.
  m.policy = policy::Transformer(mc);
  policy::init_weights(m.policy);
  if (shared && dtype == "bf16")
    policy::store_matrices_as(m.policy, torch::kBFloat16,
                              policy::StoredWeights::kMatricesAndEmbeddings);
  if (!shared) {
    m.reference = policy::clone_model(m.policy);
    m.critic = policy::clone_model(m.policy);
    m.critic->add_value_head();
  }
  auto rm_cfg = mc;
  rm_cfg.value_head = true;
  policy::Transformer reward(rm_cfg);
  policy::init_weights(reward);
  reward->eval();
  if (layout == "reward_base") m.critic = policy::reward_base_critic(reward);
  if (layout == "reward_copy") m.critic = policy::clone_model(reward);
  std::vector<std::vector<int64_t>> prompts;
  for (int i = 0; i < batch; ++i) {
    std::vector<int64_t> p{1};
    for (int k = 0; k < 15; ++k) p.push_back(3 + (i * 7919 + k * 104729) % 150000);
    prompts.push_back(p);
  }
  auto teacher = [&](const std::vector<std::vector<int64_t>>& ps,
                     const std::vector<std::vector<int64_t>>& rs) {
    std::vector<float> out;
    for (size_t i = 0; i < ps.size(); ++i) {
      std::vector<int64_t> ids = ps[i];
      ids.insert(ids.end(), rs[i].begin(), rs[i].end());
      auto t = torch::tensor(ids).unsqueeze(0);
      auto h = reward->hidden_states(t);
      out.push_back(reward->values_from_hidden(h).index({0, -1}).item<float>());
    }
    return out;
  };
  const std::string out = "/tmp/ppo_memory_bench_" + layout;
  std::system(("rm -rf " + out).c_str());
  const double build_s = secs(t0);
  const int64_t build_peak = status_kb("VmHWM:");
  policy::PpoTrainer trainer(cfg, m, teacher, prompts, out);
  std::ofstream("/proc/self/clear_refs") << "5";  // reset VmHWM to the current RSS
  const int64_t before = status_kb("VmRSS:");
  const auto t1 = std::chrono::steady_clock::now();
  auto stats = trainer.step();
  const double iter_s = secs(t1);
  const int64_t peak = status_kb("VmHWM:");
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);

  const auto plan = bench_plan(mc, layout, dtype, batch, new_tokens);
  std::fputs(plan.table().c_str(), stdout);
  const double mib = 1024.0;
  std::printf(
      "layout %s, %d layers, batch %d x %d new tokens, dtype %s\n"
      "build %.1fs (peak while building %.1f MiB), iteration %.1fs (score/mean %.4f)\n"
      "RSS before the iteration %.1f MiB, peak during it (VmHWM) %.1f MiB, ru_maxrss %.1f MiB\n"
      "plan total %.1f MiB: peak / plan = %.3f\n",
      layout.c_str(), layers, batch, new_tokens, dtype.c_str(), build_s, build_peak / mib, iter_s,
      stats["score/mean"], before / mib, peak / mib, ru.ru_maxrss / mib,
      plan.total() / (1024.0 * 1024.0), (peak * 1024.0) / plan.total());
  return 0;
}
