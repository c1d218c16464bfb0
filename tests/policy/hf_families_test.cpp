// The Hugging Face model families (docs/model_families.md) against an independent
// reference: tests/policy/hf_reference.py, a PyTorch forward pass written from transformers'
// modelling code, makes a small random-weight checkpoint of each family (config.json +
// model.safetensors) with its float32 logits and greedy ids. Each is loaded here and checked
// through the training forward (and a backward pass), the KV-cache decoder, the fast CPU decode
// engine and generate(). Needs a python3 with torch (Debian's python3-torch, scripts/bootstrap.sh):
// skipped without one, failed under RLHF_REQUIRE_SHARED_DATA=1.
//
// Also the config.json refusals: an unknown model_type, rope_scaling type or config key, a key of
// the wrong type, each named with the file.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/files.h"
#include "policy/decoding/fast_decode.h"
#include "policy/decoding/generation.h"
#include "policy/model/checkpoint.h"
#include "policy/model/fused_ops.h"
#include "policy/model/llama2c_export.h"
#include "policy/model/lora.h"
#include "policy/model/model.h"
#include "tests/fixtures/child_process.h"
#include "tests/test_support.h"

namespace rlhf::policy {
namespace {

using rlhf::testing::TempDir;

// fp32 logits must agree within this fraction of the reference's largest logit.
constexpr double kRelativeTolerance = 1e-4;

std::string python_with_torch() {
  for (const char* candidate : {"/usr/bin/python3", "python3"})
    if (rlhf::testing::run_command(std::string(candidate) + " -c 'import torch'", nullptr) == 0)
      return candidate;
  return "";
}

struct Reference {
  std::vector<int64_t> ids, greedy;
  int64_t prompt_len = 0;
  torch::Tensor logits;  // [ids, V]
};

Reference read_reference(const std::string& path) {
  auto j = nlohmann::json::parse(read_file(path));
  Reference r;
  r.ids = j["ids"].get<std::vector<int64_t>>();
  r.greedy = j["greedy"].get<std::vector<int64_t>>();
  r.prompt_len = j["prompt_len"].get<int64_t>();
  auto rows = j["logits"].get<std::vector<std::vector<float>>>();
  r.logits = torch::empty({int64_t(rows.size()), int64_t(rows[0].size())});
  for (size_t i = 0; i < rows.size(); ++i)
    r.logits[int64_t(i)] = torch::tensor(rows[i], torch::kFloat);
  return r;
}

torch::Tensor ids_tensor(const std::vector<int64_t>& ids, int64_t from, int64_t n) {
  return torch::tensor(std::vector<int64_t>(ids.begin() + from, ids.begin() + from + n),
                       torch::kLong)
      .view({1, n});
}

// actual [N, V] against the reference rows [first, first + N).
void expect_close(const torch::Tensor& actual, const Reference& ref, int64_t first,
                  const std::string& what) {
  auto expected = ref.logits.narrow(0, first, actual.size(0));
  const double scale = ref.logits.abs().max().item<double>();
  const double diff = (actual.to(torch::kFloat) - expected).abs().max().item<double>();
  EXPECT_LE(diff, kRelativeTolerance * scale)
      << what << ": max |logit - reference| = " << diff << " (largest logit " << scale << ")";
}

class HfFamilies : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    python_ = python_with_torch();
    if (python_.empty()) return;
    dir_ = std::make_unique<TempDir>("hf_families");
    status_ = rlhf::testing::run_command(
        python_ + " " RLHF_SOURCE_DIR "/tests/policy/hf_reference.py " + dir_->path(), &output_);
  }
  static void TearDownTestSuite() { dir_.reset(); }

  void SetUp() override {
    if (python_.empty()) {
      const char* req = std::getenv("RLHF_REQUIRE_SHARED_DATA");
      if (req && std::string(req) == "1")
        FAIL() << "no python3 with torch (RLHF_REQUIRE_SHARED_DATA=1; run scripts/bootstrap.sh)";
      GTEST_SKIP() << "no python3 with torch (python3-torch, scripts/bootstrap.sh)";
    }
    ASSERT_EQ(status_, 0) << "hf_reference.py failed:\n" << output_;
    folder_ = *dir_ / GetParam();
    ref_ = read_reference(folder_ + "/reference.json");
    model_ = load_checkpoint(folder_).model;
  }

  static std::string python_, output_;
  static std::unique_ptr<TempDir> dir_;
  static int status_;
  std::string folder_;
  Reference ref_;
  Transformer model_{nullptr};
};

std::string HfFamilies::python_, HfFamilies::output_;
std::unique_ptr<TempDir> HfFamilies::dir_;
int HfFamilies::status_ = -1;

