// LoRA: only adapters train, a fresh adapter is a no-op, merging keeps the output, adapters save
// and load alone, merged models export as plain checkpoints (native and Hugging Face).
#include "policy/model/lora.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "common/files.h"
#include "policy/model/checkpoint.h"
#include "policy/model/model.h"
#include "tests/fixtures/tiny_model.h"
#include "tests/test_support.h"

namespace rlhf::policy {
namespace {

using rlhf::testing::TempDir;

ModelConfig tiny_config() { return rlhf::policy::testing::tiny_config(32); }

Transformer tiny_model(uint64_t seed) {
  torch::manual_seed(seed);
  Transformer m(tiny_config());
  init_weights(m);
  return m;
}

LoraOptions all_targets(int rank = 4) {
  LoraOptions o;
  o.rank = rank;
  o.alpha = 8;
  o.targets = {"q", "k", "v", "o", "gate", "up", "down"};
  return o;
}

// Random B (a fresh adapter has B = 0, which would make the tests vacuous).
void randomize(LoraAdapters& lora) {
  torch::NoGradGuard g;
  for (auto& p : lora.parameters()) p.normal_(0.0, 0.05);
  lora.refresh(false);
}

torch::Tensor sample_ids() {
  torch::manual_seed(123);
  return torch::randint(0, 64, {3, 12}, torch::kInt64);
}

TEST(LoraTest, FreshAdapterIsIdentityAndOnlyAdaptersGetGradients) {
  Transformer model = tiny_model(1);
  const auto ids = sample_ids();
  torch::Tensor before;
  {
    torch::NoGradGuard g;
    before = model->forward(ids).clone();
  }
  LoraAdapters lora(model, all_targets());
  {
    torch::NoGradGuard g;
    EXPECT_EQ((model->forward(ids) - before).abs().max().item<float>(), 0.0f);
  }
  // 2 layers x 7 projections x (A, B).
  EXPECT_EQ(lora.parameters().size(), 28u);
  randomize(lora);
  lora.refresh(true);
  auto logits = model->forward(ids);
  auto loss = torch::nn::functional::cross_entropy(logits.reshape({-1, 64}), ids.reshape({-1}));
  loss.backward();
  for (const auto& p : model->named_parameters()) {
    EXPECT_FALSE(p.value().requires_grad()) << p.key();
    EXPECT_FALSE(p.value().grad().defined()) << p.key();
  }
  for (const auto& [name, p] : lora.named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << name;
    EXPECT_GT(p.grad().abs().sum().item<float>(), 0.0f) << name;
  }
  int64_t expected = 0;  // rank * (in + out) per adapted projection
  for (const auto& p : model->named_parameters())
    if (p.key().find("_proj.weight") != std::string::npos)
      expected += 4 * (p.value().size(0) + p.value().size(1));
  EXPECT_EQ(lora.num_parameters(), expected);
}

TEST(LoraTest, MergedOutputEqualsAdapterOutput) {
  Transformer model = tiny_model(2);
  const auto ids = sample_ids();
  LoraAdapters lora(model, all_targets());
  randomize(lora);
  torch::NoGradGuard g;
  const auto with_adapters = model->forward(ids).clone();
  const auto base_q = model->named_parameters()["layers.0.q_proj.weight"].clone();
  lora.merge();
  const auto merged = model->forward(ids);
  const float d = (merged - with_adapters).abs().max().item<float>();
  EXPECT_LT(d, 1e-5f);
  // The merge changed the base weights (it is not a no-op).
  EXPECT_GT(
      (model->named_parameters()["layers.0.q_proj.weight"] - base_q).abs().max().item<float>(),
      1e-4f);

  // Exports as a plain checkpoint, native and Hugging Face, with the same output.
  TempDir dir("lora");
  save_checkpoint(model, dir / "native", {});
  export_hf(model, dir / "hf");
  for (const std::string sub : {"native", "hf"}) {
    auto loaded = load_checkpoint(dir / sub);
    const float dl = (loaded.model->forward(ids) - with_adapters).abs().max().item<float>();
    EXPECT_LT(dl, 1e-5f) << sub;
  }
}

TEST(LoraTest, AdaptersSaveAloneAndLoad) {
  TempDir dir("lora_io");
  const auto ids = sample_ids();
  torch::Tensor expected;
  {
    Transformer model = tiny_model(3);
    LoraAdapters lora(model, all_targets(2));
    randomize(lora);
    torch::NoGradGuard g;
    expected = model->forward(ids).clone();
    lora.save(dir / "adapter");
  }
  EXPECT_TRUE(file_exists(dir / "adapter/adapter_model.safetensors"));
  EXPECT_TRUE(file_exists(dir / "adapter/adapter_config.json"));
  // Adapters alone: far smaller than the model.
  EXPECT_LT(std::filesystem::file_size(dir / "adapter/adapter_model.safetensors"),
            static_cast<uintmax_t>(tiny_config().num_parameters() * 4 / 2));

  Transformer model = tiny_model(3);
  const LoraOptions opts = LoraAdapters::read_options(dir / "adapter");
  EXPECT_EQ(opts.rank, 2);
  EXPECT_EQ(opts.targets.size(), 7u);
  LoraAdapters lora(model, opts);
  lora.load(dir / "adapter");
  torch::NoGradGuard g;
  EXPECT_LT((model->forward(ids) - expected).abs().max().item<float>(), 1e-6f);

  // Loading into a different rank names the file and tensor.
  Transformer other = tiny_model(3);
  LoraAdapters wrong(other, all_targets(3));
  try {
    wrong.load(dir / "adapter");
    FAIL() << "expected a shape error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("adapter_model.safetensors"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("lora_A"), std::string::npos) << e.what();
  }
}

TEST(LoraTest, AdaptersAloneFitABatch) {
  Transformer model = tiny_model(5);
  LoraAdapters lora(model, all_targets(8));
  const auto ids = sample_ids();
  torch::optim::AdamW opt(lora.parameters(), torch::optim::AdamWOptions(1e-2));
  auto loss_of = [&]() {
    auto logits = model->forward(ids.narrow(1, 0, 11));
    return torch::nn::functional::cross_entropy(logits.reshape({-1, 64}),
                                                ids.narrow(1, 1, 11).reshape({-1}));
  };
  float first = 0, last = 0;
  for (int step = 0; step < 60; ++step) {
    lora.refresh(true);
    opt.zero_grad();
    auto loss = loss_of();
    loss.backward();
    opt.step();
    if (step == 0) first = loss.item<float>();
    last = loss.item<float>();
  }
  std::printf("lora fit: %.3f -> %.3f\n", first, last);
  EXPECT_LT(last, first - 0.5f);
}

TEST(LoraTest, BadOptionsNameTheField) {
  Transformer model = tiny_model(4);
  LoraOptions o;
  o.targets = {"q", "qkv"};
  try {
    LoraAdapters lora(model, o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("qkv"), std::string::npos) << e.what();
  }
  o.targets = {"q"};
  o.rank = 0;
  EXPECT_THROW(LoraAdapters(model, o), Error);
}

}  // namespace
}  // namespace rlhf::policy
