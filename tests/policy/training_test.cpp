// The training toolkit every trainer builds on (policy/training/training.h,
// optimizer_config.h): parameter groups, the one place AdamW options are built, the schedule from
// the optimizer section, the per-trainer defaults, the old field names refused.
#include "policy/training/training.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>

#include "common/error.h"
#include "common/text_config.h"
#include "policy/model/lora.h"
#include "policy/training/optimizer_config.h"
#include "proto/optimizer.pb.h"
#include "tests/fixtures/tiny_model.h"

namespace rlhf::policy::training {
namespace {

using testing::random_model;
using testing::tiny_config;

const torch::optim::AdamWOptions& options_of(torch::optim::OptimizerParamGroup& g) {
  return static_cast<const torch::optim::AdamWOptions&>(g.options());
}

size_t count_dims(const NamedTensors& params, bool matrices) {
  size_t n = 0;
  for (const auto& [name, p] : params) n += (p.dim() >= 2) == matrices ? 1 : 0;
  return n;
}

// A tiny model's optimizer: decay group (matrices, embeddings) with the config's weight decay,
// no-decay group (norms) without, betas and eps from the config, in that order.
TEST(TrainingToolkitTest, OptimizerGroupsAndOptionsComeFromTheOptimizerSection) {
  Transformer model = random_model(tiny_config(16), 1);
  const NamedTensors params = trainable_parameters(*model);
  ASSERT_EQ(params.size(), model->named_parameters().size());  // nothing frozen

  proto::OptimizerConfig o;
  o.set_weight_decay(0.05);
  o.set_beta1(0.8);
  o.set_beta2(0.9);
  o.set_eps(1e-6);
  resolve_optimizer_config(&o, OptimizerDefaults::kSupervised);
  Optimizer opt(params, o);
  auto& groups = opt.adamw().param_groups();
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[0].params().size(), count_dims(params, true));
  EXPECT_EQ(groups[1].params().size(), count_dims(params, false));
  EXPECT_EQ(options_of(groups[0]).weight_decay(), 0.05);
  EXPECT_EQ(options_of(groups[1]).weight_decay(), 0.0);
  for (auto& g : groups) {
    EXPECT_EQ(std::get<0>(options_of(g).betas()), 0.8);
    EXPECT_EQ(std::get<1>(options_of(g).betas()), 0.9);
    EXPECT_EQ(options_of(g).eps(), 1e-6);
  }
  EXPECT_EQ(opt.parameters().size(), params.size());

