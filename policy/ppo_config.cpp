#include "policy/ppo_config.h"

#include "common/error.h"
#include "common/text_config.h"
#include "policy/lora.h"

namespace rlhf::policy {

// ---------------------------------------------------------------------------------------------
// Config

namespace {
void require(bool ok, const std::string& field, const std::string& what) {
  if (!ok) throw Error("PpoConfig." + field + ": " + what);
}
}  // namespace

proto::PpoConfig load_ppo_config(const std::string& path) {
  proto::PpoConfig config;
  parse_text_config_file(path, &config);
  return config;
}

void validate_ppo_config(const proto::PpoConfig& c) {
  require(c.iterations() >= 0, "iterations", "must be >= 0");
  require(c.batch_size() >= 1, "batch_size", "must be >= 1");
  require(c.minibatch_size() >= 1 && c.minibatch_size() <= c.batch_size(), "minibatch_size",
          "must be in [1, batch_size]");
  require(c.ppo_epochs() >= 1, "ppo_epochs", "must be >= 1");
  require(c.policy_lr() >= 0 && c.value_lr() >= 0, "policy_lr/value_lr", "must be >= 0");
  require(c.lr_schedule() == "cosine" || c.lr_schedule() == "linear" ||
              c.lr_schedule() == "constant",
          "lr_schedule", "must be \"cosine\", \"linear\" or \"constant\", got \"" +
                             c.lr_schedule() + "\"");
  require(c.lr_warmup_iterations() >= 0, "lr_warmup_iterations", "must be >= 0");
  require(c.min_lr_ratio() >= 0 && c.min_lr_ratio() <= 1, "min_lr_ratio", "must be in [0, 1]");
  require(c.target_kl() >= 0, "target_kl", "must be >= 0 (0 = off)");
  require(c.gamma() >= 0 && c.gamma() <= 1, "gamma", "must be in [0, 1]");
  require(c.lam() >= 0 && c.lam() <= 1, "lam", "must be in [0, 1]");
  require(c.clip_range() > 0, "clip_range", "must be > 0");
  require(c.value_clip_range() > 0, "value_clip_range", "must be > 0");
  require(c.kl_coef() >= 0, "kl_coef", "must be >= 0");
  require(!c.adaptive_kl() || c.kl_target() > 0, "kl_target", "must be > 0 with adaptive_kl");
  require(!c.adaptive_kl() || c.kl_horizon() > 0, "kl_horizon", "must be > 0 with adaptive_kl");
  require(c.max_new_tokens() >= 1, "max_new_tokens", "must be >= 1");
  require(c.max_prompt_tokens() >= 1, "max_prompt_tokens", "must be >= 1");
  require(c.temperature() >= 0, "temperature", "must be >= 0 (0 = greedy)");
  require(c.score_clip() >= 0, "score_clip", "must be >= 0 (0 = off)");
  require(c.checkpoint_every() >= 0, "checkpoint_every", "must be >= 0");
  require(c.keep_rollouts() >= 0, "keep_rollouts", "must be >= 0");
  if (c.has_lora() && c.lora().rank() != 0) {
    try {
      LoraOptions::from_proto(c.lora()).validate();
    } catch (const Error& e) {
      require(false, "lora", e.what());
    }
  }
}

}  // namespace rlhf::policy
