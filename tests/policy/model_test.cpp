// Model, teacher-forced log-probs and generation on small random models.
#include "policy/model/model.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "policy/decoding/generation.h"
#include "policy/model/logprobs.h"
#include "policy/runtime/device.h"
#include "tests/fixtures/tiny_model.h"
#include "tests/test_support.h"

namespace rlhf::policy {
namespace {

// The tiny model (tests/fixtures/tiny_model.h) with 128 positions, SwiGLU size 48 and the given
// kv heads and tying.
ModelConfig small_config(int n_kv_heads = 2, bool tied = false) {
  ModelConfig c = testing::tiny_config(128);
  c.n_kv_heads = n_kv_heads;
  c.hidden_dim = 48;
  c.tie_embeddings = tied;
  return c;
}

using testing::random_model;

TEST(ModelTest, ConfigRulesAndParameterCount) {
  ModelConfig c;
  c.dim = 256;
  EXPECT_EQ(c.resolved_hidden_dim(), 704);  // 2/3 * 1024 = 682 -> multiple of 32
  auto s = small_config();
  Transformer m(s);
  int64_t n = 0;
  for (auto& p : m->parameters()) n += p.numel();
  EXPECT_EQ(n, s.num_parameters());
  auto bad = s;
  bad.n_kv_heads = 3;
  EXPECT_THROW(bad.validate(), std::exception);
}

TEST(ModelTest, PositionsFromMask) {
  auto mask = torch::tensor({0, 0, 1, 1, 1, 1, 1, 1, 1, 1}, torch::kLong).view({2, 5});
  auto pos = positions_from_mask(mask);
  EXPECT_TRUE(
      torch::equal(pos, torch::tensor({0, 0, 0, 1, 2, 0, 1, 2, 3, 4}, torch::kLong).view({2, 5})));
  auto off = positions_from_mask(mask, torch::tensor({3, 5}, torch::kLong));
  EXPECT_EQ(off[0][4].item<int64_t>(), 5);
  EXPECT_EQ(off[1][4].item<int64_t>(), 9);
}

// Causality: changing a later token must not change earlier logits.
TEST(ModelTest, Causal) {
  auto m = random_model(small_config(), 1);
  torch::NoGradGuard g;
  auto ids = torch::randint(3, 64, {1, 10}, torch::kLong);
  auto ids2 = ids.clone();
  ids2[0][7] = (ids[0][7].item<int64_t>() + 1) % 64;
  auto a = m->forward(ids), b = m->forward(ids2);
  EXPECT_TRUE(torch::allclose(a.narrow(1, 0, 7), b.narrow(1, 0, 7), 1e-5, 1e-5));
  EXPECT_FALSE(torch::allclose(a.narrow(1, 7, 3), b.narrow(1, 7, 3), 1e-5, 1e-5));
}

// A left-padded sequence gives the same logits at its real positions as the unpadded one.
TEST(ModelTest, LeftPaddingDoesNotChangeLogits) {
  auto m = random_model(small_config(), 2);
  torch::NoGradGuard g;
  auto ids = torch::randint(3, 64, {1, 6}, torch::kLong);
  auto alone = m->forward(ids);
  auto padded = torch::cat({torch::zeros({1, 3}, torch::kLong), ids}, 1);
  auto mask =
      torch::cat({torch::zeros({1, 3}, torch::kLong), torch::ones({1, 6}, torch::kLong)}, 1);
  auto with_pad = m->forward(padded, mask);
  EXPECT_FALSE(with_pad.isnan().any().item<bool>());
  EXPECT_LT((with_pad.narrow(1, 3, 6) - alone).abs().max().item<double>(), 1e-5);
}

// GQA: a model with 2 kv heads equals a 4-kv-head model whose kv head j is copied into heads
// 2j and 2j+1 (the Hugging Face repeat_kv mapping).
TEST(ModelTest, GroupedQueryAttentionMatchesRepeatedHeads) {
  auto gqa = random_model(small_config(/*n_kv_heads=*/2), 3);
  Transformer mha(small_config(/*n_kv_heads=*/4));
  {
    torch::NoGradGuard g;
    auto src = gqa->hf_named_parameters();
    auto dst = mha->hf_named_parameters();
    ASSERT_EQ(src.size(), dst.size());
    for (size_t i = 0; i < src.size(); ++i) {
      ASSERT_EQ(src[i].first, dst[i].first);
      const auto& name = src[i].first;
      if (name.find("k_proj") != std::string::npos || name.find("v_proj") != std::string::npos) {
        auto w = src[i].second.view({2, 8, 32});  // [kv, hd, D]
        dst[i].second.copy_(w.repeat_interleave(2, 0).reshape({32, 32}));
      } else {
        dst[i].second.copy_(src[i].second);
      }
    }
  }
  torch::NoGradGuard g;
  auto ids = torch::randint(0, 64, {2, 9}, torch::kLong);
  EXPECT_LT((gqa->forward(ids) - mha->forward(ids)).abs().max().item<double>(), 1e-4);
}

TEST(ModelTest, TiedEmbeddingsShareTheMatrix) {
  auto m = random_model(small_config(2, /*tied=*/true), 4);
  EXPECT_FALSE(m->lm_head);
  for (auto& [name, t] : m->hf_named_parameters()) EXPECT_NE(name, "lm_head.weight");
  torch::NoGradGuard g;
  auto ids = torch::randint(0, 64, {1, 5}, torch::kLong);
  auto h = m->hidden_states(ids);
  auto expected = torch::matmul(h, m->tok_embeddings->weight.t());
  EXPECT_LT((m->forward(ids) - expected).abs().max().item<double>(), 1e-5);
}

TEST(ModelTest, ValueHead) {
  auto c = small_config();
  auto m = random_model(c, 5);
  EXPECT_FALSE(m->value_head);
  m->add_value_head();
  EXPECT_TRUE(m->config().value_head);
  auto ids = torch::randint(0, 64, {2, 7}, torch::kLong);
  LogprobOptions o;
  o.values = true;
  auto r = token_logprobs(m, ids, torch::ones({2, 7}, torch::kLong), o);
  EXPECT_EQ(r.values.sizes(), (std::vector<int64_t>{2, 6}));
}

// Chunked log-probs and entropy equal a direct log_softmax over the full logits.
TEST(LogprobsTest, ChunkedMatchesDirect) {
  auto m = random_model(small_config(), 6);
  torch::NoGradGuard g;
  auto ids = torch::randint(0, 64, {3, 11}, torch::kLong);
  auto mask = torch::ones({3, 11}, torch::kLong);
  mask[1].narrow(0, 0, 4).zero_();
  LogprobOptions o;
  o.entropy = true;
  o.temperature = 0.7f;
  o.chunk = 3;
  auto r = token_logprobs(m, ids, mask, o);
  auto logp = torch::log_softmax(m->forward(ids, mask) / 0.7, -1).narrow(1, 0, 10);
  auto want = logp.gather(-1, ids.narrow(1, 1, 10).unsqueeze(-1)).squeeze(-1);
  auto want_ent = -(logp.exp() * logp).sum(-1);
  EXPECT_LT((r.logprobs - want).abs().max().item<double>(), 1e-5);
  EXPECT_LT((r.entropy - want_ent).abs().max().item<double>(), 1e-5);
}

TEST(LogprobsTest, GradientsFlow) {
  auto m = random_model(small_config(), 7);
  auto ids = torch::randint(0, 64, {2, 8}, torch::kLong);
  auto r = token_logprobs(m, ids, torch::ones({2, 8}, torch::kLong));
  r.logprobs.sum().backward();
  EXPECT_GT(m->layers[0]->as<DecoderLayer>()->q_proj->weight.grad().abs().sum().item<double>(), 0);
}

// The recomputing backward of the chunked path gives the gradients of a direct full-logits loss.
TEST(LogprobsTest, ChunkedGradientsMatchDirect) {
  for (bool tied : {false, true}) {
    auto m = random_model(small_config(2, tied), 8);
    auto ids = torch::randint(0, 64, {2, 9}, torch::kLong);
    auto mask = torch::ones({2, 9}, torch::kLong);
    mask[0][0] = 0;
    auto w_lp = torch::randn({2, 8}), w_ent = torch::randn({2, 8});
    auto grads = [&](bool chunked) {
      m->zero_grad();
      torch::Tensor lp, ent;
      if (chunked) {
        LogprobOptions o;
        o.entropy = true;
        o.temperature = 0.9f;
        o.chunk = 3;
        auto r = token_logprobs(m, ids, mask, o);
        lp = r.logprobs, ent = r.entropy;
      } else {
        auto logp = torch::log_softmax(m->forward(ids, mask) / 0.9, -1).narrow(1, 0, 8);
        lp = logp.gather(-1, ids.narrow(1, 1, 8).unsqueeze(-1)).squeeze(-1);
        ent = -(logp.exp() * logp).sum(-1);
      }
      ((lp * w_lp).sum() + (ent * w_ent).sum()).backward();
      std::vector<torch::Tensor> g;
      for (auto& p : m->parameters()) g.push_back(p.grad().clone());
      return g;
    };
    auto a = grads(true), b = grads(false);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_TRUE(torch::allclose(a[i], b[i], 1e-4, 1e-5)) << "parameter " << i << " tied " << tied;
  }
}

// Generation tests run on $RLHF_TEST_DEVICE (tests/test_support.h); generate() moves the prompts
// there and hands its outputs back on the CPU.
Transformer on_test_device(Transformer m) {
  m->to(resolve_device(rlhf::testing::test_device_name(), "RLHF_TEST_DEVICE"));
  return m;
}

SamplingOptions greedy(int n) {
  SamplingOptions o;
  o.temperature = 0;
  o.max_new_tokens = n;
  o.eos_id = -1;
  return o;
}

TEST(GenerationTest, GreedyWithCacheEqualsRecomputation) {
  for (int kv : {4, 2, 1}) {
    auto m = on_test_device(random_model(small_config(kv, kv == 2), 10 + kv));
    std::vector<std::vector<int64_t>> prompts = {{1, 5, 9, 33}, {1, 7}, {1, 40, 41, 42, 43, 44}};
    auto o = greedy(40);
    auto cached = generate(m, prompts, o);
    o.use_cache = false;
    auto fresh = generate(m, prompts, o);
    EXPECT_TRUE(torch::equal(cached.response_ids, fresh.response_ids)) << "n_kv_heads " << kv;
    EXPECT_LT((cached.response_logprobs - fresh.response_logprobs).abs().max().item<double>(),
              1e-4);
    EXPECT_EQ(cached.response_ids.size(1), 40);
    EXPECT_EQ(cached.generated_tokens, 120);
  }
}

// Also covers a cache that has to grow past its preallocated capacity.
TEST(GenerationTest, CacheGrowsWhenFull) {
  auto m = random_model(small_config(), 20);
  torch::NoGradGuard g;
  auto ids = torch::randint(3, 64, {2, 12}, torch::kLong);
  KVCache cache;
  cache.capacity = 4;
  m->hidden_states(ids.narrow(1, 0, 5), {}, &cache);
  torch::Tensor last;
  for (int t = 5; t < 12; ++t) last = m->hidden_states(ids.narrow(1, t, 1), {}, &cache);
  EXPECT_EQ(cache.length, 12);
  auto full = m->hidden_states(ids).narrow(1, 11, 1);
  EXPECT_LT((last - full).abs().max().item<double>(), 1e-5);
}

TEST(GenerationTest, BatchOfDifferentLengthsEqualsEachAlone) {
  auto m = on_test_device(random_model(small_config(2), 21));
  // 10 prompts x 2 kv heads also takes the decoding attention path for many (batch, head) pairs.
  std::vector<std::vector<int64_t>> prompts = {{1, 3}, {1, 8, 9, 10, 11, 12, 13}, {1, 20, 21, 22}};
  for (int i = 0; i < 7; ++i) prompts.push_back(std::vector<int64_t>(1 + i % 4, 30 + i));
  auto o = greedy(30);
  {
    auto cached = generate(m, prompts, o);
    auto no_cache = o;
    no_cache.use_cache = false;
    EXPECT_TRUE(torch::equal(cached.response_ids, generate(m, prompts, no_cache).response_ids));
  }
  auto batch = generate(m, prompts, o);
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto alone = generate(m, {prompts[i]}, o);
    EXPECT_EQ(batch.responses[i], alone.responses[0]) << "prompt " << i;
    EXPECT_LT((batch.response_logprobs[i] - alone.response_logprobs[0]).abs().max().item<double>(),
              1e-4);
  }
}

// Log-probs returned by sampling equal a teacher-forced pass over prompt + response.
TEST(GenerationTest, LogprobsMatchTeacherForcing) {
  auto m = random_model(small_config(2), 22);
  std::vector<std::vector<int64_t>> prompts = {{1, 3, 4}, {1, 8, 9, 10, 11}, {1}};
  SamplingOptions o;
  o.max_new_tokens = 25;
  o.temperature = 0.8f;
  o.top_k = 20;
  o.top_p = 0.9f;
  o.seed = 7;
  o.eos_id = 2;
  auto out = generate(m, prompts, o);
  auto ids = torch::cat({out.prompt_ids, out.response_ids}, 1);
  auto mask = torch::cat({out.prompt_mask, out.response_mask}, 1);
  LogprobOptions lo;
  lo.temperature = 0.8f;
  lo.chunk = 7;
  torch::NoGradGuard g;
  auto tf = token_logprobs(m, ids, mask, lo).logprobs;
  int64_t P = out.prompt_ids.size(1), N = out.response_ids.size(1);
  auto tf_resp = tf.narrow(1, P - 1, N) * out.response_mask;
  EXPECT_LT((tf_resp - out.response_logprobs).abs().max().item<double>(), 1e-4);
  EXPECT_GT(out.generated_tokens, 0);
}

TEST(GenerationTest, SeededSamplingIsReproducible) {
  auto m = on_test_device(random_model(small_config(), 23));
  SamplingOptions o;
  o.max_new_tokens = 20;
  o.eos_id = -1;
  o.seed = 42;
  auto a = generate(m, {{1, 2, 3}, {1}}, o);
  auto b = generate(m, {{1, 2, 3}, {1}}, o);
  EXPECT_TRUE(torch::equal(a.response_ids, b.response_ids));
  o.seed = 43;
  auto c = generate(m, {{1, 2, 3}, {1}}, o);
  EXPECT_FALSE(torch::equal(a.response_ids, c.response_ids));
  // top-k 1 and a tiny top-p are greedy.
  auto g = generate(m, {{1, 2, 3}, {1}}, greedy(20));
  o.top_k = 1;
  EXPECT_TRUE(torch::equal(generate(m, {{1, 2, 3}, {1}}, o).response_ids, g.response_ids));
  o.top_k = 0;
  o.top_p = 1e-6f;
  EXPECT_TRUE(torch::equal(generate(m, {{1, 2, 3}, {1}}, o).response_ids, g.response_ids));
}

TEST(GenerationTest, StopsAtEosPerSequence) {
  auto m = on_test_device(random_model(small_config(), 24));
  std::vector<std::vector<int64_t>> prompts = {{1, 5}, {1, 6, 7}};
  auto free_run = generate(m, prompts, greedy(20));
  // Make the 4th token of sequence 0 the EOS; sequence 1 is unaffected unless it emits it too.
  auto o = greedy(20);
  o.eos_id = int(free_run.responses[0][3]);
  auto out = generate(m, prompts, o);
  size_t first = 0;
  while (free_run.responses[0][first] != o.eos_id) ++first;
  std::vector<int64_t> want(free_run.responses[0].begin(),
                            free_run.responses[0].begin() + first + 1);
  EXPECT_EQ(out.responses[0], want);
  EXPECT_EQ(out.response_mask[0].sum().item<int64_t>(), int64_t(want.size()));
  for (int64_t t = want.size(); t < out.response_ids.size(1); ++t) {
    EXPECT_EQ(out.response_ids[0][t].item<int64_t>(), 0);
    EXPECT_EQ(out.response_logprobs[0][t].item<float>(), 0.f);
  }
  // Once every sequence has its EOS the loop stops: sequence 0 alone ends at its EOS.
  auto alone = generate(m, {prompts[0]}, o);
  EXPECT_EQ(alone.response_ids.size(1), int64_t(want.size()));
  EXPECT_EQ(alone.responses[0], want);
  EXPECT_EQ(alone.generated_tokens, int64_t(want.size()));
}

TEST(GenerationTest, RejectsBadInput) {
  auto m = random_model(small_config(), 25);
  EXPECT_THROW(generate(m, {{1, 999}}, greedy(3)), std::exception);
  EXPECT_THROW(generate(m, {{}}, greedy(3)), std::exception);
  EXPECT_THROW(generate(m, {{1}}, greedy(1000)), std::exception);
}

}  // namespace
}  // namespace rlhf::policy
