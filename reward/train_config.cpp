#include "reward/train_config.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include "common/error.h"
#include "common/text_config.h"
#include "common/files.h"

namespace rlhf::reward {

namespace {

// "<source>:<line>: field '<name>': <what>" with the line where the field was set, if known.
[[noreturn]] void field_error(const std::string& source,
                              const google::protobuf::TextFormat::ParseInfoTree* tree,
                              const proto::RewardTrainConfig& config, const std::string& field,
                              const std::string& what) {
  std::string where = source;
  if (tree) {
    const auto* fd = config.GetDescriptor()->FindFieldByName(field);
    if (fd) {
      auto loc = tree->GetLocation(fd, -1);
      if (loc.line >= 0) where += ":" + std::to_string(loc.line + 1);
    }
  }
  throw Error(where + ": field '" + field + "': " + what);
}

void validate_impl(const proto::RewardTrainConfig& c, const std::string& source,
                   const google::protobuf::TextFormat::ParseInfoTree* tree) {
  auto fail = [&](const std::string& field, const std::string& what) {
    field_error(source, tree, c, field, what);
  };
  if (c.schema_version() > 1)
    fail("schema_version", "unsupported value " + std::to_string(c.schema_version()) +
                               " (expected 1)");
  if (!c.format().empty() && c.format() != "pairs" && c.format() != "hh")
    fail("format", "expected \"pairs\" or \"hh\", got \"" + c.format() + "\"");
  if (c.heldout_fraction() < 0 || c.heldout_fraction() >= 1)
    fail("heldout_fraction", "expected a value in [0, 1), got " + std::to_string(c.heldout_fraction()));
  if (c.max_pairs() < 0) fail("max_pairs", "expected >= 0");
  if (c.max_prompt_tokens() < 0) fail("max_prompt_tokens", "expected >= 0");
  if (c.max_answer_tokens() < 0) fail("max_answer_tokens", "expected >= 0");
  if (c.steps() < 0) fail("steps", "expected >= 0, got " + std::to_string(c.steps()));
  if (c.epochs() < 0) fail("epochs", "expected >= 0");
  if (c.batch_pairs() < 0) fail("batch_pairs", "expected > 0, got " + std::to_string(c.batch_pairs()));
  if (c.lr() < 0) fail("lr", "expected > 0, got " + std::to_string(c.lr()));
  if (c.min_lr_ratio() < 0 || c.min_lr_ratio() > 1) fail("min_lr_ratio", "expected a value in [0, 1]");
  if (c.warmup_steps() < 0) fail("warmup_steps", "expected >= 0");
  if (c.grad_clip() < 0) fail("grad_clip", "expected >= 0");
  if (c.beta1() < 0 || c.beta1() >= 1) fail("beta1", "expected a value in [0, 1)");
  if (c.beta2() < 0 || c.beta2() >= 1) fail("beta2", "expected a value in [0, 1)");
  if (c.embedding_lr_scale() < 0) fail("embedding_lr_scale", "expected >= 0");
  if (c.eval_every() < 0) fail("eval_every", "expected >= 0");
  if (c.save_every() < 0) fail("save_every", "expected >= 0");
  if (c.threads() < 0) fail("threads", "expected >= 0");
  if (c.time_limit_seconds() < 0) fail("time_limit_seconds", "expected >= 0");
  if (!c.device().empty() && c.device() != "cpu" && c.device().rfind("cuda", 0) != 0)
    fail("device", "expected \"cpu\" or \"cuda[:N]\", got \"" + c.device() + "\"");
  if (!c.annotation_db().empty() && !c.train_file().empty())
    fail("annotation_db", "give either annotation_db or train_file, not both");
  if (!c.init_from().empty() && c.has_model())
    fail("model", "give either init_from (an SFT checkpoint) or model (from scratch), not both");
}

}  // namespace

proto::RewardTrainConfig parse_train_config(const std::string& text, const std::string& name) {
  proto::RewardTrainConfig config;
  google::protobuf::TextFormat::ParseInfoTree tree;
  parse_text_config(text, name, &config, &tree);
  validate_impl(config, name, &tree);
  return config;
}

proto::RewardTrainConfig load_train_config(const std::string& path) {
  return parse_train_config(read_file(path), path);
}

void apply_defaults(proto::RewardTrainConfig* c) {
  c->set_schema_version(1);
  if (c->format().empty()) c->set_format("pairs");
  if (c->heldout_fraction() == 0 && c->eval_file().empty()) c->set_heldout_fraction(0.1f);
  if (c->max_prompt_tokens() == 0) c->set_max_prompt_tokens(192);
  if (c->max_answer_tokens() == 0) c->set_max_answer_tokens(192);
  if (c->steps() == 0 && c->epochs() == 0) c->set_epochs(1);
  if (c->batch_pairs() == 0) c->set_batch_pairs(16);
  if (c->lr() == 0) c->set_lr(3e-4f);
  if (c->min_lr_ratio() == 0) c->set_min_lr_ratio(0.1f);
  if (c->weight_decay() == 0) c->set_weight_decay(0.1f);
  if (c->weight_decay() < 0) c->set_weight_decay(0.0f);
  if (c->grad_clip() == 0) c->set_grad_clip(1.0f);
  if (c->beta1() == 0) c->set_beta1(0.9f);
  if (c->beta2() == 0) c->set_beta2(0.95f);
  if (c->embedding_lr_scale() == 0) c->set_embedding_lr_scale(1.0f);
  if (c->eval_every() == 0) c->set_eval_every(50);
  if (c->save_every() == 0) c->set_save_every(c->eval_every());
  if (c->device().empty()) c->set_device("cpu");
}

void validate_config(const proto::RewardTrainConfig& config, const std::string& source) {
  validate_impl(config, source, nullptr);
}

std::string to_text(const proto::RewardTrainConfig& config) {
  std::string out;
  google::protobuf::TextFormat::PrintToString(config, &out);
  return out;
}

}  // namespace rlhf::reward
