#include "policy/dpo/dpo_config.h"

#include "common/error.h"
#include "common/files.h"
#include "policy/training/optimizer_config.h"
#include "policy/training/sft_config.h"

namespace rlhf::policy::dpo {

void validate_dpo_config(const proto::DpoConfig& c, const ConfigErrors& e) {
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
  if (c.loss() != "sigmoid" && c.loss() != "ipo")
    e.fail("loss", "expected \"sigmoid\" (DPO, cDPO) or \"ipo\"", config_quoted(c.loss()));
  if (!(c.beta() > 0)) e.fail("beta", "expected > 0", num(c.beta()));
  if (!(c.label_smoothing() >= 0 && c.label_smoothing() < 0.5))
    e.fail("label_smoothing", "expected a value in [0, 0.5)", num(c.label_smoothing()));
  if (c.loss() == "ipo" && c.label_smoothing() != 0)
    e.fail("label_smoothing", "expected 0 with loss \"ipo\" (cDPO smooths the sigmoid loss)",
           num(c.label_smoothing()));
  if (c.has_steps()) at_least("steps", c.steps(), 1, " (unset: derived from epochs)");
  if (!c.has_steps() && !(c.epochs() > 0)) e.fail("epochs", "expected > 0", num(c.epochs()));
  at_least("batch_pairs", c.batch_pairs(), 1);
  at_least("micro_batch_pairs", c.micro_batch_pairs(), 0, " (0 = the whole share of a batch)");
  training::validate_optimizer_config(c.optimizer(), e.nested("optimizer"));
  if (!(c.embedding_lr_scale() >= 0))
    e.fail("embedding_lr_scale", "expected >= 0", num(c.embedding_lr_scale()));
  at_least("eval_every", c.eval_every(), 1);
  if (c.has_save_every()) at_least("save_every", c.save_every(), 1, " (unset: eval_every)");
  at_least("threads", c.threads(), 0, " (0 = torch's choice)");
  at_least("stop_after", c.stop_after(), 0, " (0 = off)");
  validate_device_and_dtype(c.device(), c.dtype(), e);
  if (c.has_lora()) validate_lora_config(c.lora(), e.nested("lora"));
}

void validate_dpo_config(const proto::DpoConfig& config, const std::string& source) {
  validate_dpo_config(config, ConfigErrors(config, source));
}

proto::DpoConfig parse_dpo_config(const std::string& text, const std::string& source) {
  return parse_checked_config<proto::DpoConfig>(
      text, source, [](const auto& c, const ConfigErrors& e) { validate_dpo_config(c, e); });
}

proto::DpoConfig load_dpo_config(const std::string& path) {
  return parse_dpo_config(read_config_file(path), path);
}

proto::DpoConfig resolved_dpo_config(const proto::DpoConfig& config) {
  proto::DpoConfig c = config;
  fill_defaults(&c);
  if (!c.has_save_every()) c.set_save_every(c.eval_every());
  if (c.has_lora()) resolve_lora_config(c.mutable_lora());
  training::resolve_optimizer_config(c.mutable_optimizer(),
                                     training::OptimizerDefaults::kSupervised);
  return c;
}

}  // namespace rlhf::policy::dpo
