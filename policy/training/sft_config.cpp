#include "policy/training/sft_config.h"

#include <google/protobuf/text_format.h>

#include <algorithm>

#include "common/error.h"
#include "common/files.h"
#include "policy/runtime/device.h"
#include "policy/training/optimizer_config.h"

namespace rlhf::policy {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

void validate_lora_config(const proto::LoraConfig& l, const ConfigErrors& e) {
  if (l.rank() < 0) e.fail("rank", "expected >= 0 (0 = LoRA off)", std::to_string(l.rank()));
  if (l.rank() == 0) return;
  if (l.schema_version() != 1)
    e.fail("schema_version", "expected 1", std::to_string(l.schema_version()));
  if (l.has_alpha() && !(l.alpha() > 0))
    e.fail("alpha", "expected > 0 (unset: alpha = rank)", config_number(l.alpha()));
  if (!(l.dropout() >= 0 && l.dropout() < 1))
    e.fail("dropout", "expected a value in [0, 1)", config_number(l.dropout()));
  static const char* kTargets[] = {"q", "k", "v", "o", "gate", "up", "down"};
  for (const auto& t : l.targets())
    if (std::find_if(std::begin(kTargets), std::end(kTargets),
                     [&](const char* k) { return t == k; }) == std::end(kTargets))
      e.fail("targets", "expected projections of q, k, v, o, gate, up, down", config_quoted(t));
}

void validate_device_and_dtype(const std::string& device, const std::string& dtype,
                               const ConfigErrors& e) {
  if (const std::string expected = device_syntax_error(device); !expected.empty())
    e.fail("device", expected, config_quoted(device));
  if (const std::string expected = dtype_syntax_error(dtype); !expected.empty())
    e.fail("dtype", expected, config_quoted(dtype));
}

void validate_sft_config(const proto::SftConfig& c, const ConfigErrors& e) {
  auto num = [](double v) { return config_number(v); };
  if (c.schema_version() != 1)
    e.fail("schema_version", "expected 1", std::to_string(c.schema_version()));
  if (c.format() != "auto" && c.format() != "jsonl" && c.format() != "text")
    e.fail("format", "expected \"auto\", \"jsonl\" or \"text\"", config_quoted(c.format()));
  if (!(c.heldout_fraction() >= 0 && c.heldout_fraction() < 1))
    e.fail("heldout_fraction", "expected a value in [0, 1)", num(c.heldout_fraction()));
  if (c.has_seq_len() && c.seq_len() < 2)
    e.fail("seq_len", "expected >= 2 (unset: the model's max_seq_len)",
           std::to_string(c.seq_len()));
  if (c.has_steps() && c.steps() < 1)
    e.fail("steps", "expected >= 1 (unset: derived from epochs)", std::to_string(c.steps()));
  if (!c.has_steps() && !(c.epochs() > 0)) e.fail("epochs", "expected > 0", num(c.epochs()));
  if (c.batch_size() < 1) e.fail("batch_size", "expected >= 1", std::to_string(c.batch_size()));
  if (c.grad_accum() < 1) e.fail("grad_accum", "expected >= 1", std::to_string(c.grad_accum()));
  training::validate_optimizer_config(c.optimizer(), e.nested("optimizer"));
  if (c.eval_every() < 1) e.fail("eval_every", "expected >= 1", std::to_string(c.eval_every()));
  if (c.eval_batches() < 0)
    e.fail("eval_batches", "expected >= 0 (0 = all)", std::to_string(c.eval_batches()));
  if (c.has_save_every() && c.save_every() < 1)
    e.fail("save_every", "expected >= 1 (unset: eval_every)", std::to_string(c.save_every()));
  if (c.early_stop_patience() < 0)
    e.fail("early_stop_patience", "expected >= 0 (0 = never)",
           std::to_string(c.early_stop_patience()));
  if (c.threads() < 0)
    e.fail("threads", "expected >= 0 (0 = torch's choice)", std::to_string(c.threads()));
  if (c.stop_after() < 0)
    e.fail("stop_after", "expected >= 0 (0 = off)", std::to_string(c.stop_after()));
  validate_device_and_dtype(c.device(), c.dtype(), e);
  if (c.has_init_from() && !c.init_from().empty() && c.has_model())
    e.fail("model", "expected either init_from (a checkpoint) or model (from scratch), not both",
           "both");
  if (c.has_lora()) validate_lora_config(c.lora(), e.nested("lora"));
}

void validate_sft_config(const proto::SftConfig& config, const std::string& source) {
  validate_sft_config(config, ConfigErrors(config, source));
}

proto::SftConfig parse_sft_config(const std::string& text, const std::string& source) {
  return parse_checked_config<proto::SftConfig>(
      text, source, [](const auto& c, const ConfigErrors& e) { validate_sft_config(c, e); });
}

proto::SftConfig load_sft_config(const std::string& path) {
  return parse_sft_config(read_config_file(path), path);
}

void resolve_lora_config(proto::LoraConfig* l) {
  if (l->rank() <= 0) return;
  if (!l->has_alpha()) l->set_alpha(static_cast<float>(l->rank()));
  if (l->targets_size() == 0) {
    l->add_targets("q");
    l->add_targets("v");
  }
}

proto::SftConfig resolved_sft_config(const proto::SftConfig& config) {
  proto::SftConfig c = config;
  fill_defaults(&c);
  if (c.format() == "auto") {
    const std::string& f = c.train_file();
    c.set_format(ends_with(f, ".jsonl") || ends_with(f, ".json") ? "jsonl" : "text");
  }
  if (!c.has_save_every()) c.set_save_every(c.eval_every());
  if (c.has_lora()) resolve_lora_config(c.mutable_lora());
  training::resolve_optimizer_config(c.mutable_optimizer(),
                                     training::OptimizerDefaults::kSupervised);
  return c;
}

}  // namespace rlhf::policy
