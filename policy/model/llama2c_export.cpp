#include "policy/model/llama2c_export.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/error.h"
#include "common/files.h"

namespace rlhf::policy {
namespace {

template <typename T>
void append_raw(std::string* out, const T& value) {
  out->append(reinterpret_cast<const char*>(&value), sizeof(T));
}

// Appends a tensor's values as native float32, row-major.
void append_tensor(std::string* out, const torch::Tensor& t) {
  const auto cpu = t.detach().to(torch::kCPU, torch::kFloat).contiguous();
  out->append(reinterpret_cast<const char*>(cpu.data_ptr<float>()),
              static_cast<size_t>(cpu.numel()) * sizeof(float));
}

// Appends one per-layer tensor (picked by `get`) for every layer in order: the [L, ...] blocks.
template <typename Get>
void append_per_layer(std::string* out, Transformer& model, Get get) {
  for (size_t l = 0; l < model->layers->size(); ++l)
    append_tensor(out, get(*model->layers[l]->as<DecoderLayer>()));
}

}  // namespace

int64_t llama2c_float_count(const ModelConfig& c) {
  const int64_t d = c.dim, hd = c.head_dim(), kvd = int64_t(c.n_kv_heads) * hd,
                h = c.resolved_hidden_dim(), v = c.vocab_size, L = c.n_layers;
  int64_t n = v * d + L * (d + d * d + 2 * kvd * d + d * d + d + 3 * h * d) + d;
  n += int64_t(c.max_seq_len) * hd;  // freq_cis real + imaginary halves (unused, zeros)
  if (!c.tie_embeddings) n += v * d;
  return n;
}

std::string llama2c_checkpoint_bytes(Transformer& model) {
  torch::NoGradGuard no_grad;
  const ModelConfig& c = model->config();
  if (c.qkv_bias || c.o_bias || c.mlp_bias || c.qk_norm || c.explicit_head_dim > 0 ||
      c.rope_factor > 0 || c.sliding_window > 0)
    throw Error("llama2.c export: model_type '" + c.model_type +
                "' with biases, q/k norms, an explicit head_dim, rope scaling or a sliding window "
                "cannot be written (llama2.c runs plain LLaMA only)");
  std::string out;
  out.reserve(7 * sizeof(int32_t) + static_cast<size_t>(llama2c_float_count(c)) * sizeof(float));
  for (int32_t v : {c.dim, c.resolved_hidden_dim(), c.n_layers, c.n_heads, c.n_kv_heads,
                    c.tie_embeddings ? c.vocab_size : -c.vocab_size, c.max_seq_len})
    append_raw(&out, v);
  append_tensor(&out, model->tok_embeddings->weight);
  append_per_layer(&out, model, [](DecoderLayerImpl& l) { return l.input_layernorm; });
  append_per_layer(&out, model, [](DecoderLayerImpl& l) { return l.q_proj->weight; });
  append_per_layer(&out, model, [](DecoderLayerImpl& l) { return l.k_proj->weight; });
  append_per_layer(&out, model, [](DecoderLayerImpl& l) { return l.v_proj->weight; });
  append_per_layer(&out, model, [](DecoderLayerImpl& l) { return l.o_proj->weight; });
  append_per_layer(&out, model, [](DecoderLayerImpl& l) { return l.post_attention_layernorm; });
  append_per_layer(&out, model, [](DecoderLayerImpl& l) { return l.gate_proj->weight; });
  append_per_layer(&out, model, [](DecoderLayerImpl& l) { return l.down_proj->weight; });
  append_per_layer(&out, model, [](DecoderLayerImpl& l) { return l.up_proj->weight; });
  append_tensor(&out, model->norm_weight);
  out.append(static_cast<size_t>(c.max_seq_len) * c.head_dim() * sizeof(float), '\0');
  if (!c.tie_embeddings) append_tensor(&out, model->lm_head->weight);
  return out;
}

std::string llama2c_tokenizer_bytes(int vocab_size) {
  if (vocab_size < 3)
    throw Error("llama2.c tokenizer: vocab_size = " + std::to_string(vocab_size) +
                ": expected >= 3 (<unk>, <s>, </s>)");
  std::vector<std::string> pieces = {"<unk>", "<s>", "</s>"};
  for (int i = 3; i < vocab_size; ++i) pieces.push_back(" t" + std::to_string(i));
  int32_t max_len = 0;
  for (const auto& p : pieces) max_len = std::max(max_len, static_cast<int32_t>(p.size()));
  std::string out;
  append_raw(&out, max_len);
  for (const auto& p : pieces) {
    append_raw(&out, 0.0f);
    append_raw(&out, static_cast<int32_t>(p.size()));
    out += p;
  }
  return out;
}

void write_llama2c(Transformer& model, const std::string& dir) {
  make_dirs(dir);
  write_file_atomic(dir + "/model.bin", llama2c_checkpoint_bytes(model));
  write_file_atomic(dir + "/tokenizer.bin", llama2c_tokenizer_bytes(model->config().vocab_size));
}

}  // namespace rlhf::policy
