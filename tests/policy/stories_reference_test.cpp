// stories260K (a real trained LLaMA in the Hugging Face layout): greedy decoding from [BOS] must
// match an independent float64 reference forward written plainly here (no code shared with
// policy/model/model.cpp: own config parsing, own RoPE, per-head attention loops, full
// recomputation), both through the library's generate() and through `rlhf generate --ids`.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/files.h"
#include "policy/decoding/generation.h"
#include "policy/model/checkpoint.h"
#include "policy/model/safetensors.h"
#include "tests/test_support.h"

namespace rlhf::policy {
namespace {

constexpr int kSteps = 120;

struct Reference {
  int dim, layers, heads, kv_heads, vocab;
  double eps, theta;
  std::map<std::string, torch::Tensor> w;  // float64

  torch::Tensor W(const std::string& name) const { return w.at(name); }

  static torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& g, double eps) {
    return x / torch::sqrt((x * x).mean(-1, true) + eps) * g;
  }

  // RoPE on one head's [T, hd] slice, Hugging Face rotate-half pairing (i, i + hd/2).
  torch::Tensor rope(const torch::Tensor& x) const {
    int64_t T = x.size(0), hd = x.size(1), half = hd / 2;
    auto out = x.clone();
    auto xa = x.accessor<double, 2>();
    auto oa = out.accessor<double, 2>();
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < half; ++i) {
        double angle = double(t) * std::pow(theta, -2.0 * double(i) / double(hd));
        double c = std::cos(angle), s = std::sin(angle);
        double a = xa[t][i], b = xa[t][i + half];
        oa[t][i] = a * c - b * s;
        oa[t][i + half] = b * c + a * s;
      }
    return out;
  }

  // Logits [V] of the next token after `ids`, recomputing everything.
  torch::Tensor next_logits(const std::vector<int64_t>& ids) const {
    const int64_t T = ids.size(), hd = dim / heads, group = heads / kv_heads;
    auto emb = W("model.embed_tokens.weight");
    auto x = emb.index_select(0, torch::tensor(ids, torch::kLong));  // [T, D]
    auto causal = torch::ones({T, T}, torch::kDouble).triu(1) * -1e300;
    for (int l = 0; l < layers; ++l) {
      std::string p = "model.layers." + std::to_string(l) + ".";
      auto h = rms_norm(x, W(p + "input_layernorm.weight"), eps);
      auto q = torch::matmul(h, W(p + "self_attn.q_proj.weight").t());
      auto k = torch::matmul(h, W(p + "self_attn.k_proj.weight").t());
      auto v = torch::matmul(h, W(p + "self_attn.v_proj.weight").t());
      std::vector<torch::Tensor> head_out;
      for (int hh = 0; hh < heads; ++hh) {
        int kvh = hh / group;
        auto qh = rope(q.narrow(1, hh * hd, hd).contiguous());
        auto kh = rope(k.narrow(1, kvh * hd, hd).contiguous());
        auto vh = v.narrow(1, kvh * hd, hd);
        auto scores = torch::matmul(qh, kh.t()) / std::sqrt(double(hd)) + causal;
        head_out.push_back(torch::matmul(torch::softmax(scores, -1), vh));
      }
      x = x + torch::matmul(torch::cat(head_out, 1), W(p + "self_attn.o_proj.weight").t());
      auto h2 = rms_norm(x, W(p + "post_attention_layernorm.weight"), eps);
      auto gate = torch::matmul(h2, W(p + "mlp.gate_proj.weight").t());
      auto up = torch::matmul(h2, W(p + "mlp.up_proj.weight").t());
      auto act = gate / (1 + torch::exp(-gate)) * up;
      x = x + torch::matmul(act, W(p + "mlp.down_proj.weight").t());
    }
    auto last = rms_norm(x[T - 1], W("model.norm.weight"), eps);
    return torch::matmul(emb, last);  // tied embeddings
  }
};

TEST(StoriesReferenceTest, GreedyMatchesFloat64Reference) {
  RLHF_REQUIRE_DATA(dir, "stories260K-hf");
  auto cfg = nlohmann::json::parse(read_file(dir + "/config.json"));
  Reference ref;
  ref.dim = cfg["hidden_size"];
  ref.layers = cfg["num_hidden_layers"];
  ref.heads = cfg["num_attention_heads"];
  ref.kv_heads = cfg["num_key_value_heads"];
  ref.vocab = cfg["vocab_size"];
  ref.eps = cfg["rms_norm_eps"];
  ref.theta = cfg["rope_theta"];
  ASSERT_TRUE(cfg["tie_word_embeddings"].get<bool>());
  for (auto& [name, t] : read_safetensors(dir + "/model.safetensors"))
    ref.w[name] = t.to(torch::kDouble);

  torch::NoGradGuard g;
  std::vector<int64_t> ref_ids = {1};
  double min_margin = 1e9;
  for (int step = 0; step < kSteps; ++step) {
    auto logits = ref.next_logits(ref_ids);
    auto top2 = std::get<0>(logits.topk(2));
    min_margin = std::min(min_margin, (top2[0] - top2[1]).item<double>());
    ref_ids.push_back(logits.argmax().item<int64_t>());
  }
  std::vector<int64_t> want(ref_ids.begin() + 1, ref_ids.end());
  EXPECT_GT(min_margin, 1e-3);  // the README's measured margin is 0.0029

  auto loaded = load_checkpoint(dir);
  EXPECT_TRUE(loaded.from_hf);
  EXPECT_EQ(loaded.model->config().n_kv_heads, 4);
  SamplingOptions o;
  o.temperature = 0;
  o.max_new_tokens = kSteps;
  o.eos_id = -1;
  auto out = generate(loaded.model, {{1}}, o);
  EXPECT_EQ(out.responses[0], want);
  o.use_cache = false;
  EXPECT_EQ(generate(loaded.model, {{1}}, o).responses[0], want);

  // The command line, stopping at EOS (id 2) like any user run.
  std::vector<int64_t> want_cli;
  for (auto id : want) {
    want_cli.push_back(id);
    if (id == 2) break;
  }
  std::string bin = rlhf::testing::rlhf_binary(), text;
  ASSERT_TRUE(std::filesystem::exists(bin)) << bin;
  int rc = rlhf::testing::run_command(bin + " generate --model " + dir +
                                          " --prompt-ids 1 --max-new-tokens " +
                                          std::to_string(kSteps) + " --temperature 0 --ids",
                                      &text, /*merge_stderr=*/false);
  ASSERT_EQ(rc, 0) << text;
  std::vector<int64_t> cli_ids;
  std::istringstream in(text);
  int64_t id;
  while (in >> id) cli_ids.push_back(id);
  EXPECT_EQ(cli_ids, want_cli);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1);
}

}  // namespace
}  // namespace rlhf::policy
