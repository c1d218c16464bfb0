#include "reward/train_config.h"

#include <google/protobuf/text_format.h>

#include "common/error.h"
#include "common/files.h"
#include "policy/training/optimizer_config.h"
#include "policy/training/sft_config.h"

namespace rlhf::reward {

void validate_config(const proto::RewardTrainConfig& c, const ConfigErrors& e) {
  auto num = [](double v) { return config_number(v); };
  auto at_least = [&](const char* field, int64_t v, int64_t min, const char* note = "") {
    if (v < min) e.fail(field, "expected >= " + std::to_string(min) + note, std::to_string(v));
  };
  if (c.schema_version() != 1)
    e.fail("schema_version", "expected 1", std::to_string(c.schema_version()));
  if (c.format() != "pairs" && c.format() != "hh" && c.format() != "messages")
    e.fail("format", "expected \"pairs\", \"hh\" or \"messages\"", config_quoted(c.format()));
  if (!(c.heldout_fraction() >= 0 && c.heldout_fraction() < 1))
    e.fail("heldout_fraction", "expected a value in [0, 1)", num(c.heldout_fraction()));
  at_least("max_pairs", c.max_pairs(), 0, " (0 = all)");
  at_least("max_prompt_tokens", c.max_prompt_tokens(), 1);
  at_least("max_answer_tokens", c.max_answer_tokens(), 1);
  if (c.has_steps()) at_least("steps", c.steps(), 1, " (unset: derived from epochs)");
  if (!c.has_steps() && !(c.epochs() > 0)) e.fail("epochs", "expected > 0", num(c.epochs()));
  at_least("batch_pairs", c.batch_pairs(), 1);
  policy::training::validate_optimizer_config(c.optimizer(), e.nested("optimizer"));
  if (!(c.embedding_lr_scale() >= 0))
    e.fail("embedding_lr_scale", "expected >= 0", num(c.embedding_lr_scale()));
  at_least("eval_every", c.eval_every(), 1);
  if (c.has_save_every()) at_least("save_every", c.save_every(), 1, " (unset: eval_every)");
  at_least("threads", c.threads(), 0, " (0 = torch's choice)");
  if (!(c.time_limit_seconds() >= 0))
    e.fail("time_limit_seconds", "expected >= 0 (0 = no limit)", num(c.time_limit_seconds()));
  policy::validate_device_and_dtype(c.device(), c.dtype(), e);
  if (!c.annotation_db().empty() && !c.train_file().empty())
    e.fail("annotation_db", "expected either annotation_db or train_file, not both",
           config_quoted(c.annotation_db()) + " and train_file " + config_quoted(c.train_file()));
  if (!c.init_from().empty() && c.has_model())
    e.fail("model",
           "expected either init_from (an SFT checkpoint) or model (from scratch), not both",
           "both");
  if (c.has_lora()) policy::validate_lora_config(c.lora(), e.nested("lora"));
}

void validate_config(const proto::RewardTrainConfig& config, const std::string& source) {
  validate_config(config, ConfigErrors(config, source));
}

proto::RewardTrainConfig parse_train_config(const std::string& text, const std::string& name) {
  return parse_checked_config<proto::RewardTrainConfig>(
      text, name, [](const auto& c, const ConfigErrors& e) { validate_config(c, e); });
}

proto::RewardTrainConfig load_train_config(const std::string& path) {
  return parse_train_config(read_config_file(path), path);
}

proto::RewardTrainConfig resolved_train_config(const proto::RewardTrainConfig& config) {
  proto::RewardTrainConfig c = config;
  fill_defaults(&c);
  if (!c.has_save_every()) c.set_save_every(c.eval_every());
  if (c.has_lora()) policy::resolve_lora_config(c.mutable_lora());
  policy::training::resolve_optimizer_config(c.mutable_optimizer(),
                                             policy::training::OptimizerDefaults::kSupervised);
  return c;
}

std::string to_text(const proto::RewardTrainConfig& config) { return to_text_format(config); }

}  // namespace rlhf::reward