TEST_P(HfFamilies, TrainingForwardMatchesAndBackwardRuns) {
  const int64_t T = int64_t(ref_.ids.size());
  auto ids = ids_tensor(ref_.ids, 0, T);
  model_->train();
  auto logits = model_->forward(ids);
  expect_close(logits[0].detach(), ref_, 0, "training forward (fused kernels)");
  auto targets = ids.narrow(1, 1, T - 1);
  auto loss =
      -torch::log_softmax(logits.narrow(1, 0, T - 1), -1).gather(-1, targets.unsqueeze(-1)).mean();
  loss.backward();
  std::map<std::string, torch::Tensor> fused_grads;
  for (const auto& p : model_->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key() << " gets no gradient";
    fused_grads[p.key()] = p.value().grad().clone();
    p.value().grad().zero_();
  }
  // The reference composition (what CUDA and bf16 run) agrees too, forward and backward: the
  // biases and q/k norms run inside the fused kernels (norm_rope, the biased GEMMs) with the
  // reference's gradients.
  const bool was = fused::set_fused_kernels(false);
  auto ref_logits = model_->forward(ids);
  expect_close(ref_logits[0].detach(), ref_, 0, "training forward (reference kernels)");
  (-torch::log_softmax(ref_logits.narrow(1, 0, T - 1), -1).gather(-1, targets.unsqueeze(-1)).mean())
      .backward();
  fused::set_fused_kernels(was);
  for (const auto& p : model_->named_parameters()) {
    const auto& g = fused_grads.at(p.key());
    const double scale = std::max(1e-6, p.value().grad().abs().max().item<double>());
    EXPECT_LT((g - p.value().grad()).abs().max().item<double>(), 1e-4 * scale)
        << p.key() << ": fused and reference gradients differ";
  }
}

// LoRA on every projection of a model with biases and q/k norms: at start (B = 0) the logits are
// the base model's, and a step of the adapters' gradient changes them.
TEST_P(HfFamilies, LoraOnEveryProjection) {
  const int64_t T = int64_t(ref_.ids.size());
  auto ids = ids_tensor(ref_.ids, 0, T);
  LoraOptions o;
  o.rank = 4;
  o.targets = {"q", "k", "v", "o", "gate", "up", "down"};
  LoraAdapters lora(model_, o);
  lora.refresh(true);
  auto logits = model_->forward(ids);
  expect_close(logits[0].detach(), ref_, 0, "LoRA at start");
  logits.logsumexp(-1).sum().backward();
  for (const auto& p : lora.parameters()) {
    ASSERT_TRUE(p.grad().defined());
    EXPECT_TRUE(torch::isfinite(p.grad()).all().item<bool>());
  }
}

TEST_P(HfFamilies, KvCacheDecoderMatches) {
  model_->eval();
  torch::NoGradGuard no_grad;
  const int64_t P = ref_.prompt_len;
  KVCache cache;
  auto hidden = model_->hidden_states(ids_tensor(ref_.ids, 0, P), {}, &cache);
  auto logits = model_->logits_from_hidden(hidden.select(1, P - 1));
  for (size_t i = 0; i < ref_.greedy.size(); ++i) {
    expect_close(logits, ref_, P - 1 + int64_t(i), "KV-cache step " + std::to_string(i));
    EXPECT_EQ(logits.argmax(-1).item<int64_t>(), ref_.greedy[i]) << "step " << i;
    if (i + 1 == ref_.greedy.size()) break;
    hidden = model_->hidden_states(ids_tensor(ref_.greedy, int64_t(i), 1), {}, &cache);
    logits = model_->logits_from_hidden(hidden.select(1, 0));
  }
}

TEST_P(HfFamilies, FastDecodeEngineMatches) {
  model_->eval();
  torch::NoGradGuard no_grad;
  const int64_t P = ref_.prompt_len, B = 16;  // enough rows for row groups on 2 threads
  KVCache cache;
  ASSERT_TRUE(DecodeEngine::supports(model_, cache));
  DecodeEngine engine(model_, cache);
  auto logits = engine.feed(ids_tensor(ref_.ids, 0, P).expand({B, P}).contiguous());
  for (size_t i = 0; i < ref_.greedy.size(); ++i) {
    for (int64_t b = 0; b < B; b += B - 1)
      expect_close(logits.narrow(0, b, 1), ref_, P - 1 + int64_t(i),
                   "fast engine step " + std::to_string(i) + " row " + std::to_string(b));
    EXPECT_EQ(logits[0].argmax().item<int64_t>(), ref_.greedy[i]) << "step " << i;
    if (i + 1 == ref_.greedy.size()) break;
    logits = engine.step(torch::full({B}, ref_.greedy[i], torch::kLong));
  }
}

