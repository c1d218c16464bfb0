#include "policy/fast_decode.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "policy/decode_kernels.h"
#include "policy/fused_ops.h"

namespace rlhf::policy {

namespace {

bool is_cpu_float(const torch::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == torch::kFloat;
}

const float* data_of(const torch::Tensor& t) { return t.data_ptr<float>(); }

}  // namespace

bool DecodeEngine::supports(Transformer& model, const KVCache& cache) {
  if (!fused::has_fused_kernel(model->norm_weight)) return false;  // switched off, or not CPU
  if (cache.keys.empty() || cache.length == 0 || !cache.mask_buffer.defined()) return false;
  for (const auto& k : cache.keys)
    if (!is_cpu_float(k) || !k.is_contiguous()) return false;
  for (const auto& v : cache.values)
    if (!is_cpu_float(v) || !v.is_contiguous()) return false;
  for (const auto& p : model->parameters())
    if (!is_cpu_float(p)) return false;
  for (size_t l = 0; l < model->layers->size(); ++l) {  // LoRA replaces weights by non-leaves
    auto layer = model->layers[l]->as<DecoderLayer>();
    for (const auto* lin : {&layer->q_proj, &layer->k_proj, &layer->v_proj, &layer->o_proj,
                            &layer->gate_proj, &layer->up_proj, &layer->down_proj})
      if (!is_cpu_float((*lin)->weight)) return false;
  }
  return true;
}

DecodeEngine::DecodeEngine(Transformer& model, KVCache& cache, LoopPool& pool)
    : model_(model), cache_(cache), pool_(pool) {
  torch::NoGradGuard no_grad;
  const ModelConfig& c = model->config();
  B_ = cache.mask_buffer.size(0);
  D_ = c.dim;
  H_ = c.n_heads;
  KV_ = c.n_kv_heads;
  hd_ = c.head_dim();
  F_ = c.resolved_hidden_dim();
  V_ = c.vocab_size;
  eps_ = c.norm_eps;
  auto hold = [&](const torch::Tensor& t) {
    held_.push_back(t.contiguous());
    return data_of(held_.back());
  };
  // The projections packed for the kernels, all in one block (so a block this large comes back
  // from the CPU allocator's cache on the next engine instead of as fresh pages).
  using Parts = std::vector<torch::Tensor>;
  std::vector<Parts> packed_parts;
  for (size_t l = 0; l < model->layers->size(); ++l) {
    auto layer = model->layers[l]->as<DecoderLayer>();
    packed_parts.push_back({layer->q_proj->weight, layer->k_proj->weight, layer->v_proj->weight});
    packed_parts.push_back({layer->o_proj->weight});
    packed_parts.push_back({layer->gate_proj->weight, layer->up_proj->weight});
    packed_parts.push_back({layer->down_proj->weight});
  }
  packed_parts.push_back({model->lm_head ? model->lm_head->weight : model->tok_embeddings->weight});
  int64_t total = 0;
  for (const auto& parts : packed_parts) {
    int64_t n = 0;
    for (const auto& w : parts) n += w.size(0);
    total += kernels::PackedWeight::floats(n, parts[0].size(1));
  }
  packed_ = torch::empty({total}, torch::kFloat);
  float* storage = packed_.data_ptr<float>();
  auto pack = [&](const Parts& parts) {
    std::vector<const float*> data;
    std::vector<int64_t> rows;
    int64_t n = 0;
    for (const auto& w : parts) {
      data.push_back(hold(w));
      rows.push_back(w.size(0));
      n += w.size(0);
    }
    const int64_t K = parts[0].size(1);
    kernels::PackedWeight packed(data, rows, K, storage, pool_);
    storage += kernels::PackedWeight::floats(n, K);
    return packed;
  };
  size_t next = 0;
  for (size_t l = 0; l < model->layers->size(); ++l) {
    auto layer = model->layers[l]->as<DecoderLayer>();
    LayerWeights w;
    w.input_norm = hold(layer->input_layernorm);
    w.post_norm = hold(layer->post_attention_layernorm);
    w.qkv = pack(packed_parts[next++]);
    w.o = pack(packed_parts[next++]);
    w.gate_up = pack(packed_parts[next++]);
    w.down = pack(packed_parts[next++]);
    layers_.push_back(std::move(w));
  }
  lm_head_ = pack(packed_parts[next++]);
  embedding_ = hold(model->tok_embeddings->weight);
  final_norm_ = hold(model->norm_weight);

  // The rotary tables of hidden_states, for every position a cache of this capacity can hold.
  const int64_t positions = std::max<int64_t>(c.max_seq_len, cache.mask_buffer.size(1));
  torch::Tensor inv_freq;
  for (const auto& b : model->named_buffers())
    if (b.key() == "rope_inv_freq") inv_freq = b.value();
  if (!inv_freq.defined()) throw Error("DecodeEngine: the model has no rope_inv_freq buffer");
  auto angles = torch::arange(positions, torch::kLong).to(torch::kFloat).unsqueeze(-1) * inv_freq;
  cos_ = angles.cos().contiguous();
  sin_ = angles.sin().contiguous();

  x_.resize(B_ * D_);
  xn_.resize(B_ * D_);
  qkv_.resize(B_ * (H_ + 2 * KV_) * hd_);
  ctx_.resize(B_ * H_ * hd_);
  gate_up_.resize(B_ * 2 * F_);
  act_.resize(B_ * F_);
  logits_ = torch::empty({B_, V_}, torch::kFloat);
}

torch::Tensor DecodeEngine::step_through_libtorch(const torch::Tensor& ids) {
  auto hidden = model_->hidden_states(ids.view({B_, 1}), {}, &cache_);
  logits_.copy_(model_->logits_from_hidden(hidden.select(1, 0)));
  return logits_;
}

torch::Tensor DecodeEngine::step(const torch::Tensor& ids) {
  TORCH_CHECK(ids.dim() == 1 && ids.size(0) == B_ && ids.scalar_type() == torch::kLong &&
                  ids.device().is_cpu(),
              "DecodeEngine::step: ids must be [", B_, "] int64 on the CPU, got ", ids.sizes());
  const int64_t capacity = cache_.mask_buffer.size(1);
  auto positions = cache_.next_position.contiguous();
  const int64_t* pos = positions.data_ptr<int64_t>();
  bool in_table = true;
  for (int64_t b = 0; b < B_; ++b) in_table = in_table && pos[b] >= 0 && pos[b] < cos_.size(0);
  if (cache_.length + 1 > capacity || !in_table) return step_through_libtorch(ids);

  auto ids_c = ids.contiguous();
  const int64_t* id = ids_c.data_ptr<int64_t>();
  for (int64_t b = 0; b < B_; ++b) {
    TORCH_CHECK(id[b] >= 0 && id[b] < V_, "DecodeEngine::step: id ", id[b], " out of range");
    std::memcpy(&x_[b * D_], embedding_ + id[b] * D_, D_ * sizeof(float));
    cache_.mask_buffer.data_ptr<int64_t>()[b * capacity + cache_.length] = 1;
  }
  scores_.resize(B_ * H_ * capacity);
  for (int64_t l = 0; l < int64_t(layers_.size()); ++l) {
    attention_block(l, pos);
    mlp_block(l);
  }
  norm_rows(final_norm_);
  kernels::matmul_nt(xn_.data(), B_, D_, D_, {{&lm_head_, logits_.data_ptr<float>(), V_, false}},
                     pool_);

  cache_.length += 1;
  cache_.attention_mask = cache_.mask_buffer.narrow(1, 0, cache_.length);
  cache_.next_position = positions + 1;
  return logits_;
}

// xn = rmsnorm(x) * weight, rows in parallel.
void DecodeEngine::norm_rows(const float* weight) {
  constexpr int64_t kRows = 4;  // per chunk
  pool_.parallel_for((B_ + kRows - 1) / kRows, [&](int64_t chunk) {
    const int64_t b = chunk * kRows, rows = std::min(kRows, B_ - b);
    kernels::rms_norm_rows(&x_[b * D_], weight, &xn_[b * D_], rows, D_, eps_);
  });
}

// x += o(attention(rope(q), rope(k), v)) for the new token of every row; k and v are written into
// the cache at position `length`.
void DecodeEngine::attention_block(int64_t l, const int64_t* pos) {
  const LayerWeights& w = layers_[l];
  const int64_t width = (H_ + 2 * KV_) * hd_, capacity = cache_.mask_buffer.size(1);
  const int64_t L = cache_.length + 1, G = H_ / KV_, half = hd_ / 2;
  norm_rows(w.input_norm);
  float* qkv = qkv_.data();
  kernels::matmul_nt(xn_.data(), B_, D_, D_, {{&w.qkv, qkv, width, false}}, pool_);
  float* keys = cache_.keys[l].data_ptr<float>();
  float* values = cache_.values[l].data_ptr<float>();
  const float q_scale = float(1.0 / std::sqrt(double(hd_)));
  pool_.parallel_for(B_, [&](int64_t b) {
    float* row = qkv + b * width;
    const float *c = data_of(cos_) + pos[b] * half, *s = data_of(sin_) + pos[b] * half;
    kernels::rope_heads(row, c, s, H_, hd_, q_scale);
    kernels::rope_heads(row + H_ * hd_, c, s, KV_, hd_, 1.0f);
    for (int64_t j = 0; j < KV_; ++j) {
      const int64_t at = ((b * KV_ + j) * capacity + cache_.length) * hd_;
      std::memcpy(keys + at, row + (H_ + j) * hd_, hd_ * sizeof(float));
      std::memcpy(values + at, row + (H_ + KV_ + j) * hd_, hd_ * sizeof(float));
    }
  });

  const int64_t* mask = cache_.mask_buffer.data_ptr<int64_t>();
  pool_.parallel_for(B_ * H_, [&](int64_t bh) {
    const int64_t b = bh / H_, h = bh % H_, j = h / G;  // query head h reads kv head h / G
    const int64_t at = (b * KV_ + j) * capacity * hd_;
    kernels::attend(qkv + b * width + h * hd_, keys + at, values + at, mask + b * capacity, L, hd_,
                    &scores_[bh * capacity], &ctx_[(b * H_ + h) * hd_]);
  });
  kernels::matmul_nt(ctx_.data(), B_, H_ * hd_, H_ * hd_, {{&w.o, x_.data(), D_, true}}, pool_);
}

// x += down(silu(gate(rmsnorm(x))) * up(rmsnorm(x))).
void DecodeEngine::mlp_block(int64_t l) {
  const LayerWeights& w = layers_[l];
  norm_rows(w.post_norm);
  kernels::matmul_nt(xn_.data(), B_, D_, D_, {{&w.gate_up, gate_up_.data(), 2 * F_, false}}, pool_);
  pool_.parallel_for(B_, [&](int64_t b) {
    const float* gate_up = &gate_up_[b * 2 * F_];
    kernels::swiglu(gate_up, gate_up + F_, &act_[b * F_], F_);
  });
  kernels::matmul_nt(act_.data(), B_, F_, F_, {{&w.down, x_.data(), D_, true}}, pool_);
}

}  // namespace rlhf::policy
