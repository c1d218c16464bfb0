// Memory plans (policy/runtime/memory_plan.h) against byte counts worked out by hand for a
// Qwen2.5-0.5B-shaped model, whose parameter count (494,032,768) Hugging Face publishes.
#include "policy/runtime/memory_plan.h"

#include <gtest/gtest.h>

#include <string>

#include "common/error.h"

using namespace rlhf;

namespace {

policy::ModelShape qwen05b() {
  policy::ModelShape s;
  s.vocab = 151936;
  s.dim = 896;
  s.layers = 24;
  s.heads = 14;
  s.kv_heads = 2;
  s.head_dim = 64;
  s.hidden = 4864;
  s.tied = true;
  s.qkv_bias = true;
  return s;
}

}  // namespace

TEST(MemoryPlan, ParameterCountsByHand) {
  const auto s = qwen05b();
  // Per layer: q 896*896 = 802816, k and v 896*128 = 114688 each, o 802816,
  // gate/up/down 3 * 896*4864 = 13074432; sum 14909440, times 24 layers.
  EXPECT_EQ(s.matrix_params(), 357826560);
  // Embeddings 151936*896 = 136134656; per layer two norms (1792) and q/k/v biases
  // (896 + 128 + 128 = 1152), times 24 = 70656; final norm 896. Tied: no lm_head.
  EXPECT_EQ(s.other_params(), 136206208);
  EXPECT_EQ(s.matrix_params() + s.other_params(), 494032768);  // Qwen2.5-0.5B's published count
  // q/k/v 896*(896+256) = 1032192 and gate/up 2*4358144 = 8716288 per layer, times 24.
  EXPECT_EQ(s.fused_params(), 24 * (1032192 + 8716288));
  // LoRA rank 16 on q (16*(896+896) = 28672) and v (16*(896+128) = 16384), times 24.
  EXPECT_EQ(s.lora_params(16, {"q", "v"}), 1081344);
  auto untied = s;
  untied.tied = false;
  untied.value_head = true;
  EXPECT_EQ(untied.other_params(), 136206208 + 136134656 + 897);
  EXPECT_THROW(s.lora_params(16, {"x"}), Error);
}

TEST(MemoryPlan, CacheAndActivationBytesByHand) {
  const auto s = qwen05b();
  // 2 (k, v) * 24 layers * batch 8 * 2 kv heads * 64 * 80 positions * 2 bytes.
  EXPECT_EQ(policy::kv_cache_bytes(s, 8, 80, true), 7864320);
  EXPECT_EQ(policy::kv_cache_bytes(s, 8, 80, false), 2 * 7864320);
  // 640 tokens * (24 layers * ((4*896 + 2*4864) elements * 4 bytes + 4 * 14 heads * 80) +
  // 6 * 151936); under bf16 the saved elements take 2 bytes; a scalar head has no vocab term.
  EXPECT_EQ(policy::activation_bytes(s, 8, 80), 640 * (24 * (13312 * 4 + 4480) + 911616));
  EXPECT_EQ(policy::activation_bytes(s, 8, 80, true, true),
            640 * (24 * (13312 * 2 + 4480) + 911616));
  EXPECT_EQ(policy::activation_bytes(s, 8, 80, false, true), 640 * (24 * (13312 * 2 + 4480)));
}

TEST(MemoryPlan, RowsTotalsTableAndRefusal) {
  policy::MemoryPlan plan;
  plan.stage = "ppo";
  plan.device = "cpu";
  plan.dtype = "bf16";
  const auto s = qwen05b();
  policy::add_model(plan, {"policy", s, 2, false, s.lora_params(16, {"q", "v"})});
  policy::add_model(plan, {"reference", s, 2, true, 0});
  // Weights: 357826560 * 2 + 136206208 * 4; fused cache 233963520 * 2; LoRA grads 1081344 * 4
  // and AdamW 1081344 * 8.
  const int64_t want = 357826560LL * 2 + 136206208LL * 4 + 233963520LL * 2 + 1081344LL * 12;
  EXPECT_EQ(plan.total(), want);
  ASSERT_EQ(plan.rows.size(), 5u);
  EXPECT_EQ(plan.rows[4].component, "reference");
  EXPECT_EQ(plan.rows[4].bytes, 0);
  const std::string table = plan.table();
  EXPECT_NE(table.find("memory plan: ppo on cpu, dtype bf16"), std::string::npos) << table;
  EXPECT_NE(table.find("fused cache"), std::string::npos) << table;
  EXPECT_NO_THROW(policy::check_plan_fits(plan, want));
  EXPECT_NO_THROW(policy::check_plan_fits(plan, -1));  // unknown: never refused
  try {
    policy::check_plan_fits(plan, want - 1);
    FAIL() << "a plan over the available memory must be refused";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("ppo: the memory plan needs"), std::string::npos) << what;
    EXPECT_NE(what.find("optimizer"), std::string::npos) << what;  // the table comes with it
  }
  EXPECT_GT(policy::available_memory("cpu"), 0);  // /proc/meminfo MemAvailable
}

// A LoRA base under bf16 keeps its embedding table in bfloat16 too, and an untied lm_head is
// stored with the matrices (store_matrices_as narrows it): both counted at their stored width.
TEST(MemoryPlan, Bf16EmbeddingsAndUntiedLmHeadCountAtTheirStoredWidth) {
  policy::MemoryPlan plan;
  const auto s = qwen05b();
  const int64_t emb = 151936LL * 896, rest = 136206208LL - emb;
  EXPECT_EQ(s.embedding_params(), emb);
  EXPECT_EQ(s.lm_head_params(), 0);
  policy::add_model(plan, {"policy", s, 2, false, 0, 2});
  EXPECT_EQ(plan.rows[0].bytes, 357826560LL * 2 + emb * 2 + rest * 4);
  EXPECT_NE(plan.rows[0].note.find("embedding bf16"), std::string::npos) << plan.rows[0].note;
  auto untied = s;
  untied.tied = false;
  untied.value_head = true;
  EXPECT_EQ(untied.lm_head_params(), emb);
  policy::add_model(plan, {"reference", untied, 2, false, 0});  // matrices bf16, embeddings fp32
  EXPECT_EQ(plan.rows[2].bytes, (357826560LL + emb) * 2 + emb * 4 + (rest + 897) * 4);
}