TEST_P(HfFamilies, GenerateGivesTheGreedyIds) {
  std::vector<int64_t> prompt(ref_.ids.begin(), ref_.ids.begin() + ref_.prompt_len);
  SamplingOptions o;
  o.temperature = 0;
  o.max_new_tokens = int(ref_.greedy.size());
  o.eos_id = -1;
  EXPECT_EQ(generate(model_, {prompt}, o).responses[0], ref_.greedy) << "fast engine";
  const bool was = fused::set_fused_kernels(false);  // the libtorch KV-cache path
  EXPECT_EQ(generate(model_, {prompt}, o).responses[0], ref_.greedy) << "libtorch cache";
  fused::set_fused_kernels(was);
}

TEST_P(HfFamilies, NativeCheckpointAndExportRoundTrip) {
  torch::NoGradGuard no_grad;
  auto ids = ids_tensor(ref_.ids, 0, int64_t(ref_.ids.size()));
  auto before = model_->forward(ids);
  TempDir out("hf_families_out");
  save_checkpoint(model_, out / "native", {});
  export_hf(model_, out / "hf");
  for (const char* sub : {"native", "hf"}) {
    auto loaded = load_checkpoint(out / sub).model;
    const ModelConfig &a = model_->config(), &b = loaded->config();
    EXPECT_EQ(b.model_type, a.model_type) << sub;
    EXPECT_EQ(b.head_dim(), a.head_dim()) << sub;
    EXPECT_EQ(b.qkv_bias, a.qkv_bias) << sub;
    EXPECT_EQ(b.o_bias, a.o_bias) << sub;
    EXPECT_EQ(b.mlp_bias, a.mlp_bias) << sub;
    EXPECT_EQ(b.qk_norm, a.qk_norm) << sub;
    EXPECT_EQ(b.rope_factor, a.rope_factor) << sub;
    EXPECT_EQ(b.sliding_window, a.sliding_window) << sub;
    EXPECT_TRUE(torch::equal(loaded->forward(ids), before)) << sub;
  }
}

INSTANTIATE_TEST_SUITE_P(Families, HfFamilies,
                         ::testing::Values("llama", "llama3", "mistral", "qwen2", "qwen3"));

// ---- config.json refusals (no python needed) ----

nlohmann::json base_config(const std::string& model_type) {
  return {{"model_type", model_type},
          {"architectures", {"X"}},
          {"hidden_size", 32},
          {"intermediate_size", 48},
          {"num_hidden_layers", 1},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"vocab_size", 64},
          {"rms_norm_eps", 1e-6},
          {"torch_dtype", "bfloat16"},
          {"transformers_version", "4.51.0"},
          {"use_cache", true},
          {"bos_token_id", 1},
          {"eos_token_id", {2, 3}}};
}