  // PPO's defaults: betas (0.9, 0.999), eps 1e-5, no weight decay.
  proto::OptimizerConfig ppo;
  resolve_optimizer_config(&ppo, OptimizerDefaults::kPpo);
  Optimizer p(params, ppo);
  for (auto& g : p.adamw().param_groups()) {
    EXPECT_EQ(std::get<0>(options_of(g).betas()), 0.9);
    EXPECT_EQ(std::get<1>(options_of(g).betas()), 0.999);
    EXPECT_EQ(options_of(g).eps(), 1e-5);
    EXPECT_EQ(options_of(g).weight_decay(), 0.0);
  }
}

// The reward trainer's embedding group: token embeddings at lr * scale, with decay.
TEST(TrainingToolkitTest, EmbeddingGroupStepsAtItsScaledLr) {
  Transformer model = random_model(tiny_config(16), 2);
  const NamedTensors params = trainable_parameters(*model);
  const auto groups = param_groups(params, 0.1, 0.5);
  ASSERT_EQ(groups.size(), 3u);
  EXPECT_EQ(groups[2].params.size(), 1u);  // embed_tokens.weight
  EXPECT_EQ(groups[2].lr_scale, 0.5);
  EXPECT_EQ(groups[2].weight_decay, 0.1);
  EXPECT_EQ(param_groups(params, 0.1).size(), 2u);  // scale 1: no own group

  proto::OptimizerConfig o;
  resolve_optimizer_config(&o, OptimizerDefaults::kSupervised);
  Optimizer opt(params, o, 0.5);
  for (auto& p : opt.parameters()) p.mutable_grad() = torch::ones_like(p);
  opt.step(1e-3);
  auto& g = opt.adamw().param_groups();
  EXPECT_EQ(options_of(g[0]).lr(), 1e-3);
  EXPECT_EQ(options_of(g[2]).lr(), 5e-4);
}

// LoRA: the frozen base contributes nothing; the adapters follow whatever else is trainable.
TEST(TrainingToolkitTest, TrainableParametersWithLora) {
  Transformer model = random_model(tiny_config(16), 3);
  LoraOptions lo;
  lo.rank = 2;
  LoraAdapters lora(model, lo);
  const NamedTensors only_adapters = trainable_parameters(*model, &lora);
  EXPECT_EQ(only_adapters.size(), lora.named_parameters().size());
  EXPECT_EQ(only_adapters[0].first, lora.named_parameters()[0].first);
  NamedTensors state = state_tensors(*model, &lora);
  EXPECT_EQ(state.size(), module_tensors(*model).size() + lora.named_parameters().size());
  EXPECT_EQ(state.back().first, "lora." + lora.named_parameters().back().first);
}

// The clip at grad_clip: the returned norm is the one before clipping; 0 = no clipping.
TEST(TrainingToolkitTest, StepClipsAtGradClip) {
  auto w = torch::zeros({2, 2}, torch::requires_grad());
  proto::OptimizerConfig o;
  resolve_optimizer_config(&o, OptimizerDefaults::kPpo);
  o.set_grad_clip(1.0);
  Optimizer opt({{"w", w}}, o);
  w.mutable_grad() = torch::full({2, 2}, 3.0);
  EXPECT_DOUBLE_EQ(opt.step(0.1), 6.0);
  EXPECT_NEAR(w.grad().norm().item<double>(), 1.0, 1e-6);  // clipped in place
  EXPECT_THROW(Optimizer({}, o), Error);
}

// make_schedule: the config's shape, peak, floor and warm-up (ratio or steps), computed exactly
// as the WarmupCosine / WarmupLinear formulas.
TEST(TrainingToolkitTest, ScheduleFromTheOptimizerSection) {
  proto::OptimizerConfig o;
  resolve_optimizer_config(&o, OptimizerDefaults::kSupervised);  // cosine, warm-up 5%
  o.set_lr(1.0);
  o.set_min_lr_ratio(0.1);  // double: the kPpo schedule below keeps the floor's double
  LrSchedule s = make_schedule(o, 100, OptimizerDefaults::kPpo);
  EXPECT_EQ(s.warmup_steps, 5);
  EXPECT_EQ(s.min_lr, 0.1);
  for (int64_t t : {0, 3, 4, 5, 50, 99, 120})
    EXPECT_EQ(s.at(t), (WarmupCosine{1.0, 0.1, 5, 100}.at(t))) << t;
  o.set_schedule("linear");
  o.set_warmup_steps(2);
  s = make_schedule(o, 10, OptimizerDefaults::kPpo);
  EXPECT_EQ(s.warmup_steps, 2);
  for (int64_t t : {0, 1, 2, 5, 9}) EXPECT_EQ(s.at(t), (WarmupLinear{1.0, 0.1, 2, 10}.at(t))) << t;
  o.set_schedule("constant");
  s = make_schedule(o, 10, OptimizerDefaults::kPpo);
  EXPECT_EQ(s.at(0), 0.5);
  EXPECT_EQ(s.at(9), 1.0);
  o.set_schedule("step");
  EXPECT_THROW(make_schedule(o, 10, OptimizerDefaults::kPpo), Error);
}

// SFT and reward apply their settings at float32 precision, as their float fields did before the
// shared optimizer section (so a config trains the same run as before); PPO's stay double.
TEST(TrainingToolkitTest, SupervisedSettingsAreFloat32AsTheirOldFieldsWere) {
  proto::OptimizerConfig o;
  o.set_lr(2e-3);
  resolve_optimizer_config(&o, OptimizerDefaults::kSupervised);
  EXPECT_EQ(o.lr(), 2e-3);  // the resolved config keeps the values as written
  const proto::OptimizerConfig a = applied_settings(o, OptimizerDefaults::kSupervised);
  EXPECT_EQ(a.lr(), static_cast<double>(2e-3f));
  EXPECT_NE(a.lr(), 2e-3);
  EXPECT_EQ(a.beta1(), static_cast<double>(0.9f));
  EXPECT_EQ(a.beta2(), static_cast<double>(0.95f));
  EXPECT_EQ(a.weight_decay(), static_cast<double>(0.1f));
  EXPECT_EQ(a.grad_clip(), 1.0);
  EXPECT_EQ(a.min_lr_ratio(), static_cast<double>(0.1f));
  EXPECT_EQ(a.warmup_ratio(), static_cast<double>(0.05f));
  EXPECT_EQ(a.eps(), 1e-8);  // always a double
  const LrSchedule s = make_schedule(o, 100, OptimizerDefaults::kSupervised);
  EXPECT_EQ(s.peak_lr, static_cast<double>(2e-3f));
  EXPECT_EQ(s.min_lr, static_cast<double>(2e-3f * 0.1f));  // the float product, as before

  proto::OptimizerConfig p;
  p.set_lr(5e-5);
  resolve_optimizer_config(&p, OptimizerDefaults::kPpo);
  EXPECT_EQ(applied_settings(p, OptimizerDefaults::kPpo).lr(), 5e-5);
  const LrSchedule ps = make_schedule(p, 10, OptimizerDefaults::kPpo);
  EXPECT_EQ(ps.peak_lr, 5e-5);
  EXPECT_EQ(ps.min_lr, 5e-5 * 0.1);
}

// The table of proto/optimizer.proto: fields set in the config win, the trainer's defaults fill
// the rest, then the [default]s.
TEST(TrainingToolkitTest, PerTrainerDefaults) {
  proto::OptimizerConfig sft, ppo;
  sft.set_lr(2e-3);
  resolve_optimizer_config(&sft, OptimizerDefaults::kSupervised);
  resolve_optimizer_config(&ppo, OptimizerDefaults::kPpo);
  EXPECT_EQ(sft.lr(), 2e-3);
  EXPECT_EQ(sft.weight_decay(), 0.1);
  EXPECT_EQ(sft.beta2(), 0.95);
  EXPECT_EQ(sft.eps(), 1e-8);
  EXPECT_EQ(sft.warmup_ratio(), 0.05);
  EXPECT_EQ(ppo.lr(), 1e-5);
  EXPECT_EQ(ppo.weight_decay(), 0.0);
  EXPECT_EQ(ppo.beta2(), 0.999);
  EXPECT_EQ(ppo.eps(), 1e-5);
  EXPECT_EQ(ppo.warmup_ratio(), 0.0);
  for (const auto* o : {&sft, &ppo}) {
    EXPECT_EQ(o->beta1(), 0.9);
    EXPECT_EQ(o->grad_clip(), 1.0);
    EXPECT_EQ(o->schedule(), "cosine");
    EXPECT_EQ(o->min_lr_ratio(), 0.1);
    EXPECT_FALSE(o->has_warmup_steps());
  }
  EXPECT_EQ(resolved_warmup_steps(sft, 60), 3);
  EXPECT_EQ(resolved_warmup_steps(ppo, 60), 0);
}

TEST(TrainingToolkitTest, ValidationNamesTheOptimizerField) {
  proto::OptimizerConfig o;
  const ConfigErrors errors(o, "x.pbtxt");
  validate_optimizer_config(o, errors);  // unset fields are the trainer's to fill
  o.set_lr(0);
  EXPECT_THROW(validate_optimizer_config(o, errors), Error);
  validate_optimizer_config(o, errors, /*lr_may_be_zero=*/true);
  o.set_eps(0);
  try {
    validate_optimizer_config(o, errors, true);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "x.pbtxt: field 'eps': expected > 0, got 0");
  }
}

}  // namespace
// The start check's weights hash: equal tensors hash equal; one changed value, a renamed tensor or
// another dtype of the same bytes hash differently.
TEST(SameStart, WeightsHashSeesValuesNamesAndDtypes) {
  const torch::Tensor a = torch::arange(12, torch::kFloat32).reshape({3, 4});
  const std::string h = weights_hash({{"w", a}});
  EXPECT_EQ(h.size(), 16u);
  EXPECT_EQ(weights_hash({{"w", a.clone()}}), h);
  torch::Tensor b = a.clone();
  b[2][3] = std::nextafter(11.0f, 12.0f);
  EXPECT_NE(weights_hash({{"w", b}}), h);
  EXPECT_NE(weights_hash({{"v", a}}), h);
  EXPECT_NE(weights_hash({{"w", a.view(torch::kInt32)}}), h);
  EXPECT_NE(weights_hash({{"w", a.reshape({4, 3})}}), h);
}

}  // namespace rlhf::policy::training
