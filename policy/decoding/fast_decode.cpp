#include "policy/decoding/fast_decode.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <utility>

#include "common/error.h"
#include "policy/kernels/decode_kernels.h"
#include "policy/model/fused_ops.h"

namespace rlhf::policy {

namespace {

bool is_cpu_float(const torch::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == torch::kFloat;
}

const float* data_of(const torch::Tensor& t) { return t.data_ptr<float>(); }

}  // namespace

bool DecodeEngine::supports(Transformer& model, const KVCache& cache) {
  if (!fused::has_fused_kernel(model->norm_weight)) return false;  // switched off, or not CPU
  if (cache.length == 0) {
    if (cache.dtype && *cache.dtype != torch::kFloat) return false;
  } else {
    if (cache.keys.empty() || !cache.mask_buffer.defined()) return false;
    for (const auto& k : cache.keys)
      if (!is_cpu_float(k) || !k.is_contiguous()) return false;
    for (const auto& v : cache.values)
      if (!is_cpu_float(v) || !v.is_contiguous()) return false;
  }
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

namespace {

// RLHF_DECODE_ROW_GROUPS: "off" or "0" turns row groups off, "on", "1" or unset leaves them on;
// anything else is reported on stderr and ignored.
bool initial_row_groups() {
  const char* env = std::getenv("RLHF_DECODE_ROW_GROUPS");
  if (!env || !*env) return true;
  const std::string v = env;
  if (v == "off" || v == "0") return false;
  if (v != "on" && v != "1")
    std::fprintf(stderr, "warning: RLHF_DECODE_ROW_GROUPS='%s' is not one of on, off; using on\n",
                 env);
  return true;
}

std::atomic<bool> g_row_groups{initial_row_groups()};

// The rotary tables cos, sin [positions, hd / 2] as hidden_states computes them.
std::pair<torch::Tensor, torch::Tensor> rope_tables(Transformer& model, int64_t positions) {
  torch::Tensor inv_freq;
  for (const auto& b : model->named_buffers())
    if (b.key() == "rope_inv_freq") inv_freq = b.value();
  if (!inv_freq.defined()) throw Error("DecodeEngine: the model has no rope_inv_freq buffer");
  auto angles = torch::arange(positions, torch::kLong).to(torch::kFloat).unsqueeze(-1) * inv_freq;
  return {angles.cos().contiguous(), angles.sin().contiguous()};
}

}  // namespace

DecodeEngine::DecodeEngine(Transformer& model, KVCache& cache, LoopPool& pool)
    : model_(model), cache_(cache), pool_(pool) {
  torch::NoGradGuard no_grad;
  const ModelConfig& c = model->config();
  D_ = c.dim;
  H_ = c.n_heads;
  KV_ = c.n_kv_heads;
  hd_ = c.head_dim();
  F_ = c.resolved_hidden_dim();
  V_ = c.vocab_size;
  eps_ = c.norm_eps;
  sliding_window_ = c.sliding_window;
  mlp_bias_ = c.mlp_bias;
  pack_weights();
  // Every position a cache of this capacity can hold (later ones go through libtorch).
  std::tie(cos_, sin_) = rope_tables(model, std::max<int64_t>(c.max_seq_len, cache.capacity));
}

const float* DecodeEngine::hold(const torch::Tensor& t) {
  held_.push_back(t.contiguous());
  return data_of(held_.back());
}

// The norms referenced; the projections packed for the kernels, all into one block (so a block this
// large comes back from the CPU allocator's cache on the next engine instead of as fresh pages).
void DecodeEngine::pack_weights() {
  using Layout = kernels::PackedWeight::Layout;
  struct ToPack {
    std::vector<torch::Tensor> parts;
    Layout layout;
  };
  std::vector<ToPack> todo;  // per layer q|k|v, o, gate|up, down; then the output projection
  for (size_t l = 0; l < model_->layers->size(); ++l) {
    auto layer = model_->layers[l]->as<DecoderLayer>();
    todo.push_back(
        {{layer->q_proj->weight, layer->k_proj->weight, layer->v_proj->weight}, Layout::kRows});
    todo.push_back({{layer->o_proj->weight}, Layout::kRows});
    todo.push_back({{layer->gate_proj->weight, layer->up_proj->weight},
                    mlp_bias_ ? Layout::kRows : Layout::kPairs});
    todo.push_back({{layer->down_proj->weight}, Layout::kRows});
  }
  todo.push_back({{model_->lm_head ? model_->lm_head->weight : model_->tok_embeddings->weight},
                  Layout::kRows});
  auto rows_of = [](const ToPack& p) {
    int64_t n = 0;
    for (const auto& w : p.parts) n += w.size(0);
    return n;
  };
  int64_t total = 0;
  for (const auto& p : todo) total += kernels::PackedWeight::floats(rows_of(p), p.parts[0].size(1));
  packed_ = torch::empty({total}, torch::kFloat);
  float* storage = packed_.data_ptr<float>();
  std::vector<kernels::PackedWeight> packed;
  for (const auto& p : todo) {
    std::vector<const float*> data;
    std::vector<int64_t> rows;
    for (const auto& w : p.parts) {
      data.push_back(hold(w));
      rows.push_back(w.size(0));
    }
    const int64_t K = p.parts[0].size(1);
    packed.emplace_back(data, rows, K, storage, pool_, p.layout);
    storage += kernels::PackedWeight::floats(rows_of(p), K);
  }
  for (size_t l = 0; l < model_->layers->size(); ++l) {
    auto layer = model_->layers[l]->as<DecoderLayer>();
    LayerWeights w;
    w.input_norm = hold(layer->input_layernorm);
    w.post_norm = hold(layer->post_attention_layernorm);
    w.qkv = std::move(packed[4 * l]);
    w.o = std::move(packed[4 * l + 1]);
    w.gate_up = std::move(packed[4 * l + 2]);
    w.down = std::move(packed[4 * l + 3]);
    hold_extras(*layer, &w);
    layers_.push_back(std::move(w));
  }
  lm_head_ = std::move(packed.back());
  embedding_ = hold(model_->tok_embeddings->weight);
  final_norm_ = hold(model_->norm_weight);
}

// The biases and q/k norm weights of the other families (left null for a plain LLaMA layer).
void DecodeEngine::hold_extras(DecoderLayerImpl& layer, LayerWeights* w) {
  if (layer.q_proj->bias.defined())
    w->qkv_bias = hold(torch::cat({layer.q_proj->bias, layer.k_proj->bias, layer.v_proj->bias}));
  if (layer.o_proj->bias.defined()) w->o_bias = hold(layer.o_proj->bias);
  if (layer.gate_proj->bias.defined()) {
    w->gate_bias = hold(layer.gate_proj->bias);
    w->up_bias = hold(layer.up_proj->bias);
    w->down_bias = hold(layer.down_proj->bias);
  }
  if (layer.q_norm.defined()) {
    w->q_norm = hold(layer.q_norm);
    w->k_norm = hold(layer.k_norm);
  }
}

void DecodeEngine::reserve_rows(int64_t rows) {
  if (rows <= rows_) return;
  rows_ = rows;
  x_.resize(rows * D_);
  xn_.resize(rows * D_);
  qkv_.resize(rows * (H_ + 2 * KV_) * hd_);
  ctx_.resize(rows * H_ * hd_);
  act_.resize(rows * F_);
  if (mlp_bias_) gate_up_.resize(rows * 2 * F_);
}

torch::Tensor DecodeEngine::feed_through_libtorch(const torch::Tensor& ids,
                                                  const torch::Tensor& mask) {
  auto hidden = model_->hidden_states(ids, mask, &cache_);
  logits_ = model_->logits_from_hidden(hidden.select(1, hidden.size(1) - 1)).contiguous();
  return logits_;
}

torch::Tensor DecodeEngine::step(const torch::Tensor& ids) {
  TORCH_CHECK(ids.dim() == 1, "DecodeEngine::step: ids must be [B], got ", ids.sizes());
  return feed(ids.view({ids.size(0), 1}));
}

// Checks the ids, then fills positions_ as positions_from_mask(mask, next_position) computes them
// (the row's next position plus real tokens so far - 1, at least the next position). Returns the
// next positions after these tokens, or an undefined tensor when a position is past the rotary
// tables. m: the mask, or nullptr for all real.
torch::Tensor DecodeEngine::plan_positions(const int64_t* id, const int64_t* m, int64_t B,
                                           int64_t T) {
  auto next_before = cache_.next_position.contiguous();
  auto next_after = torch::empty({B}, torch::kLong);
  const int64_t* np = next_before.data_ptr<int64_t>();
  positions_.resize(B * T);
  bool in_table = true;
  for (int64_t b = 0; b < B; ++b) {
    int64_t real = 0;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t r = b * T + t;
      TORCH_CHECK(id[r] >= 0 && id[r] < V_, "DecodeEngine::feed: id ", id[r], " at [", b, ", ", t,
                  "] out of range [0, ", V_, ")");
      real += m ? m[r] : 1;
      positions_[r] = np[b] + std::max<int64_t>(real - 1, 0);
      in_table = in_table && positions_[r] >= 0 && positions_[r] < cos_.size(0);
    }
    next_after.data_ptr<int64_t>()[b] = np[b] + real;
  }
  return in_table ? next_after : torch::Tensor();
}

// The tokens' embeddings into x_, their mask into the cache at length .. length + T - 1, and each
// row's first real cache position into first_real_ (the capacity when there is none).
void DecodeEngine::load_tokens(const int64_t* id, const int64_t* m, int64_t B, int64_t T) {
  const int64_t capacity = cache_.mask_buffer.size(1), start = cache_.length;
  int64_t* cache_mask = cache_.mask_buffer.data_ptr<int64_t>();
  first_real_.assign(B, capacity);
  reserve_rows(B * T);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      const int64_t r = b * T + t;
      std::memcpy(&x_[r * D_], embedding_ + id[r] * D_, D_ * sizeof(float));
      cache_mask[b * capacity + start + t] = m ? m[r] : 1;
    }
    for (int64_t l = 0; l < start + T && first_real_[b] == capacity; ++l)
      if (cache_mask[b * capacity + l]) first_real_[b] = l;
  }
}