// The error message of parsing `j` as path/config.json ("" when it parses).
std::string refusal(const TempDir& dir, const nlohmann::json& j) {
  write_file_atomic(dir / "config.json", j.dump());
  try {
    model_config_from_hf_json(dir / "config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(HfConfig, RefusesUnknownFamiliesRopeTypesAndKeysByName) {
  TempDir dir("hf_config");
  const std::string file = dir / "config.json";
  struct Case {
    std::string model_type, key;
    nlohmann::json value;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"gemma", "", nullptr, "unsupported model_type 'gemma'"},
      {"llama",
       "rope_scaling",
       {{"rope_type", "yarn"}, {"factor", 4.0}},
       "unsupported rope_scaling type 'yarn'"},
      {"llama",
       "rope_scaling",
       {{"type", "linear"}, {"factor", 2.0}},
       "unsupported rope_scaling type 'linear'"},
      {"llama",
       "rope_scaling",
       {{"rope_type", "llama3"}, {"factor", 8.0}},
       "missing field 'original_max_position_embeddings'"},
      {"llama", "use_qk_layernorm", true, "unsupported config key 'use_qk_layernorm'"},
      {"qwen2", "mlp_bias", true, "unsupported config key 'mlp_bias'"},
      {"mistral", "attention_bias", true, "unsupported config key 'attention_bias'"},
      {"llama", "attention_dropout", 0.1, "unsupported attention_dropout"},
      {"llama", "partial_rotary_factor", 0.5, "unsupported partial_rotary_factor"},
      {"llama", "hidden_act", "gelu", "unsupported hidden_act"},
      {"qwen3", "layer_types", {"full_attention", "chunked"}, "field 'layer_types'"},
      // Wrong types.
      {"llama", "tie_word_embeddings", "yes", "field 'tie_word_embeddings' = \"yes\", expected"},
      {"qwen3", "attention_bias", 1, "field 'attention_bias' = 1, expected true or false"},
      {"llama", "hidden_size", "32", "field 'hidden_size' = \"32\", expected an integer"},
      {"qwen2", "rope_theta", "big", "field 'rope_theta' = \"big\", expected a number"},
      {"qwen3", "head_dim", 8.5, "field 'head_dim' = 8.5, expected an integer"},
      {"mistral", "sliding_window", "4096", "field 'sliding_window'"},
      {"llama", "rope_scaling", "llama3", "field 'rope_scaling' = \"llama3\", expected an object"},
  };
  for (const auto& c : cases) {
    auto j = base_config(c.model_type);
    if (!c.key.empty()) j[c.key] = c.value;
    const std::string msg = refusal(dir, j);
    EXPECT_NE(msg.find(file), std::string::npos) << c.key << ": " << msg;
    EXPECT_NE(msg.find(c.expected), std::string::npos) << c.key << ": " << msg;
  }
}

TEST(HfConfig, ReadsEachFamilysForwardKeys) {
  TempDir dir("hf_config");
  auto llama = base_config("llama");
  llama["attention_bias"] = true;
  llama["mlp_bias"] = true;
  llama["head_dim"] = 16;
  llama["tie_word_embeddings"] = true;
  llama["pretraining_tp"] = 1;
  llama["rope_scaling"] = {{"rope_type", "llama3"},
                           {"factor", 32.0},
                           {"low_freq_factor", 1.0},
                           {"high_freq_factor", 4.0},
                           {"original_max_position_embeddings", 8192}};
  ASSERT_EQ(refusal(dir, llama), "");
  auto c = model_config_from_hf_json(dir / "config.json");
  EXPECT_TRUE(c.qkv_bias && c.o_bias && c.mlp_bias && c.tie_embeddings && !c.qk_norm);
  EXPECT_EQ(c.head_dim(), 16);
  EXPECT_EQ(c.rope_factor, 32.0f);
  EXPECT_EQ(c.rope_original_max_position, 8192);
  EXPECT_EQ(c.eos_id, 2);

  auto qwen2 = base_config("qwen2");
  qwen2["use_sliding_window"] = false;
  qwen2["sliding_window"] = 4;  // ignored: sliding off
  qwen2["max_window_layers"] = 21;
  ASSERT_EQ(refusal(dir, qwen2), "");
  c = model_config_from_hf_json(dir / "config.json");
  EXPECT_TRUE(c.qkv_bias && !c.o_bias && !c.mlp_bias && !c.qk_norm);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_EQ(c.max_seq_len, 2048);

  auto qwen3 = base_config("qwen3");
  qwen3["head_dim"] = 8;  // = hidden / heads: no explicit head_dim kept
  qwen3["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1000000.0}};
  ASSERT_EQ(refusal(dir, qwen3), "");
  c = model_config_from_hf_json(dir / "config.json");
  EXPECT_TRUE(c.qk_norm && !c.qkv_bias && !c.o_bias);
  EXPECT_EQ(c.explicit_head_dim, 0);
  EXPECT_EQ(c.rope_theta, 1000000.0f);
}

TEST(HfConfig, MistralSlidingWindowCapsTheContext) {
  TempDir dir("hf_config");
  auto mistral = base_config("mistral");
  mistral["sliding_window"] = 12;
  mistral["max_position_embeddings"] = 64;
  ASSERT_EQ(refusal(dir, mistral), "");
  auto c = model_config_from_hf_json(dir / "config.json");
  EXPECT_EQ(c.sliding_window, 12);
  EXPECT_EQ(c.max_seq_len, 12);
  Transformer model(c);
  SamplingOptions o;
  o.temperature = 0;
  o.max_new_tokens = 8;
  try {
    generate(model, {{1, 5, 6, 7, 8}}, o);  // 5 + 8 > 12
    ADD_FAILURE() << "a context past the sliding window was not refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sliding window"), std::string::npos) << e.what();
  }
  o.max_new_tokens = 7;
  EXPECT_EQ(generate(model, {{1, 5, 6, 7, 8}}, o).response_ids.size(1), 7);
  torch::NoGradGuard no_grad;
  EXPECT_THROW(model->forward(torch::ones({1, 13}, torch::kLong)), c10::Error);
  KVCache cache;
  cache.capacity = 32;
  model->hidden_states(torch::ones({1, 12}, torch::kLong), {}, &cache);
  EXPECT_THROW(model->hidden_states(torch::ones({1, 1}, torch::kLong), {}, &cache), c10::Error);
}

TEST(HfConfig, Llama2cExportRefusesTheFamiliesExtras) {
  ModelConfig c;
  c.vocab_size = 64;
  c.dim = 32;
  c.n_layers = 1;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.model_type = "qwen3";
  c.qk_norm = true;
  Transformer model(c);
  EXPECT_THROW(llama2c_checkpoint_bytes(model), Error);
  c.model_type = "llama";
  c.qk_norm = false;
  Transformer plain(c);
  EXPECT_EQ(int64_t(llama2c_checkpoint_bytes(plain).size()),
            7 * 4 + llama2c_float_count(c) * int64_t(sizeof(float)));
}

}  // namespace
}  // namespace rlhf::policy
