#include "policy/sft_config.h"

#include <google/protobuf/text_format.h>

#include <sstream>

#include "common/error.h"
#include "common/files.h"
#include "common/text_config.h"
#include "policy/lora.h"

namespace rlhf::policy {

// ---- config ------------------------------------------------------------------------------------

namespace {

void validate_impl(const proto::SftConfig& c, const std::string& source,
                   const google::protobuf::TextFormat::ParseInfoTree* tree) {
  auto fail = [&](const std::string& field, const std::string& what) {
    std::string where = source;
    if (tree) {
      const auto* fd = c.GetDescriptor()->FindFieldByName(field);
      if (fd) {
        auto loc = tree->GetLocation(fd, fd->is_repeated() ? 0 : -1);
        if (loc.line >= 0) where += ":" + std::to_string(loc.line + 1);
      }
    }
    throw Error(where + ": field '" + field + "': " + what);
  };
  auto num = [](double v) {
    std::ostringstream os;
    os << v;
    return os.str();
  };
  if (c.schema_version() > 1)
    fail("schema_version", "unsupported value " + std::to_string(c.schema_version()) + " (expected 1)");
  if (!c.format().empty() && c.format() != "jsonl" && c.format() != "text")
    fail("format", "expected \"jsonl\" or \"text\", got \"" + c.format() + "\"");
  if (c.heldout_fraction() < 0 || c.heldout_fraction() >= 1)
    fail("heldout_fraction", "expected a value in [0, 1), got " + num(c.heldout_fraction()));
  if (c.seq_len() < 0 || c.seq_len() == 1) fail("seq_len", "expected >= 2, got " + std::to_string(c.seq_len()));
  if (c.steps() < 0) fail("steps", "expected >= 0, got " + std::to_string(c.steps()));
  if (c.epochs() < 0) fail("epochs", "expected >= 0, got " + num(c.epochs()));
  if (c.batch_size() < 0) fail("batch_size", "expected > 0, got " + std::to_string(c.batch_size()));
  if (c.grad_accum() < 0) fail("grad_accum", "expected > 0, got " + std::to_string(c.grad_accum()));
  if (c.lr() < 0) fail("lr", "expected > 0, got " + num(c.lr()));
  if (c.min_lr_ratio() < 0 || c.min_lr_ratio() > 1)
    fail("min_lr_ratio", "expected a value in [0, 1], got " + num(c.min_lr_ratio()));
  if (c.beta1() < 0 || c.beta1() >= 1) fail("beta1", "expected a value in [0, 1), got " + num(c.beta1()));
  if (c.beta2() < 0 || c.beta2() >= 1) fail("beta2", "expected a value in [0, 1), got " + num(c.beta2()));
  if (c.eval_every() < 0) fail("eval_every", "expected >= 0");
  if (c.eval_batches() < 0) fail("eval_batches", "expected >= 0");
  if (c.save_every() < 0) fail("save_every", "expected >= 0");
  if (c.early_stop_patience() < 0) fail("early_stop_patience", "expected >= 0");
  if (c.threads() < 0) fail("threads", "expected >= 0");
  if (c.stop_after() < 0) fail("stop_after", "expected >= 0");
  if (!c.device().empty() && c.device() != "cpu" && c.device().rfind("cuda", 0) != 0)
    fail("device", "expected \"cpu\" or \"cuda[:N]\", got \"" + c.device() + "\"");
  if (!c.init_from().empty() && c.has_model())
    fail("model", "give either init_from (a checkpoint) or model (from scratch), not both");
  if (c.has_lora() && c.lora().rank() != 0) {
    LoraOptions o = LoraOptions::from_proto(c.lora());
    try {
      o.validate();
    } catch (const Error& e) {
      fail("lora", e.what());
    }
  }
}

}  // namespace

proto::SftConfig parse_sft_config(const std::string& text, const std::string& source) {
  proto::SftConfig config;
  google::protobuf::TextFormat::ParseInfoTree tree;
  parse_text_config(text, source, &config, &tree);
  validate_impl(config, source, &tree);
  return config;
}

proto::SftConfig load_sft_config(const std::string& path) {
  return parse_sft_config(read_file(path), path);
}

void validate_sft_config(const proto::SftConfig& config, const std::string& source) {
  validate_impl(config, source, nullptr);
}

void apply_sft_defaults(proto::SftConfig* c) {
  c->set_schema_version(1);
  if (c->format().empty()) {
    const std::string& f = c->train_file();
    const bool json = (f.size() >= 6 && f.substr(f.size() - 6) == ".jsonl") ||
                      (f.size() >= 5 && f.substr(f.size() - 5) == ".json");
    c->set_format(json ? "jsonl" : "text");
  }
  if (c->heldout_fraction() == 0 && c->eval_file().empty()) c->set_heldout_fraction(0.05f);
  if (c->steps() == 0 && c->epochs() == 0) c->set_epochs(1);
  if (c->batch_size() == 0) c->set_batch_size(8);
  if (c->grad_accum() == 0) c->set_grad_accum(1);
  if (c->lr() == 0) c->set_lr(3e-4f);
  if (c->min_lr_ratio() == 0) c->set_min_lr_ratio(0.1f);
  if (c->weight_decay() == 0) c->set_weight_decay(0.1f);
  if (c->weight_decay() < 0) c->set_weight_decay(0.0f);
  if (c->grad_clip() == 0) c->set_grad_clip(1.0f);
  if (c->beta1() == 0) c->set_beta1(0.9f);
  if (c->beta2() == 0) c->set_beta2(0.95f);
  if (c->eval_every() == 0) c->set_eval_every(50);
  if (c->save_every() == 0) c->set_save_every(c->eval_every());
  if (c->device().empty()) c->set_device("cpu");
  if (c->has_lora() && c->lora().rank() > 0) {
    auto* l = c->mutable_lora();
    l->set_schema_version(1);
    if (l->alpha() == 0) l->set_alpha(static_cast<float>(l->rank()));
    if (l->targets_size() == 0) {
      l->add_targets("q");
      l->add_targets("v");
    }
  }
}

}  // namespace rlhf::policy