torch::Tensor DecodeEngine::feed(const torch::Tensor& ids_in, const torch::Tensor& mask_in) {
  TORCH_CHECK(ids_in.dim() == 2 && ids_in.size(1) > 0 && ids_in.scalar_type() == torch::kLong &&
                  ids_in.device().is_cpu(),
              "DecodeEngine::feed: ids must be [B, T] int64 on the CPU, got ", ids_in.sizes());
  const int64_t B = ids_in.size(0), T = ids_in.size(1);
  auto ids = ids_in.contiguous();
  torch::Tensor mask;  // undefined: every token real
  if (mask_in.defined()) {
    mask = mask_in.to(torch::kLong).contiguous();
    TORCH_CHECK(mask.sizes() == ids.sizes(), "DecodeEngine::feed: mask ", mask.sizes(),
                " does not match ids ", ids.sizes());
  }
  if (cache_.length == 0 || !cache_.mask_buffer.defined())
    start_cache(&cache_, model_->config(), B, T, torch::TensorOptions().dtype(torch::kFloat));
  TORCH_CHECK(cache_.mask_buffer.size(0) == B, "DecodeEngine::feed: cache batch ",
              cache_.mask_buffer.size(0), " != ids batch ", B);
  const int64_t capacity = cache_.mask_buffer.size(1), start = cache_.length;
  const int64_t* id = ids.data_ptr<int64_t>();
  const int64_t* m = mask.defined() ? mask.data_ptr<int64_t>() : nullptr;
  TORCH_CHECK(sliding_window_ == 0 || cache_.length + T <= sliding_window_,
              "DecodeEngine::feed: ", cache_.length + T, " tokens exceed the sliding window of ",
              sliding_window_, " (longer contexts are not supported)");
  auto next_after = plan_positions(id, m, B, T);
  if (start + T > capacity || !next_after.defined()) return feed_through_libtorch(ids, mask);
  load_tokens(id, m, B, T);
  scores_.resize(B * H_ * capacity);
  const Batch batch{B, T, positions_.data(), first_real_.data()};
  if (!logits_.defined() || logits_.size(0) != B) logits_ = torch::empty({B, V_}, torch::kFloat);
  const int64_t groups = row_groups(B, T);
  if (groups > 1) {
    // Inside a group every loop of the pool runs on the calling thread (the pool is busy with
    // this one), so a group is one thread's work from the embedding to the logits.
    pool_.parallel_for(groups, [&](int64_t g) {
      const int64_t b0 = g * B / groups, b1 = (g + 1) * B / groups;
      for (int64_t l = 0; l < int64_t(layers_.size()); ++l) {
        attention_block(l, batch, b0, b1);
        mlp_block(l, b0, b1);
      }
      output_rows(b0, b1);
    });
  } else {
    for (int64_t l = 0; l < int64_t(layers_.size()); ++l) {
      attention_block(l, batch, 0, B);
      mlp_block(l, 0, B * T);
    }
    if (T > 1)  // the last token of each row into row b (rows b * T + T - 1 >= b: in order is safe)
      for (int64_t b = 0; b < B; ++b)
        std::memmove(&x_[b * D_], &x_[(b * T + T - 1) * D_], D_ * sizeof(float));
    output_rows(0, B);
  }

  cache_.length += T;
  cache_.attention_mask = cache_.mask_buffer.narrow(1, 0, cache_.length);
  cache_.next_position = next_after;
  return logits_;
}

