// The llama2.c checkpoint and tokenizer files (policy/model/llama2c_export.h), read back byte by
// byte the way run.c maps them: header, size, and tensors at llama2.c's offsets equal the model's
// weights.
#include "policy/model/llama2c_export.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <string>
#include <vector>

#include "bench/harness/perf_harness.h"
#include "common/error.h"
#include "common/files.h"
#include "tests/fixtures/tiny_model.h"
#include "tests/test_support.h"

namespace {

using rlhf::policy::ModelConfig;
using rlhf::policy::Transformer;

std::vector<int32_t> header_of(const std::string& bytes) {
  std::vector<int32_t> h(7);
  EXPECT_GE(bytes.size(), sizeof(int32_t) * 7);
  std::memcpy(h.data(), bytes.data(), sizeof(int32_t) * 7);
  return h;
}

// `count` floats starting `offset` floats after the header, as a 1-D tensor.
torch::Tensor floats_at(const std::string& bytes, int64_t offset, int64_t count) {
  const size_t start = 7 * sizeof(int32_t) + static_cast<size_t>(offset) * sizeof(float);
  EXPECT_LE(start + count * sizeof(float), bytes.size());
  auto t = torch::empty({count}, torch::kFloat);
  std::memcpy(t.data_ptr<float>(), bytes.data() + start, count * sizeof(float));
  return t;
}

bool same(const torch::Tensor& read_back, const torch::Tensor& weight) {
  return torch::equal(read_back, weight.detach().reshape({-1}));
}

// KVD = 16 != D: wk/wv sizes differ from wq.
ModelConfig tiny_config() { return rlhf::policy::testing::tiny_config(16); }

// Layer l of the model.
rlhf::policy::DecoderLayerImpl& layer(Transformer& m, size_t l) {
  return *m->layers[l]->as<rlhf::policy::DecoderLayer>();
}

TEST(Llama2cExport, TinyModelHeaderSizeAndTensorsAtRunCOffsets) {
  torch::manual_seed(7);
  Transformer model(tiny_config());
  rlhf::policy::init_weights(model);
  {
    torch::NoGradGuard ng;  // distinct norm weights, so their order in the file shows
    layer(model, 1).input_layernorm.copy_(torch::arange(32, torch::kFloat) * 0.5 + 3);
    model->norm_weight.copy_(torch::arange(32, torch::kFloat) - 9);
  }
  const auto bytes = rlhf::policy::llama2c_checkpoint_bytes(model);

  // D=32, KVD=16, H=96 (LLaMA rule: 2/3 * 128 = 85 -> 96), V=64, L=2, seq 16, head_dim 8.
  EXPECT_EQ(header_of(bytes), (std::vector<int32_t>{32, 96, 2, 4, 2, -64, 16}));
  const int64_t per_layer = 32 + 32 * 32 + 2 * 16 * 32 + 32 * 32 + 32 + 3 * 96 * 32;
  const int64_t floats = 64 * 32 + 2 * per_layer + 32 + 16 * 8 + 64 * 32;
  EXPECT_EQ(rlhf::policy::llama2c_float_count(model->config()), floats);
  EXPECT_EQ(bytes.size(), 7 * 4 + 4 * static_cast<size_t>(floats));

  // Offsets as run.c's memory_map_weights computes them (in floats after the header).
  const int64_t V = 64, D = 32, KVD = 16, H = 96, L = 2;
  const int64_t emb = 0, rms_att = emb + V * D, wq = rms_att + L * D, wk = wq + L * D * D,
                wv = wk + L * KVD * D, wo = wv + L * KVD * D, rms_ffn = wo + L * D * D,
                w1 = rms_ffn + L * D, w2 = w1 + L * H * D, w3 = w2 + L * D * H,
                rms_final = w3 + L * H * D, wcls = rms_final + D + 16 * 8;
  EXPECT_TRUE(same(floats_at(bytes, emb + 5 * D, D), model->tok_embeddings->weight[5]));
  EXPECT_TRUE(same(floats_at(bytes, rms_att + D, D), layer(model, 1).input_layernorm));
  EXPECT_TRUE(same(floats_at(bytes, wq + D * D, D * D), layer(model, 1).q_proj->weight));
  EXPECT_TRUE(same(floats_at(bytes, wk + KVD * D, KVD * D), layer(model, 1).k_proj->weight));
  EXPECT_TRUE(same(floats_at(bytes, wv, KVD * D), layer(model, 0).v_proj->weight));
  EXPECT_TRUE(same(floats_at(bytes, wo + D * D, D * D), layer(model, 1).o_proj->weight));
  EXPECT_TRUE(same(floats_at(bytes, rms_ffn, D), layer(model, 0).post_attention_layernorm));
  EXPECT_TRUE(same(floats_at(bytes, w1 + H * D, H * D), layer(model, 1).gate_proj->weight));
  EXPECT_TRUE(same(floats_at(bytes, w2, D * H), layer(model, 0).down_proj->weight));
  EXPECT_TRUE(same(floats_at(bytes, w3 + H * D, H * D), layer(model, 1).up_proj->weight));
  EXPECT_TRUE(same(floats_at(bytes, rms_final, D), model->norm_weight));
  EXPECT_TRUE(same(floats_at(bytes, rms_final + D, 16 * 8), torch::zeros({16 * 8})));
  EXPECT_TRUE(same(floats_at(bytes, wcls, V * D), model->lm_head->weight));
}

TEST(Llama2cExport, TiedEmbeddingsHavePositiveVocabAndNoClassifier) {
  ModelConfig c = tiny_config();
  c.tie_embeddings = true;
  Transformer model(c);
  const auto bytes = rlhf::policy::llama2c_checkpoint_bytes(model);
  EXPECT_EQ(header_of(bytes)[5], 64);
  EXPECT_EQ(bytes.size(), 7 * 4 + 4 * static_cast<size_t>(rlhf::policy::llama2c_float_count(c)));
  EXPECT_EQ(rlhf::policy::llama2c_float_count(c),
            rlhf::policy::llama2c_float_count(tiny_config()) - 64 * 32);
}

// Parses tokenizer.bin as run.c's build_tokenizer does; returns the pieces.
std::vector<std::string> read_tokenizer(const std::string& bytes, int vocab_size,
                                        int32_t* max_len) {
  size_t at = 0;
  auto take = [&](void* out, size_t n) {
    EXPECT_LE(at + n, bytes.size());
    if (at + n > bytes.size()) return false;
    std::memcpy(out, bytes.data() + at, n);
    at += n;
    return true;
  };
  std::vector<std::string> pieces;
  if (!take(max_len, 4)) return pieces;
  for (int i = 0; i < vocab_size; ++i) {
    float score;
    int32_t len;
    if (!take(&score, 4) || !take(&len, 4)) break;
    EXPECT_EQ(score, 0.0f);
    std::string piece(static_cast<size_t>(len), '\0');
    if (!take(piece.data(), piece.size())) break;
    pieces.push_back(piece);
  }
  EXPECT_EQ(at, bytes.size()) << "bytes after the last token";
  return pieces;
}

// `rlhf bench --export-llama2c`'s files: the bench shape, and the weights of the bench seed.
TEST(Llama2cExport, BenchModelFilesMatchTheSeededModel) {
  const rlhf::testing::TempDir tmp("llama2c");
  const std::string& dir = tmp.path();
  rlhf::policy::PerfOptions o;
  o.seed = 3;
  rlhf::policy::export_llama2c(o, dir + "/peer");
  const auto bytes = rlhf::read_file(dir + "/peer/model.bin");
  EXPECT_EQ(header_of(bytes), (std::vector<int32_t>{256, 704, 4, 8, 8, -4096, 264}));
  const int64_t per_layer = 256 + 4 * 256 * 256 + 256 + 3 * 704 * 256;
  const int64_t floats = 2 * 4096 * 256 + 4 * per_layer + 256 + 264 * 32;
  EXPECT_EQ(bytes.size(), 7 * 4 + 4 * static_cast<size_t>(floats));

  torch::manual_seed(3);
  Transformer model(rlhf::policy::perf_model_config(o));
  rlhf::policy::init_weights(model);
  EXPECT_TRUE(same(floats_at(bytes, 0, 256), model->tok_embeddings->weight[0]));
  EXPECT_TRUE(same(floats_at(bytes, floats - 256, 256), model->lm_head->weight[4095]));

  int32_t max_len = 0;
  const auto pieces = read_tokenizer(rlhf::read_file(dir + "/peer/tokenizer.bin"), 4096, &max_len);
  ASSERT_EQ(pieces.size(), 4096u);
  EXPECT_EQ(pieces[1], "<s>");
  EXPECT_EQ(pieces[2], "</s>");
  EXPECT_EQ(pieces[4095], " t4095");
  for (const auto& p : pieces) EXPECT_LE(static_cast<int32_t>(p.size()), max_len) << p;
}

TEST(Llama2cExport, UnwritableFolderIsNamed) {
  const rlhf::testing::TempDir tmp("llama2c");
  const std::string& dir = tmp.path();
  rlhf::write_file_atomic(dir + "/file", "x");
  Transformer model(tiny_config());
  try {
    rlhf::policy::write_llama2c(model, dir + "/file/peer");
    FAIL() << "expected rlhf::Error";
  } catch (const rlhf::Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir + "/file/peer"), std::string::npos) << e.what();
  }
}

}  // namespace
