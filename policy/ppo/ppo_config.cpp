#include "policy/ppo/ppo_config.h"

#include <google/protobuf/text_format.h>

#include "common/error.h"
#include "common/files.h"
#include "policy/ppo/ppo_math.h"
#include "policy/training/optimizer_config.h"
#include "policy/training/sft_config.h"

namespace rlhf::policy {

proto::PpoConfig parse_ppo_config(const std::string& text, const std::string& source) {
  return parse_checked_config<proto::PpoConfig>(
      text, source, [](const auto& c, const ConfigErrors& e) { validate_ppo_config(c, e); });
}

proto::PpoConfig load_ppo_config(const std::string& path) {
  return parse_ppo_config(read_config_file(path), path);
}

namespace {

// advantage_estimator and samples_per_prompt (K): a known estimator, batch_size a multiple of K,
// K >= 2 where the estimator compares the answers of a group.
void validate_estimator(const proto::PpoConfig& c, const ConfigErrors& e) {
  const std::string& name = c.advantage_estimator();
  if (name.empty() || !ppo::parse_estimator(name))
    e.fail("advantage_estimator",
           "expected one of \"gae\", \"grpo\", \"dr_grpo\", \"rloo\", \"reinforce_baseline\"",
           "\"" + name + "\"");
  const int64_t k = c.samples_per_prompt();
  if (k < 1) {
    e.fail("samples_per_prompt", "expected >= 1", std::to_string(k));
    return;
  }
  if (c.batch_size() % k != 0)
    e.fail("samples_per_prompt",
           "expected a divisor of batch_size = " + std::to_string(c.batch_size()) +
               " (an iteration takes batch_size / samples_per_prompt prompts)",
           std::to_string(k));
  if (k < 2 && (name == "grpo" || name == "dr_grpo" || name == "rloo"))
    e.fail("samples_per_prompt",
           "expected >= 2 with advantage_estimator \"" + name +
               "\" (its baseline is the other answers to the same prompt)",
           std::to_string(k));
}

}  // namespace

bool uses_critic(const proto::PpoConfig& c) { return c.advantage_estimator() == "gae"; }

bool whitens_advantages(const proto::PpoConfig& c) {
  if (c.advantage_estimator() == "gae") return c.whiten_advantages();
  return c.advantage_estimator() == "reinforce_baseline";
}

static void validate_critic(const proto::PpoConfig& c, const ConfigErrors& e);

void validate_ppo_config(const proto::PpoConfig& c, const ConfigErrors& e) {
  auto num = [](double v) { return config_number(v); };
  auto at_least = [&](const char* field, int64_t v, int64_t min) {
    if (v < min) e.fail(field, "expected >= " + std::to_string(min), std::to_string(v));
  };
  auto in_unit = [&](const char* field, double v) {
    if (!(v >= 0 && v <= 1)) e.fail(field, "expected a value in [0, 1]", num(v));
  };
  if (c.schema_version() != 1)
    e.fail("schema_version", "expected 1", std::to_string(c.schema_version()));
  validate_device_and_dtype(c.device(), c.dtype(), e);
  at_least("iterations", c.iterations(), 0);
  at_least("batch_size", c.batch_size(), 1);
  if (c.minibatch_size() < 1 || c.minibatch_size() > c.batch_size())
    e.fail("minibatch_size",
           "expected a value in [1, batch_size = " + std::to_string(c.batch_size()) + "]",
           std::to_string(c.minibatch_size()));
  at_least("ppo_epochs", c.ppo_epochs(), 1);
  training::validate_optimizer_config(c.optimizer(), e.nested("optimizer"),
                                      /*lr_may_be_zero=*/true);
  if (!(c.critic_lr() >= 0)) e.fail("critic_lr", "expected >= 0", num(c.critic_lr()));
  at_least("critic_warmup_iterations", c.critic_warmup_iterations(), 0);
  at_least("threads", c.threads(), 0);
  if (!(c.target_kl() >= 0)) e.fail("target_kl", "expected >= 0 (0 = off)", num(c.target_kl()));
  in_unit("gamma", c.gamma());
  in_unit("lam", c.lam());
  if (!(c.clip_range() > 0)) e.fail("clip_range", "expected > 0", num(c.clip_range()));
  if (!(c.value_clip_range() > 0))
    e.fail("value_clip_range", "expected > 0", num(c.value_clip_range()));
  if (!(c.kl_coef() >= 0)) e.fail("kl_coef", "expected >= 0", num(c.kl_coef()));
  if (c.adaptive_kl() && !(c.kl_target() > 0))
    e.fail("kl_target", "expected > 0 with adaptive_kl", num(c.kl_target()));
  if (c.adaptive_kl() && !(c.kl_horizon() > 0))
    e.fail("kl_horizon", "expected > 0 with adaptive_kl", num(c.kl_horizon()));
  at_least("max_prompt_tokens", c.max_prompt_tokens(), 1);
  at_least("max_new_tokens", c.max_new_tokens(), 1);
  at_least("min_new_tokens", c.min_new_tokens(), 0);
  // Sampling: the ratio and KL use the full softmax at this temperature (see the header).
  if (!(c.temperature() > 0))
    e.fail("temperature",
           "expected > 0 (PPO log-probs and KL use the full softmax at this temperature; greedy "
           "sampling is not supported)",
           num(c.temperature()));
  if (c.top_k() != 0)
    e.fail("top_k",
           "expected 0 (PPO samples from the full softmax; top-k would bias the ratio and KL)",
           std::to_string(c.top_k()));
  if (c.top_p() != 1)
    e.fail("top_p",
           "expected 1 (PPO samples from the full softmax; nucleus sampling would bias the "
           "ratio and KL)",
           num(c.top_p()));
  validate_estimator(c, e);
  if (!(c.score_clip() >= 0)) e.fail("score_clip", "expected >= 0 (0 = off)", num(c.score_clip()));
  at_least("checkpoint_every", c.checkpoint_every(), 0);
  at_least("keep_rollouts", c.keep_rollouts(), 0);
  at_least("keep_checkpoints", c.keep_checkpoints(), 1);
  if (c.has_lora()) {
    const ConfigErrors le = e.nested("lora");
    validate_lora_config(c.lora(), le);
    if (c.lora().rank() > 0 && c.lora().dropout() > 0)
      le.fail("dropout",
              "expected 0 for PPO (rollout log-probs are computed without dropout, so the first "
              "minibatch's ratio would not be 1)",
              num(c.lora().dropout()));
  }
  validate_critic(c, e);
}

// critic / critic_lora: "policy_base" puts the critic on the policy's frozen (LoRA) base,
// "reward_base" on the reward model's (the teacher's) frozen base.
static void validate_critic(const proto::PpoConfig& c, const ConfigErrors& e) {
  const std::string& where = c.critic();
  const std::string quoted = "\"" + where + "\"";
  if (where != "separate" && where != "policy_base" && where != "reward_base")
    e.fail("critic", "expected \"separate\", \"policy_base\" or \"reward_base\"", quoted);
  if (where == "policy_base" && !(c.has_lora() && c.lora().rank() > 0))
    e.fail("critic",
           "\"policy_base\" needs lora.rank > 0 (the policy's base must be frozen to be shared)",
           "\"policy_base\"");
  // (An empty reward_model is left to the stage: a pipeline fills it in.)
  if (where == "reward_base" && (!c.teacher().rule().empty() || !c.teacher().socket().empty()))
    e.fail("critic",
           "\"reward_base\" needs a reward_model teacher (the critic shares its frozen base; "
           "teacher.rule and teacher.socket have none)",
           "\"reward_base\"");
  if (critic_on_shared_base(c) && !uses_critic(c))
    e.fail("critic",
           "expected \"separate\" (the default) with advantage_estimator \"" +
               c.advantage_estimator() + "\", which trains no critic",
           quoted);
  if (critic_on_shared_base(c) && !c.value_model().empty())
    e.fail("value_model",
           "expected none with critic " + quoted + " (the critic is the " +
               (where == "policy_base" ? "policy's" : "reward model's") + " base)",
           "\"" + c.value_model() + "\"");
  if (c.has_critic_lora()) {
    if (!critic_on_shared_base(c))
      e.fail("critic_lora", "applies to critic \"policy_base\" or \"reward_base\" only", "set");
    validate_lora_config(c.critic_lora(), e.nested("critic_lora"));
    if (c.critic_lora().rank() <= 0)
      e.nested("critic_lora").fail("rank", "expected > 0", std::to_string(c.critic_lora().rank()));
  }
}

bool critic_on_shared_base(const proto::PpoConfig& c) {
  return c.critic() == "policy_base" || c.critic() == "reward_base";
}

proto::LoraConfig critic_lora_config(const proto::PpoConfig& c) {
  if (c.has_critic_lora()) return c.critic_lora();
  if (c.has_lora() && c.lora().rank() > 0) return c.lora();
  proto::LoraConfig l;  // no LoRA on the policy (critic "reward_base"): rank 8 on q and v
  l.set_rank(8);
  return l;
}

void validate_ppo_config(const proto::PpoConfig& config, const std::string& source) {
  validate_ppo_config(config, ConfigErrors(config, source));
}

proto::PpoConfig resolved_ppo_config(const proto::PpoConfig& config) {
  proto::PpoConfig c = config;
  training::resolve_optimizer_config(c.mutable_optimizer(), training::OptimizerDefaults::kPpo);
  return c;
}

proto::OptimizerConfig critic_optimizer_config(const proto::PpoConfig& config) {
  proto::OptimizerConfig o = resolved_ppo_config(config).optimizer();
  o.set_lr(config.critic_lr());
  return o;
}

}  // namespace rlhf::policy