// How many row groups a feed() of B x T tokens runs in: one per thread for a decoding step (T = 1)
// of at least kMinRowsPerGroup rows per thread, else 1.
//
// Every row of a decoding step goes through the layers independently of the others, so a group
// of rows can run the whole step on one thread, without a hand-off per operation (about 30 per
// step otherwise). The price: each thread streams every weight instead of its share of the
// columns. Measured in one process, alternating (bench model, 2 threads): batch 16 +10%, 24 +13%,
// 32 +8%, 64 +4%; at batch 8 and 12 the column split was as fast or faster (docs/performance.md).
// Prompts (T > 1) keep the column split: the last-token gather of feed() crosses the groups.
int64_t DecodeEngine::row_groups(int64_t B, int64_t T) const {
  const int64_t threads = pool_.threads();
  if (!row_groups_on() || T != 1 || threads == 1 || B < kMinRowsPerGroup * threads) return 1;
  return threads;
}

bool DecodeEngine::set_row_groups(bool on) { return g_row_groups.exchange(on); }

bool DecodeEngine::row_groups_on() { return g_row_groups.load(std::memory_order_relaxed); }

// The logits of rows r0 .. r1 - 1 (one row per batch row by now) from x.
void DecodeEngine::output_rows(int64_t r0, int64_t r1) {
  norm_rows(final_norm_, r0, r1);
  kernels::matmul_nt(&xn_[r0 * D_], r1 - r0, D_, D_,
                     {{&lm_head_, logits_.data_ptr<float>() + r0 * V_, V_, false}}, pool_);
}

