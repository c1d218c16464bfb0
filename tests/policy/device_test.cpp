// Device and precision options (policy/runtime/device.h): the syntax every config and command
// accepts, named errors for bad values and for CUDA on a CPU-only libtorch, the autocast scope, and
// bf16 numerics against float32 (forward, KV-cache decoding, generation) with stated tolerances.
// Runs on $RLHF_TEST_DEVICE (cpu when unset).
#include "policy/runtime/device.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "policy/decoding/generation.h"
#include "policy/ppo/ppo_config.h"
#include "policy/training/sft_config.h"
#include "tests/fixtures/tiny_model.h"
#include "tests/test_support.h"

namespace rlhf::policy {
namespace {

torch::Device test_device() {
  return resolve_device(rlhf::testing::test_device_name(), "RLHF_TEST_DEVICE");
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(DeviceOptions, SyntaxOfDeviceAndDtype) {
  for (const char* ok : {"cpu", "cuda", "cuda:0", "cuda:7", "cuda:12"})
    EXPECT_EQ(device_syntax_error(ok), "") << ok;
  for (const char* bad : {"gpu", "CPU", "cuda:", "cuda:x", "cuda:-1", "cuda0", "", "cuda:0 "})
    EXPECT_EQ(device_syntax_error(bad), "expected \"cpu\", \"cuda\" or \"cuda:N\"") << bad;
  EXPECT_EQ(dtype_syntax_error("fp32"), "");
  EXPECT_EQ(dtype_syntax_error("bf16"), "");
  EXPECT_EQ(dtype_syntax_error("fp16"), "expected \"fp32\" or \"bf16\"");
  EXPECT_EQ(parse_precision("bf16"), Precision::kBf16);
  EXPECT_EQ(parse_precision("fp32"), Precision::kFp32);
  EXPECT_EQ(error_of([] { parse_precision("half", "--dtype"); }),
            "--dtype = \"half\": expected \"fp32\" or \"bf16\"");
  EXPECT_EQ(error_of([] { resolve_device("tpu", "bench --device"); }),
            "bench --device = \"tpu\": expected \"cpu\", \"cuda\" or \"cuda:N\"");
  EXPECT_EQ(resolve_device("cpu"), torch::Device(torch::kCPU));
}

// Configs name the file, line and field of a bad device or dtype.
TEST(DeviceOptions, ConfigErrorsNameLineFieldAndValue) {
  const std::string sft =
      error_of([] { parse_sft_config("steps: 3\ndtype: \"fp16\"\n", "sft.pbtxt"); });
  EXPECT_EQ(sft, "sft.pbtxt:2: field 'dtype': expected \"fp32\" or \"bf16\", got \"fp16\"");
  const std::string ppo =
      error_of([] { parse_ppo_config("iterations: 1\n\ndevice: \"gpu:0\"\n", "ppo.pbtxt"); });
  EXPECT_EQ(ppo,
            "ppo.pbtxt:3: field 'device': expected \"cpu\", \"cuda\" or \"cuda:N\", got \"gpu:0\"");
  EXPECT_EQ(parse_sft_config("device: \"cuda:1\"\ndtype: \"bf16\"\n", "ok.pbtxt").dtype(), "bf16");
  EXPECT_EQ(parse_sft_config("", "defaults.pbtxt").dtype(), "fp32");
}

// On a libtorch built without CUDA (Debian's), asking for a GPU is an error naming the field,
// the value and why; with CUDA, an index past the visible GPUs is one.
TEST(DeviceOptions, CudaWithoutCudaIsANamedError) {
  if (libtorch_has_cuda()) {
    const std::string msg = error_of([] { resolve_device("cuda:4096", "sft config: device"); });
    EXPECT_NE(msg.find("sft config: device = \"cuda:4096\": GPU 4096 does not exist"),
              std::string::npos)
        << msg;
    return;
  }
  for (const char* dev : {"cuda", "cuda:0"}) {
    const std::string msg = error_of([&] { resolve_device(dev, "sft config: device"); });
    EXPECT_EQ(msg.rfind("sft config: device = \"" + std::string(dev) + "\": this libtorch (", 0),
              0u)
        << msg;
    EXPECT_NE(msg.find("was built without CUDA"), std::string::npos) << msg;
  }
}

TEST(DeviceOptions, AutocastScopeIsScopedAndNests) {
  const auto dev = test_device();
  torch::manual_seed(0);
  torch::nn::Linear lin(8, 4);
  lin->to(dev);
  auto x = torch::randn({2, 8}, torch::TensorOptions().device(dev));
  EXPECT_EQ(lin(x).scalar_type(), torch::kFloat);
  {
    AutocastScope off(dev, Precision::kFp32);  // fp32: no-op
    EXPECT_EQ(lin(x).scalar_type(), torch::kFloat);
  }
  {
    AutocastScope on(dev, Precision::kBf16);
    EXPECT_EQ(lin(x).scalar_type(), torch::kBFloat16);
    {
      AutocastScope inner(dev, Precision::kBf16);
      EXPECT_EQ(lin(x).scalar_type(), torch::kBFloat16);
    }
    EXPECT_EQ(lin(x).scalar_type(), torch::kBFloat16);  // the inner scope restored "on"
  }
  EXPECT_EQ(lin(x).scalar_type(), torch::kFloat);
  EXPECT_EQ(lin->weight.scalar_type(), torch::kFloat);  // master weights untouched
}

// The tiny model (tests/fixtures/tiny_model.h) twice as wide (d 64).
ModelConfig small_config() {
  ModelConfig c = testing::tiny_config();
  c.dim = 64;
  return c;
}

// Random weights with O(1) logits (as in model_test), so greedy choices are rarely near-ties.
Transformer small_model(uint64_t seed) {
  torch::manual_seed(seed);
  Transformer m(small_config());
  {
    torch::NoGradGuard g;
    for (auto& p : m->named_parameters()) {
      auto& t = p.value();
      if (t.dim() == 1)
        t.uniform_(0.8, 1.2);
      else if (p.key().find("embed_tokens") != std::string::npos)
        t.normal_(0.0, 1.0);
      else
        t.normal_(0.0, 1.0 / std::sqrt(double(t.size(1))));
    }
  }
  m->to(test_device());
  m->eval();
  return m;
}

// bf16 autocast changes logits by rounding only: bf16 keeps ~3 significant digits (8-bit
// mantissa), so over two layers |bf16 - fp32| stays under 3% of the largest logit.
TEST(DeviceOptions, Bf16ForwardIsCloseToFloat32) {
  auto m = small_model(1);
  torch::NoGradGuard ng;
  auto ids =
      torch::randint(3, 64, {3, 20}, torch::TensorOptions().dtype(torch::kLong)).to(test_device());
  auto ref = m->forward(ids);
  torch::Tensor low;
  {
    AutocastScope autocast(test_device(), Precision::kBf16);
    low = m->forward(ids);
  }
  EXPECT_EQ(low.scalar_type(), torch::kFloat);  // logits come out float32
  const double scale = ref.abs().max().item<double>();
  const double diff = (low - ref).abs().max().item<double>();
  EXPECT_GT(diff, 0.0) << "autocast did not change the arithmetic";
  EXPECT_LT(diff, 0.03 * scale) << "max |diff| " << diff << " scale " << scale;
}

// A bf16 KV cache holds bfloat16 keys/values, and decoding token by token from it matches the
// full bf16 forward pass within bf16 rounding (3% of the largest hidden value).
TEST(DeviceOptions, Bf16KvCacheDecodesLikeTheFullPass) {
  auto m = small_model(2);
  torch::NoGradGuard ng;
  AutocastScope autocast(test_device(), Precision::kBf16);
  auto ids =
      torch::randint(3, 64, {2, 12}, torch::TensorOptions().dtype(torch::kLong)).to(test_device());
  KVCache cache;
  cache.dtype = torch::kBFloat16;
  m->hidden_states(ids.narrow(1, 0, 6), {}, &cache);
  ASSERT_EQ(cache.keys.size(), 2u);
  EXPECT_EQ(cache.keys[0].scalar_type(), torch::kBFloat16);
  EXPECT_EQ(cache.values[1].scalar_type(), torch::kBFloat16);
  torch::Tensor last;
  for (int t = 6; t < 12; ++t) last = m->hidden_states(ids.narrow(1, t, 1), {}, &cache);
  auto full = m->hidden_states(ids).narrow(1, 11, 1);
  const double scale = full.abs().max().item<double>();
  EXPECT_LT((last.to(torch::kFloat) - full.to(torch::kFloat)).abs().max().item<double>(),
            0.03 * scale);
}

// Generation in bf16: float32 log-probs on the CPU, finite, and the greedy continuation mostly
// agrees with float32 (rounding may flip a near-tie, after which a sequence goes its own way; so at
// least half of the tokens, where unrelated sequences would share about 1/64).
TEST(DeviceOptions, Bf16GenerationAgreesWithFloat32) {
  auto m = small_model(3);
  SamplingOptions o;
  o.temperature = 0;
  o.max_new_tokens = 8;
  o.eos_id = -1;
  const std::vector<std::vector<int64_t>> prompts = {{1, 5, 9}, {1, 7}, {1, 40, 41, 42}};
  auto ref = generate(m, prompts, o);
  o.precision = Precision::kBf16;
  auto low = generate(m, prompts, o);
  EXPECT_EQ(low.response_logprobs.scalar_type(), torch::kFloat);
  EXPECT_TRUE(low.response_logprobs.device().is_cpu());
  EXPECT_TRUE(torch::isfinite(low.response_logprobs).all().item<bool>());
  const double same =
      (low.response_ids == ref.response_ids).to(torch::kFloat).mean().item<double>();
  EXPECT_GE(same, 0.5) << "bf16 greedy tokens equal to fp32: " << same;
}

}  // namespace
}  // namespace rlhf::policy
