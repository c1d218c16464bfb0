#include "pipelines/pipeline_config.h"

#include <string>

#include "common/error.h"
#include "pipelines/compare.h"
#include "policy/ppo/ppo_config.h"
#include "policy/runtime/device.h"
#include "policy/training/sft_config.h"
#include "reward/train_config.h"

namespace rlhf::pipelines {

quickstart::SftMix sft_mix_from_config(const proto::QuickstartTaskConfig& q,
                                       const ConfigErrors& errors) {
  quickstart::SftMix mix;
  // The proto [default]s are SftMix's defaults (as floats: 0.55f differs from 0.55 by 1e-8).
  auto share = [&](float v, double* dst, const char* field) {
    if (!(v >= 0 && v <= 1)) errors.fail(field, "expected a share in [0, 1]", config_number(v));
    *dst = v;
  };
  share(q.p_gold_wrong_mode(), &mix.p_gold_wrong_mode, "p_gold_wrong_mode");
  share(q.p_wrong_wrong_mode(), &mix.p_wrong_wrong_mode, "p_wrong_wrong_mode");
  share(q.p_gold_right_mode(), &mix.p_gold_right_mode, "p_gold_right_mode");
  share(q.p_wrong_right_mode(), &mix.p_wrong_right_mode, "p_wrong_right_mode");
  if (mix.p_gold_wrong_mode + mix.p_wrong_wrong_mode > 1 + 1e-6)
    errors.fail(
        "p_wrong_wrong_mode",
        "expected p_gold_wrong_mode + p_wrong_wrong_mode to sum to at most 1 (the rest is "
        "noise)",
        config_number(mix.p_gold_wrong_mode) + " + " + config_number(mix.p_wrong_wrong_mode));
  if (mix.p_gold_right_mode + mix.p_wrong_right_mode > 1 + 1e-6)
    errors.fail(
        "p_wrong_right_mode",
        "expected p_gold_right_mode + p_wrong_right_mode to sum to at most 1 (the rest is "
        "noise)",
        config_number(mix.p_gold_right_mode) + " + " + config_number(mix.p_wrong_right_mode));
  if (q.wrong_mode_templates_size() > 0) {
    for (bool& w : mix.wrong_mode) w = false;
    for (const auto& name : q.wrong_mode_templates()) {
      int found = -1;
      for (int t = 0; t < quickstart::kNumTemplates; ++t)
        if (name == quickstart::template_name(static_cast<quickstart::Template>(t))) found = t;
      if (found < 0)
        errors.fail("wrong_mode_templates",
                    "expected template names of buys, finds, gets, loses, gives, eats",
                    config_quoted(name));
      mix.wrong_mode[found] = true;
    }
  }
  return mix;
}

quickstart::SftMix sft_mix_from_config(const proto::QuickstartTaskConfig& q,
                                       const std::string& path) {
  proto::PipelineConfig root;  // only for the field paths "quickstart.*"
  return sft_mix_from_config(q, ConfigErrors(root, path).nested("quickstart"));
}

void validate_pipeline_config(const proto::PipelineConfig& c, const ConfigErrors& errors) {
  auto at_least = [](const ConfigErrors& e, const char* field, int64_t v, int64_t min) {
    if (v < min) e.fail(field, "expected >= " + std::to_string(min), std::to_string(v));
  };
  if (c.schema_version() != 1)
    errors.fail("schema_version", "expected 1", std::to_string(c.schema_version()));
  if (c.task() != "quickstart")
    errors.fail("task", "expected \"quickstart\" (the built-in task; the only one)",
                config_quoted(c.task()));
  if (c.name().empty()) errors.fail("name", "expected a run name", "\"\"");
  at_least(errors, "threads", c.threads(), 0);

  const ConfigErrors qe = errors.nested("quickstart");
  const auto& q = c.quickstart();
  at_least(qe, "sft_examples", q.sft_examples(), 1);
  at_least(qe, "tokenizer_problems", q.tokenizer_problems(), 1);
  at_least(qe, "heldout_problems", q.heldout_problems(), 1);
  at_least(qe, "sample_prompts", q.sample_prompts(), 1);
  at_least(qe, "ppo_prompts", q.ppo_prompts(), 1);
  if (q.max_operand() < quickstart::kMinOperandLimit ||
      q.max_operand() > quickstart::kMaxOperandLimit)
    qe.fail("max_operand",
            "expected " + std::to_string(quickstart::kMinOperandLimit) + ".." +
                std::to_string(quickstart::kMaxOperandLimit),
            std::to_string(q.max_operand()));
  sft_mix_from_config(q, qe);

  at_least(errors.nested("tokenizer"), "vocab_size", c.tokenizer().vocab_size(), 1);

  const ConfigErrors se = errors.nested("sample");
  const auto& s = c.sample();
  at_least(se, "answers_per_prompt", s.answers_per_prompt(), 1);
  if (!(s.temperature() > 0))
    se.fail("temperature", "expected > 0", config_number(s.temperature()));
  if (!(s.top_p() > 0 && s.top_p() <= 1))
    se.fail("top_p", "expected a value in (0, 1]", config_number(s.top_p()));
  at_least(se, "max_new_tokens", s.max_new_tokens(), 1);
  at_least(se, "batch_size", s.batch_size(), 1);
  policy::validate_device_and_dtype(s.device(), s.dtype(), se);
  policy::validate_device_and_dtype(c.has_device() ? c.device() : "cpu",
                                    c.has_dtype() ? c.dtype() : "fp32", errors);

  const ConfigErrors ae = errors.nested("annotate");
  const auto& a = c.annotate();
  if (a.mode() != "simulate" && a.mode() != "people")
    ae.fail("mode", "expected \"simulate\" or \"people\"", config_quoted(a.mode()));
  if (!(a.noise() >= 0 && a.noise() <= 1))
    ae.fail("noise", "expected a value in [0, 1]", config_number(a.noise()));
  at_least(ae, "overlap", a.overlap(), 1);
  at_least(ae, "annotators", a.annotators(), 1);

  const ConfigErrors pe = errors.nested("processes");
  const auto& p = c.processes();
  for (const auto& [field, n] :
       {std::pair<const char*, int>{"sft", p.sft()}, {"reward", p.reward()}, {"ppo", p.ppo()}})
    if (n < 1 || n > 256) pe.fail(field, "expected a number of ranks in 1..256", std::to_string(n));

  // The stage sections, with the lines of this file (the pipeline fills in data files, checkpoints
  // and output folders later; the stages check those).
  if (c.has_sft()) policy::validate_sft_config(c.sft(), errors.nested("sft"));
  if (c.has_reward()) reward::validate_config(c.reward(), errors.nested("reward"));
  if (c.has_ppo()) policy::validate_ppo_config(c.ppo(), errors.nested("ppo"));
  if (c.has_compare()) validate_compare_config(c.compare(), errors.nested("compare"));
}

proto::PipelineConfig load_pipeline_config(const std::string& path) {
  proto::PipelineConfig c;
  google::protobuf::TextFormat::ParseInfoTree tree;
  parse_text_config_file(path, &c, &tree);
  validate_pipeline_config(c, ConfigErrors(c, path, &tree));
  fill_defaults(&c, /*recurse=*/false);
  fill_defaults(c.mutable_quickstart());
  fill_defaults(c.mutable_tokenizer());
  fill_defaults(c.mutable_sample());
  fill_defaults(c.mutable_annotate());
  fill_defaults(c.mutable_processes());
  return c;
}

}  // namespace rlhf::pipelines