// xn = rmsnorm(x) * weight for rows r0 .. r1 - 1, in parallel.
void DecodeEngine::norm_rows(const float* weight, int64_t r0, int64_t r1) {
  constexpr int64_t kRows = 4;  // per chunk
  pool_.parallel_for((r1 - r0 + kRows - 1) / kRows, [&](int64_t chunk) {
    const int64_t r = r0 + chunk * kRows, n = std::min(kRows, r1 - r);
    kernels::rms_norm_rows(&x_[r * D_], weight, &xn_[r * D_], n, D_, eps_);
  });
}

// x += o(attention(rope(q), rope(k), v)) for every fed token of batch rows b0 .. b1 - 1; its k and
// v are written into the cache at position length + t first. Query t of row b sees the cache up to
// length + t.
void DecodeEngine::attention_block(int64_t l, const Batch& batch, int64_t b0, int64_t b1) {
  const LayerWeights& w = layers_[l];
  const int64_t T = batch.T, r0 = b0 * T, rows = (b1 - b0) * T;
  const int64_t width = (H_ + 2 * KV_) * hd_, capacity = cache_.mask_buffer.size(1);
  const int64_t start = cache_.length, G = H_ / KV_, half = hd_ / 2;
  norm_rows(w.input_norm, r0, r0 + rows);
  float* qkv = qkv_.data();
  kernels::matmul_nt(&xn_[r0 * D_], rows, D_, D_, {{&w.qkv, qkv + r0 * width, width, false}},
                     pool_);
  float* keys = cache_.keys[l].data_ptr<float>();
  float* values = cache_.values[l].data_ptr<float>();
  const int64_t* mask = cache_.mask_buffer.data_ptr<int64_t>();
  const float q_scale = float(1.0 / std::sqrt(double(hd_)));
  // One chunk per row and kv head j: for each fed token in order, RoPE on its key (written into
  // the cache with its value) and on the queries of heads j G .. j G + G - 1, which then attend
  // together (attend_group: one sweep over the kv head's cache for the G heads, each head's result
  // the same bits as attend() alone; keys up to their own position are in the cache by then).
  pool_.parallel_for((b1 - b0) * KV_, [&](int64_t chunk) {
    const int64_t bj = b0 * KV_ + chunk, b = bj / KV_, j = bj % KV_;
    const int64_t at = (b * KV_ + j) * capacity * hd_;
    float* scores = &scores_[bj * G * capacity];
    for (int64_t t = 0; t < T; ++t) {
      const int64_t r = b * T + t;
      float* row = qkv + r * width;
      const float *c = data_of(cos_) + batch.positions[r] * half,
                  *s = data_of(sin_) + batch.positions[r] * half;
      float* key = row + (H_ + j) * hd_;
      if (w.qkv_bias || w.q_norm) prepare_head(w, row, j);
      kernels::rope_heads(key, c, s, 1, hd_, 1.0f);
      std::memcpy(keys + at + (start + t) * hd_, key, hd_ * sizeof(float));
      std::memcpy(values + at + (start + t) * hd_, row + (H_ + KV_ + j) * hd_, hd_ * sizeof(float));
      float* query = row + j * G * hd_;
      float* out = &ctx_[(r * H_ + j * G) * hd_];
      if (batch.first_real[b] > start + t) {  // nothing real to attend to yet (see feed())
        std::fill(out, out + G * hd_, 0.0f);
        continue;
      }
      kernels::rope_heads(query, c, s, G, hd_, q_scale);
      kernels::attend_group(query, G, keys + at, values + at, mask + b * capacity, start + t + 1,
                            hd_, scores, out, key, row + (H_ + KV_ + j) * hd_);
    }
  });
  kernels::matmul_nt(&ctx_[r0 * H_ * hd_], rows, H_ * hd_, H_ * hd_,
                     {{&w.o, &x_[r0 * D_], D_, true}}, pool_);
  if (w.o_bias) add_bias_rows(w.o_bias, x_.data(), D_, D_, r0, r0 + rows);
}

