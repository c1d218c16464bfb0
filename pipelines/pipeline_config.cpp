#include "pipelines/pipeline_config.h"

#include <string>

#include "common/error.h"
#include "common/text_config.h"

namespace rlhf::pipelines {

// The SFT answer mix of a pipeline config (defaults where fields are 0 / empty); throws naming the
// field when a share is outside 0..1, a pair sums above 1, or a template name is unknown.
quickstart::SftMix sft_mix_from_config(const proto::QuickstartTaskConfig& q, const std::string& path) {
  quickstart::SftMix mix;
  auto share = [&](float v, double* dst, const char* field) {
    if (v == 0) return;
    if (!(v > 0 && v <= 1))
      throw Error(path + ": field 'quickstart." + field + "': expected a share in (0, 1], got " +
                  std::to_string(v));
    *dst = v;
  };
  share(q.p_gold_wrong_mode(), &mix.p_gold_wrong_mode, "p_gold_wrong_mode");
  share(q.p_wrong_wrong_mode(), &mix.p_wrong_wrong_mode, "p_wrong_wrong_mode");
  share(q.p_gold_right_mode(), &mix.p_gold_right_mode, "p_gold_right_mode");
  share(q.p_wrong_right_mode(), &mix.p_wrong_right_mode, "p_wrong_right_mode");
  if (mix.p_gold_wrong_mode + mix.p_wrong_wrong_mode > 1 + 1e-6 ||
      mix.p_gold_right_mode + mix.p_wrong_right_mode > 1 + 1e-6)
    throw Error(path + ": fields 'quickstart.p_gold_*' + 'quickstart.p_wrong_*' of one mode must "
                       "sum to at most 1 (the rest is noise)");
  if (q.wrong_mode_templates_size() > 0) {
    for (bool& w : mix.wrong_mode) w = false;
    for (const auto& name : q.wrong_mode_templates()) {
      int found = -1;
      for (int t = 0; t < quickstart::kNumTemplates; ++t)
        if (name == quickstart::template_name(static_cast<quickstart::Template>(t))) found = t;
      if (found < 0)
        throw Error(path + ": field 'quickstart.wrong_mode_templates': unknown template '" + name +
                    "' (expected buys, finds, gets, loses, gives or eats)");
      mix.wrong_mode[found] = true;
    }
  }
  return mix;
}

void apply_pipeline_defaults(proto::PipelineConfig* c) {
  if (c->schema_version() == 0) c->set_schema_version(1);
  if (c->name().empty()) c->set_name("quickstart");
  if (c->task().empty()) c->set_task("quickstart");
  auto* q = c->mutable_quickstart();
  if (q->sft_examples() == 0) q->set_sft_examples(6000);
  if (q->tokenizer_problems() == 0) q->set_tokenizer_problems(3000);
  if (q->heldout_problems() == 0) q->set_heldout_problems(200);
  if (q->sample_prompts() == 0) q->set_sample_prompts(300);
  if (q->ppo_prompts() == 0) q->set_ppo_prompts(2000);
  if (q->max_operand() == 0) q->set_max_operand(quickstart::kDefaultMaxOperand);
  if (c->tokenizer().vocab_size() == 0) c->mutable_tokenizer()->set_vocab_size(512);
  auto* s = c->mutable_sample();
  if (s->answers_per_prompt() == 0) s->set_answers_per_prompt(4);
  if (s->temperature() == 0) s->set_temperature(1.0f);
  if (s->top_p() == 0) s->set_top_p(1.0f);
  if (s->max_new_tokens() == 0) s->set_max_new_tokens(24);
  if (s->batch_size() == 0) s->set_batch_size(64);
  auto* a = c->mutable_annotate();
  if (a->mode().empty()) a->set_mode("simulate");
  if (a->teacher().empty()) a->set_teacher("arithmetic");
  if (a->overlap() == 0) a->set_overlap(1);
  if (a->annotators() == 0) a->set_annotators(1);
}

proto::PipelineConfig load_pipeline_config(const std::string& path) {
  proto::PipelineConfig c;
  parse_text_config_file(path, &c);
  if (c.task() != "" && c.task() != "quickstart")
    throw Error(path + ": field 'task': only \"quickstart\" (the built-in task) is supported, got \"" +
                c.task() + "\"");
  if (c.annotate().mode() != "" && c.annotate().mode() != "simulate" &&
      c.annotate().mode() != "people")
    throw Error(path + ": field 'annotate.mode': expected \"simulate\" or \"people\", got \"" +
                c.annotate().mode() + "\"");
  int m = c.quickstart().max_operand();
  if (m != 0 && (m < quickstart::kMinOperandLimit || m > quickstart::kMaxOperandLimit))
    throw Error(path + ": field 'quickstart.max_operand': expected " +
                std::to_string(quickstart::kMinOperandLimit) + ".." +
                std::to_string(quickstart::kMaxOperandLimit) + ", got " + std::to_string(m));
  sft_mix_from_config(c.quickstart(), path);  // validates the mix fields
  apply_pipeline_defaults(&c);
  return c;
}

}  // namespace rlhf::pipelines
