#include "policy/training/optimizer_config.h"

#include <cmath>
#include <string>

namespace rlhf::policy::training {

proto::OptimizerConfig optimizer_defaults(OptimizerDefaults trainer) {
  proto::OptimizerConfig d;
  if (trainer == OptimizerDefaults::kPpo) {
    d.set_lr(1e-5);
    d.set_weight_decay(0.0);  // TRL / OpenRLHF use no weight decay for PPO
    d.set_beta2(0.999);       // TRL / OpenRLHF
    d.set_eps(1e-5);          // "The N Implementation Details of RLHF with PPO", #3
    d.set_warmup_ratio(0.0);
  } else {
    d.set_lr(3e-4);
    d.set_weight_decay(0.1);
    d.set_beta2(0.95);
    d.set_eps(1e-8);
    d.set_warmup_ratio(0.05);
  }
  return d;
}

void resolve_optimizer_config(proto::OptimizerConfig* o, OptimizerDefaults trainer) {
  proto::OptimizerConfig resolved = optimizer_defaults(trainer);
  resolved.MergeFrom(*o);  // the fields set in `o` win
  fill_defaults(&resolved);
  *o = resolved;
}

proto::OptimizerConfig applied_settings(const proto::OptimizerConfig& o,
                                        OptimizerDefaults trainer) {
  proto::OptimizerConfig a = o;
  if (trainer != OptimizerDefaults::kSupervised) return a;
  auto f32 = [](double v) { return static_cast<double>(static_cast<float>(v)); };
  a.set_lr(f32(o.lr()));
  a.set_weight_decay(f32(o.weight_decay()));
  a.set_beta1(f32(o.beta1()));
  a.set_beta2(f32(o.beta2()));
  a.set_grad_clip(f32(o.grad_clip()));
  a.set_warmup_ratio(f32(o.warmup_ratio()));
  a.set_min_lr_ratio(f32(o.min_lr_ratio()));
  return a;
}

void validate_optimizer_config(const proto::OptimizerConfig& o, const ConfigErrors& e,
                               bool lr_may_be_zero) {
  auto num = [](double v) { return config_number(v); };
  auto in_unit = [&](const char* field, double v) {
    if (!(v >= 0 && v <= 1)) e.fail(field, "expected a value in [0, 1]", num(v));
  };
  if (o.has_lr() && !(lr_may_be_zero ? o.lr() >= 0 : o.lr() > 0))
    e.fail("lr", lr_may_be_zero ? "expected >= 0" : "expected > 0", num(o.lr()));
  if (o.has_weight_decay() && !(o.weight_decay() >= 0))
    e.fail("weight_decay", "expected >= 0 (0 = none)", num(o.weight_decay()));
  if (!(o.beta1() >= 0 && o.beta1() < 1))
    e.fail("beta1", "expected a value in [0, 1)", num(o.beta1()));
  if (o.has_beta2() && !(o.beta2() >= 0 && o.beta2() < 1))
    e.fail("beta2", "expected a value in [0, 1)", num(o.beta2()));
  if (o.has_eps() && !(o.eps() > 0)) e.fail("eps", "expected > 0", num(o.eps()));
  if (!(o.grad_clip() >= 0))
    e.fail("grad_clip", "expected >= 0 (0 = no clipping)", num(o.grad_clip()));
  if (o.has_warmup_steps() && o.warmup_steps() < 0)
    e.fail("warmup_steps", "expected >= 0 (0 = no warm-up)", std::to_string(o.warmup_steps()));
  if (o.has_warmup_ratio()) in_unit("warmup_ratio", o.warmup_ratio());
  if (o.schedule() != "cosine" && o.schedule() != "linear" && o.schedule() != "constant")
    e.fail("schedule", "expected \"cosine\", \"linear\" or \"constant\"",
           config_quoted(o.schedule()));
  in_unit("min_lr_ratio", o.min_lr_ratio());
}

int64_t resolved_warmup_steps(const proto::OptimizerConfig& o, int64_t total_steps) {
  if (o.has_warmup_steps()) return o.warmup_steps();
  return static_cast<int64_t>(std::floor(o.warmup_ratio() * static_cast<double>(total_steps)));
}

}  // namespace rlhf::policy::training