// The q, k and v heads of kv group j in one token's qkv row, before RoPE: their biases added (as
// the projection's bias), then q and k RMS-normalised per head (qwen3), as the libtorch path does.
void DecodeEngine::prepare_head(const LayerWeights& w, float* row, int64_t j) const {
  const int64_t G = H_ / KV_;
  auto add = [&](int64_t head) {
    float* v = row + head * hd_;
    const float* b = w.qkv_bias + head * hd_;
    for (int64_t i = 0; i < hd_; ++i) v[i] += b[i];
  };
  if (w.qkv_bias) {
    for (int64_t h = j * G; h < (j + 1) * G; ++h) add(h);
    add(H_ + j);
    add(H_ + KV_ + j);
  }
  if (w.q_norm) {
    for (int64_t h = j * G; h < (j + 1) * G; ++h)
      kernels::rms_norm_rows(row + h * hd_, w.q_norm, row + h * hd_, 1, hd_, eps_);
    float* key = row + (H_ + j) * hd_;
    kernels::rms_norm_rows(key, w.k_norm, key, 1, hd_, eps_);
  }
}

// out[r, :n] += bias for rows r0 .. r1 - 1 (row stride ld).
void DecodeEngine::add_bias_rows(const float* bias, float* out, int64_t ld, int64_t n, int64_t r0,
                                 int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    float* o = out + r * ld;
    for (int64_t i = 0; i < n; ++i) o[i] += bias[i];
  }
}

// x += down(silu(gate(rmsnorm(x))) * up(rmsnorm(x))) for token rows r0 .. r1 - 1; SwiGLU is the
// gate/up loop's epilogue (gate and up packed as pairs), so act is written directly.
void DecodeEngine::mlp_block(int64_t l, int64_t r0, int64_t r1) {
  const LayerWeights& w = layers_[l];
  const int64_t rows = r1 - r0;
  norm_rows(w.post_norm, r0, r1);
  using Epilogue = kernels::MatmulJob::Epilogue;
  if (w.gate_bias) {  // gate | up rows, their biases, then SwiGLU
    float* gu = gate_up_.data();
    kernels::matmul_nt(&xn_[r0 * D_], rows, D_, D_, {{&w.gate_up, gu + r0 * 2 * F_, 2 * F_, false}},
                       pool_);
    for (int64_t r = r0; r < r1; ++r) {
      float *gate = gu + r * 2 * F_, *up = gate + F_;
      for (int64_t i = 0; i < F_; ++i) {
        gate[i] += w.gate_bias[i];
        up[i] += w.up_bias[i];
      }
      kernels::swiglu(gate, up, &act_[r * F_], F_);
    }
  } else {
    kernels::matmul_nt(&xn_[r0 * D_], rows, D_, D_,
                       {{&w.gate_up, &act_[r0 * F_], F_, false, Epilogue::kSwiGlu}}, pool_);
  }
  kernels::matmul_nt(&act_[r0 * F_], rows, F_, F_, {{&w.down, &x_[r0 * D_], D_, true}}, pool_);
  if (w.down_bias) add_bias_rows(w.down_bias, x_.data(), D_, D_, r0, r1);
}

}  // namespace rlhf::policy
