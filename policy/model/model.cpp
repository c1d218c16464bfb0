#include "policy/model/model.h"

#include <torch/version.h>

#include <cmath>

#include "common/error.h"
#include "policy/model/fused_ops.h"
#include "proto/model.pb.h"

namespace rlhf::policy {

namespace {

// Additive bias for masked attention scores. Finite, so a query row whose keys are all masked
// (a left pad at position 0) gives a uniform softmax instead of NaN.
constexpr float kMaskedScore = -1e30f;

// A Linear initialised as libtorch does (float32, same RNG draws), its weight then stored as
// `dtype` (the float32 initial values are dropped at once: they are overwritten by a load).
torch::nn::Linear make_linear(int64_t in, int64_t out, bool bias = false,
                              torch::ScalarType dtype = torch::kFloat) {
  torch::nn::Linear lin(torch::nn::LinearOptions(in, out).bias(bias));
  if (dtype != torch::kFloat) {
    torch::NoGradGuard no_grad;
    lin->weight.set_data(lin->weight.to(dtype));
  }
  return lin;
}

void check_weight_dtype(torch::ScalarType t, const char* what) {
  if (t != torch::kFloat && t != torch::kBFloat16)
    throw Error(std::string("Transformer: WeightDtypes::") + what +
                " must be float32 or bfloat16, got " + c10::toString(t));
}

void grow_cache(KVCache* cache, int64_t needed) {
  int64_t cap = cache->mask_buffer.size(1);
  int64_t new_cap = std::max<int64_t>(2 * cap, needed);
  auto grow = [&](const torch::Tensor& t, int64_t dim) {
    auto sizes = t.sizes().vec();
    sizes[dim] = new_cap - cap;
    return torch::cat({t, torch::zeros(sizes, t.options())}, dim);
  };
  for (auto& k : cache->keys) k = grow(k, 2);
  for (auto& v : cache->values) v = grow(v, 2);
  cache->mask_buffer = grow(cache->mask_buffer, 1);
  cache->capacity = new_cap;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// ModelConfig

int ModelConfig::resolved_hidden_dim() const {
  if (hidden_dim > 0) return hidden_dim;
  // LLaMA: 2/3 of 4 * dim, rounded up to a multiple of 32.
  int h = static_cast<int>(2 * (4 * dim) / 3);
  return 32 * ((h + 31) / 32);
}

void ModelConfig::validate() const {
  auto bad = [](const std::string& field, int64_t value, const std::string& expected) {
    throw Error("model config: " + field + " = " + std::to_string(value) + ", expected " +
                expected);
  };
  if (vocab_size <= 0) bad("vocab_size", vocab_size, "> 0");
  if (dim <= 0) bad("dim", dim, "> 0");
  if (n_layers <= 0) bad("n_layers", n_layers, "> 0");
  if (n_heads <= 0) bad("n_heads", n_heads, "> 0");
  if (explicit_head_dim < 0) bad("head_dim", explicit_head_dim, ">= 0 (0 = dim / n_heads)");
  if (explicit_head_dim == 0 && dim % n_heads != 0)
    bad("n_heads", n_heads, "a divisor of dim = " + std::to_string(dim));
  if (head_dim() % 2 != 0) bad("head_dim", head_dim(), "an even head size (RoPE)");
  if (model_type != "llama" && model_type != "mistral" && model_type != "qwen2" &&
      model_type != "qwen3")
    throw Error("model config: model_type '" + model_type +
                "', expected one of llama, mistral, qwen2, qwen3");
  if (rope_factor < 0 || (rope_factor > 0 && (!(rope_low_freq_factor > 0) ||
                                              !(rope_high_freq_factor > rope_low_freq_factor) ||
                                              rope_original_max_position <= 0)))
    throw Error("model config: rope scaling factor " + std::to_string(rope_factor) +
                ", low_freq_factor " + std::to_string(rope_low_freq_factor) +
                ", high_freq_factor " + std::to_string(rope_high_freq_factor) +
                ", original_max_position_embeddings " + std::to_string(rope_original_max_position) +
                ": expected factor >= 0 and, when > 0, 0 < low < high and original > 0");
  if (sliding_window < 0) bad("sliding_window", sliding_window, ">= 0 (0 = none)");
  if (n_kv_heads <= 0 || n_heads % n_kv_heads != 0)
    bad("n_kv_heads", n_kv_heads, "a divisor of n_heads = " + std::to_string(n_heads));
  if (hidden_dim < 0) bad("hidden_dim", hidden_dim, ">= 0 (0 = LLaMA rule)");
  if (max_seq_len <= 0) bad("max_seq_len", max_seq_len, "> 0");
  if (!(norm_eps > 0)) throw Error("model config: norm_eps must be > 0");
  if (!(rope_theta > 0)) throw Error("model config: rope_theta must be > 0");
  for (auto [name, id] :
       {std::pair<const char*, int>{"bos_id", bos_id}, {"eos_id", eos_id}, {"pad_id", pad_id}})
    if (id < -1 || id >= vocab_size)
      bad(name, id, "-1 (none) or an id below vocab_size = " + std::to_string(vocab_size));
}

int64_t ModelConfig::num_parameters() const {
  int64_t d = dim, hd = head_dim(), kv = n_kv_heads, h = resolved_hidden_dim(), qd = n_heads * hd;
  int64_t per_layer = d * qd + 2 * d * kv * hd + qd * d + 3 * d * h + 2 * d;
  if (qkv_bias) per_layer += qd + 2 * kv * hd;
  if (o_bias) per_layer += d;
  if (mlp_bias) per_layer += 2 * h + d;
  if (qk_norm) per_layer += 2 * hd;
  int64_t n = int64_t(vocab_size) * d + n_layers * per_layer + d;
  if (!tie_embeddings) n += int64_t(vocab_size) * d;
  return n;
}

void ModelConfig::to_proto(proto::ModelConfig* out) const {
  out->set_schema_version(1);
  out->set_vocab_size(vocab_size);
  out->set_dim(dim);
  out->set_n_layers(n_layers);
  out->set_n_heads(n_heads);
  out->set_n_kv_heads(n_kv_heads);
  out->set_hidden_dim(resolved_hidden_dim());
  out->set_max_seq_len(max_seq_len);
  out->set_norm_eps(norm_eps);
  out->set_rope_theta(rope_theta);
  out->set_tie_embeddings(tie_embeddings);
  out->set_value_head(value_head);
  out->set_bos_id(bos_id);
  out->set_eos_id(eos_id);
  out->set_pad_id(pad_id);
  if (model_type != "llama") out->set_model_type(model_type);
  out->set_head_dim(explicit_head_dim);
  out->set_qkv_bias(qkv_bias);
  out->set_o_bias(o_bias);
  out->set_mlp_bias(mlp_bias);
  out->set_qk_norm(qk_norm);
  if (rope_factor > 0) {
    out->set_rope_factor(rope_factor);
    out->set_rope_low_freq_factor(rope_low_freq_factor);
    out->set_rope_high_freq_factor(rope_high_freq_factor);
    out->set_rope_original_max_position(rope_original_max_position);
  }
  out->set_sliding_window(sliding_window);
}

ModelConfig ModelConfig::from_proto(const proto::ModelConfig& p) {
  if (p.schema_version() != 1)
    throw Error("ModelConfig: schema_version " + std::to_string(p.schema_version()) +
                " not supported (expected 1)");
  ModelConfig c;
  c.vocab_size = p.vocab_size();
  c.dim = p.dim();
  c.n_layers = p.n_layers();
  c.n_heads = p.n_heads();
  c.n_kv_heads = p.n_kv_heads();
  c.hidden_dim = p.hidden_dim();
  c.max_seq_len = p.max_seq_len();
  c.norm_eps = p.norm_eps();
  c.rope_theta = p.rope_theta();
  c.tie_embeddings = p.tie_embeddings();
  c.value_head = p.value_head();
  c.bos_id = p.bos_id();
  c.eos_id = p.eos_id();
  c.pad_id = p.pad_id();
  if (!p.model_type().empty()) c.model_type = p.model_type();
  c.explicit_head_dim = p.head_dim();
  c.qkv_bias = p.qkv_bias();
  c.o_bias = p.o_bias();
  c.mlp_bias = p.mlp_bias();
  c.qk_norm = p.qk_norm();
  if (p.rope_factor() != 0) {
    c.rope_factor = p.rope_factor();
    c.rope_low_freq_factor = p.rope_low_freq_factor();
    c.rope_high_freq_factor = p.rope_high_freq_factor();
    c.rope_original_max_position = p.rope_original_max_position();
  }
  c.sliding_window = p.sliding_window();
  c.validate();
  return c;
}

// ---------------------------------------------------------------------------------------------
// DecoderLayer

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c, torch::ScalarType m)
    : n_heads_(c.n_heads), n_kv_heads_(c.n_kv_heads), head_dim_(c.head_dim()), eps_(c.norm_eps) {
  int64_t d = c.dim, hd = c.head_dim(), h = c.resolved_hidden_dim();
  input_layernorm = register_parameter("input_layernorm", torch::ones({d}));
  post_attention_layernorm = register_parameter("post_attention_layernorm", torch::ones({d}));
  q_proj = register_module("q_proj", make_linear(d, c.n_heads * hd, c.qkv_bias, m));
  k_proj = register_module("k_proj", make_linear(d, c.n_kv_heads * hd, c.qkv_bias, m));
  v_proj = register_module("v_proj", make_linear(d, c.n_kv_heads * hd, c.qkv_bias, m));
  o_proj = register_module("o_proj", make_linear(c.n_heads * hd, d, c.o_bias, m));
  gate_proj = register_module("gate_proj", make_linear(d, h, c.mlp_bias, m));
  up_proj = register_module("up_proj", make_linear(d, h, c.mlp_bias, m));
  down_proj = register_module("down_proj", make_linear(h, d, c.mlp_bias, m));
  if (c.qk_norm) {
    q_norm = register_parameter("q_norm", torch::ones({hd}));
    k_norm = register_parameter("k_norm", torch::ones({hd}));
  }
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                        const torch::Tensor& sin, const torch::Tensor& bias,
                                        KVCache* cache, int64_t layer_index) {
  const int64_t B = x.size(0), T = x.size(1);
  const int64_t H = n_heads_, KV = n_kv_heads_, hd = head_dim_, G = H / KV;
#if defined(TORCH_VERSION_MAJOR) && TORCH_VERSION_MAJOR >= 2
  const bool sdpa = x.is_cuda();  // libtorch >= 2 on a GPU: the fused attention kernel
#else
  const bool sdpa = false;
#endif

  // One GEMM for q, k and v; RoPE writes q and k straight into the [B, heads, T, hd] layout,
  // q already scaled by 1/sqrt(hd) (the SDPA kernel scales by itself).
  auto h = fused::rms_norm(x, input_layernorm, eps_);
  const auto qkv_w = qkv_weight_.get({q_proj->weight, k_proj->weight, v_proj->weight});
  auto qkv = (q_proj->bias.defined()
                  ? torch::nn::functional::linear(
                        h, qkv_w, qkv_bias_.get({q_proj->bias, k_proj->bias, v_proj->bias}))
                  : torch::nn::functional::linear(h, qkv_w))
                 .split_with_sizes({H * hd, KV * hd, KV * hd}, -1);
  const double q_scale = sdpa ? 1.0 : 1.0 / std::sqrt(double(hd));
  torch::Tensor q, k;      // [B, H, T, hd], [B, KV, T, hd]
  if (q_norm.defined()) {  // qwen3: RMSNorm over each head before RoPE, in the same pass
    q = fused::norm_rope(qkv[0], q_norm, eps_, cos, sin, H, q_scale);
    k = fused::norm_rope(qkv[1], k_norm, eps_, cos, sin, KV);
  } else {
    q = fused::rope(qkv[0], cos, sin, H, q_scale);
    k = fused::rope(qkv[1], cos, sin, KV);
  }
  auto v = qkv[2].reshape({B, T, KV, hd}).transpose(1, 2);

  torch::Tensor keys = k, values = v;
  if (cache) {
    const int64_t start = cache->length;
    auto& kc = cache->keys[layer_index];
    auto& vc = cache->values[layer_index];
    kc.narrow(2, start, T).copy_(k);
    vc.narrow(2, start, T).copy_(v);
    keys = kc.narrow(2, 0, start + T);
    values = vc.narrow(2, 0, start + T);
  }
  const int64_t L = keys.size(2);

#if defined(TORCH_VERSION_MAJOR) && TORCH_VERSION_MAJOR >= 2
  // libtorch >= 2 on a GPU: the fused kernel (keys repeated for GQA, additive float mask).
  if (sdpa) {
    auto k_rep = G == 1 ? keys : keys.repeat_interleave(G, 1);
    auto v_rep = G == 1 ? values : values.repeat_interleave(G, 1);
    auto ctx = bias.defined() ? at::scaled_dot_product_attention(q, k_rep, v_rep, bias)
                              : at::scaled_dot_product_attention(q, k_rep, v_rep);
    return mlp_block(x + o_proj(ctx.transpose(1, 2).reshape({B, T, H * hd})));
  }
#endif

  // Grouped-query attention without repeating keys: query heads h = j * G + i share kv head j
  // (Hugging Face repeat_kv order), so [B, H, T, hd] -> [B, KV, G * T, hd].
  auto qg = q.reshape({B, KV, G * T, hd});
  // Decoding (few query rows per kv head, many batch*head pairs): at::matmul would run one tiny
  // GEMM per (batch, head) on CPU; a broadcast multiply + sum is one vectorised op instead.
  const bool small_rows =
      G * T <= 4 && B * KV > 16 && B * KV * G * T * L * hd <= (int64_t(1) << 24);
  auto scores = small_rows ? (qg.unsqueeze(3) * keys.unsqueeze(2)).sum(-1)
                           : torch::matmul(qg, keys.transpose(-1, -2));  // [B, KV, G*T, L]
  if (bias.defined()) scores = (scores.view({B, H, T, L}) + bias).view({B, KV, G * T, L});
  auto probs = torch::softmax(scores, -1);
  auto ctx = small_rows ? (probs.unsqueeze(-1) * values.unsqueeze(2)).sum(3)
                        : torch::matmul(probs, values);
  auto attn = ctx  // [B, KV, G*T, hd]
                  .view({B, H, T, hd})
                  .transpose(1, 2)
                  .reshape({B, T, H * hd});
  return mlp_block(x + o_proj(attn));
}

torch::Tensor DecoderLayerImpl::mlp_block(const torch::Tensor& x) {
  auto h = fused::rms_norm(x, post_attention_layernorm, eps_);
  const auto gate_up_w = gate_up_weight_.get({gate_proj->weight, up_proj->weight});
  auto gate_up = gate_proj->bias.defined()
                     ? torch::nn::functional::linear(
                           h, gate_up_w, gate_up_bias_.get({gate_proj->bias, up_proj->bias}))
                     : torch::nn::functional::linear(h, gate_up_w);
  return x + down_proj(fused::swiglu(gate_up));
}

// ---------------------------------------------------------------------------------------------
// Transformer

TransformerImpl::TransformerImpl(const ModelConfig& config, const WeightDtypes& dtypes)
    : config_(config) {
  config_.validate();
  check_weight_dtype(dtypes.matrices, "matrices");
  check_weight_dtype(dtypes.embeddings, "embeddings");
  if (config_.hidden_dim == 0) config_.hidden_dim = config_.resolved_hidden_dim();
  const auto& c = config_;
  tok_embeddings = register_module("embed_tokens", torch::nn::Embedding(c.vocab_size, c.dim));
  if (dtypes.embeddings != torch::kFloat) {
    torch::NoGradGuard no_grad;
    tok_embeddings->weight.set_data(tok_embeddings->weight.to(dtypes.embeddings));
  }
  layers = register_module("layers", torch::nn::ModuleList());
  for (int i = 0; i < c.n_layers; ++i) layers->push_back(DecoderLayer(c, dtypes.matrices));
  norm_weight = register_parameter("norm", torch::ones({c.dim}));
  if (!c.tie_embeddings)
    lm_head = register_module("lm_head", make_linear(c.dim, c.vocab_size, false, dtypes.matrices));
  if (c.value_head) {
    config_.value_head = false;
    add_value_head();
  }
  rope_inv_freq_ = register_buffer("rope_inv_freq", rope_inv_freq(c));
}

torch::Tensor rope_inv_freq(const ModelConfig& c) {
  // inv_freq_i = theta^(-2i / hd), as Hugging Face computes it (float32).
  int64_t hd = c.head_dim();
  auto exponents = torch::arange(0, hd, 2, torch::kLong).to(torch::kFloat) / float(hd);
  torch::Tensor inv_freq = 1.0 / torch::pow(c.rope_theta, exponents);
  if (c.rope_factor <= 0) return inv_freq;
  // transformers modeling_rope_utils._compute_llama3_parameters, step by step (float32).
  const double factor = c.rope_factor, low = c.rope_low_freq_factor, high = c.rope_high_freq_factor,
               old_len = c.rope_original_max_position;
  const double low_freq_wavelen = old_len / low, high_freq_wavelen = old_len / high;
  constexpr double kPi = 3.14159265358979323846;  // Python's math.pi
  auto wavelen = 2 * kPi / inv_freq;
  auto llama = torch::where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq);
  auto smooth = (old_len / wavelen - low) / (high - low);
  auto smoothed = (1 - smooth) * llama / factor + smooth * llama;
  auto medium =
      (wavelen < high_freq_wavelen).logical_not() * (wavelen > low_freq_wavelen).logical_not();
  return torch::where(medium, smoothed, llama);
}

void TransformerImpl::add_value_head() {
  if (value_head) return;
  value_head = register_module("value_head", torch::nn::Linear(config_.dim, 1));
  torch::NoGradGuard no_grad;
  value_head->weight.normal_(0.0, 1.0 / std::sqrt(double(config_.dim) + 1.0));
  value_head->bias.zero_();
  value_head->to(norm_weight.device(), norm_weight.scalar_type());  // float32 on a bf16 base
  config_.value_head = true;
}

void start_cache(KVCache* cache, const ModelConfig& config, int64_t batch, int64_t min_tokens,
                 const torch::TensorOptions& kv_options) {
  int64_t cap = cache->capacity > 0 ? cache->capacity : config.max_seq_len;
  cap = std::max(cap, min_tokens);
  const int64_t KV = config.n_kv_heads, hd = config.head_dim();
  const auto kv_opts = cache->dtype ? kv_options.dtype(*cache->dtype) : kv_options;
  const auto long_opts = kv_options.dtype(torch::kLong);
  cache->keys.clear();
  cache->values.clear();
  // One block for all layers (views into it): a block this large comes back from the CPU
  // allocator's cache (policy/runtime/cpu_block_cache.h) on the next generation instead of as fresh
  // pages.
  auto all = torch::zeros({config.n_layers, 2, batch, KV, cap, hd}, kv_opts);
  for (int l = 0; l < config.n_layers; ++l) {
    cache->keys.push_back(all[l][0]);
    cache->values.push_back(all[l][1]);
  }
  cache->mask_buffer = torch::zeros({batch, cap}, long_opts);
  cache->next_position = torch::zeros({batch}, long_opts);
  cache->attention_mask = torch::Tensor();
  cache->capacity = cap;
  cache->length = 0;
}

torch::Tensor TransformerImpl::hidden_states(const torch::Tensor& ids,
                                             const torch::Tensor& attention_mask, KVCache* cache) {
  TORCH_CHECK(ids.dim() == 2, "hidden_states: ids must be [B, T], got ", ids.sizes());
  TORCH_CHECK(ids.scalar_type() == torch::kLong, "hidden_states: ids must be int64");
  const int64_t B = ids.size(0), T = ids.size(1);
  TORCH_CHECK(T > 0, "hidden_states: empty sequence");
  if (attention_mask.defined())
    TORCH_CHECK(attention_mask.sizes() == ids.sizes(), "hidden_states: attention_mask ",
                attention_mask.sizes(), " does not match ids ", ids.sizes());
  const auto dev = ids.device();
  auto long_opts = torch::TensorOptions().dtype(torch::kLong).device(dev);
  auto x = tok_embeddings(ids);
  if (x.scalar_type() != torch::kFloat) x = x.to(torch::kFloat);  // a bfloat16 table's rows

  torch::Tensor positions, bias, new_mask;
  if (!cache) {
    TORCH_CHECK(T <= config_.max_seq_len, "hidden_states: sequence length ", T,
                " exceeds max_seq_len ", config_.max_seq_len);
    torch::Tensor allowed;
    if (T > 1)
      allowed = torch::ones({T, T}, long_opts.dtype(torch::kBool)).tril().view({1, 1, T, T});
    if (attention_mask.defined()) {
      positions = positions_from_mask(attention_mask);
      auto keys_ok = attention_mask.to(torch::kBool).view({B, 1, 1, T});
      allowed = allowed.defined() ? allowed.logical_and(keys_ok) : keys_ok;
    } else {
      positions = torch::arange(T, long_opts).unsqueeze(0).expand({B, T});
    }
    if (allowed.defined())
      bias = torch::zeros(allowed.sizes(), x.options())
                 .masked_fill_(allowed.logical_not(), kMaskedScore);
  } else {
    new_mask =
        attention_mask.defined() ? attention_mask.to(torch::kLong) : torch::ones({B, T}, long_opts);
    const int64_t start = cache->length;
    TORCH_CHECK(config_.sliding_window == 0 || start + T <= config_.sliding_window,
                "hidden_states: ", start + T, " tokens exceed the sliding window of ",
                config_.sliding_window, " (longer contexts are not supported)");
    if (start == 0 || !cache->mask_buffer.defined()) start_cache(cache, config_, B, T, x.options());
    TORCH_CHECK(cache->mask_buffer.size(0) == B, "hidden_states: cache batch ",
                cache->mask_buffer.size(0), " != ids batch ", B);
    if (start + T > cache->mask_buffer.size(1)) grow_cache(cache, start + T);
    const int64_t L = start + T;
    cache->mask_buffer.narrow(1, start, T).copy_(new_mask);
    auto all_mask = cache->mask_buffer.narrow(1, 0, L);
    positions = positions_from_mask(new_mask, cache->next_position);
    auto allowed = all_mask.to(torch::kBool).view({B, 1, 1, L});
    if (T > 1) {
      auto causal = torch::arange(L, long_opts).view({1, L}) <=
                    (torch::arange(T, long_opts) + start).view({T, 1});
      allowed = allowed.logical_and(causal.view({1, 1, T, L}));
    }
    bias = torch::zeros(allowed.sizes(), x.options())
               .masked_fill_(allowed.logical_not(), kMaskedScore);
  }

  // Rotary tables for these positions: [B, T, hd/2] (fused::rope repeats them over both halves).
  auto angles = positions.to(torch::kFloat).unsqueeze(-1) * rope_inv_freq_.to(dev);
  auto cos = angles.cos().to(x.scalar_type());
  auto sin = angles.sin().to(x.scalar_type());

  for (size_t l = 0; l < layers->size(); ++l)
    x = layers[l]->as<DecoderLayer>()->forward(x, cos, sin, bias, cache, int64_t(l));

  if (cache) {
    cache->length += T;
    cache->attention_mask = cache->mask_buffer.narrow(1, 0, cache->length);
    cache->next_position = cache->next_position + new_mask.sum(1);
  }
  return fused::rms_norm(x, norm_weight, config_.norm_eps);
}

torch::Tensor TransformerImpl::logits_from_hidden(const torch::Tensor& hidden) {
  torch::Tensor logits =
      lm_head ? lm_head(hidden) : torch::nn::functional::linear(hidden, tok_embeddings->weight);
  return logits.scalar_type() == torch::kFloat ? logits : logits.to(torch::kFloat);
}

torch::Tensor TransformerImpl::values_from_hidden(const torch::Tensor& hidden) {
  TORCH_CHECK(value_head, "values_from_hidden: the model has no value head");
  return value_head(hidden).squeeze(-1).to(torch::kFloat);
}

torch::Tensor TransformerImpl::forward(const torch::Tensor& ids,
                                       const torch::Tensor& attention_mask) {
  return logits_from_hidden(hidden_states(ids, attention_mask));
}

std::vector<std::pair<std::string, torch::Tensor>> TransformerImpl::hf_named_parameters() {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  out.emplace_back("model.embed_tokens.weight", tok_embeddings->weight);
  for (size_t l = 0; l < layers->size(); ++l) {
    auto layer = layers[l]->as<DecoderLayer>();
    std::string p = "model.layers." + std::to_string(l) + ".";
    out.emplace_back(p + "input_layernorm.weight", layer->input_layernorm);
    out.emplace_back(p + "self_attn.q_proj.weight", layer->q_proj->weight);
    out.emplace_back(p + "self_attn.k_proj.weight", layer->k_proj->weight);
    out.emplace_back(p + "self_attn.v_proj.weight", layer->v_proj->weight);
    out.emplace_back(p + "self_attn.o_proj.weight", layer->o_proj->weight);
    out.emplace_back(p + "post_attention_layernorm.weight", layer->post_attention_layernorm);
    out.emplace_back(p + "mlp.gate_proj.weight", layer->gate_proj->weight);
    out.emplace_back(p + "mlp.up_proj.weight", layer->up_proj->weight);
    out.emplace_back(p + "mlp.down_proj.weight", layer->down_proj->weight);
    for (const auto& [name, lin] :
         {std::pair<const char*, torch::nn::Linear*>{"self_attn.q_proj", &layer->q_proj},
          {"self_attn.k_proj", &layer->k_proj},
          {"self_attn.v_proj", &layer->v_proj},
          {"self_attn.o_proj", &layer->o_proj},
          {"mlp.gate_proj", &layer->gate_proj},
          {"mlp.up_proj", &layer->up_proj},
          {"mlp.down_proj", &layer->down_proj}})
      if ((*lin)->bias.defined()) out.emplace_back(p + name + ".bias", (*lin)->bias);
    if (layer->q_norm.defined()) {
      out.emplace_back(p + "self_attn.q_norm.weight", layer->q_norm);
      out.emplace_back(p + "self_attn.k_norm.weight", layer->k_norm);
    }
  }
  out.emplace_back("model.norm.weight", norm_weight);
  if (lm_head) out.emplace_back("lm_head.weight", lm_head->weight);
  if (value_head) {
    out.emplace_back("value_head.weight", value_head->weight);
    out.emplace_back("value_head.bias", value_head->bias);
  }
  return out;
}

torch::Tensor positions_from_mask(const torch::Tensor& attention_mask,
                                  const torch::Tensor& offset) {
  auto pos = (attention_mask.to(torch::kLong).cumsum(1) - 1).clamp_min(0);
  if (offset.defined()) pos = pos + offset.to(torch::kLong).unsqueeze(1);
  return pos;
}

void init_weights(Transformer& model) {
  torch::NoGradGuard no_grad;
  const auto& c = model->config();
  const double std = 0.02, residual_std = 0.02 / std::sqrt(2.0 * c.n_layers);
  model->tok_embeddings->weight.normal_(0.0, std);
  for (size_t l = 0; l < model->layers->size(); ++l) {
    auto layer = model->layers[l]->as<DecoderLayer>();
    layer->input_layernorm.fill_(1.0);
    layer->post_attention_layernorm.fill_(1.0);
    for (auto* lin :
         {&layer->q_proj, &layer->k_proj, &layer->v_proj, &layer->gate_proj, &layer->up_proj})
      (*lin)->weight.normal_(0.0, std);
    layer->o_proj->weight.normal_(0.0, residual_std);
    layer->down_proj->weight.normal_(0.0, residual_std);
    for (auto* lin : {&layer->q_proj, &layer->k_proj, &layer->v_proj, &layer->o_proj,
                      &layer->gate_proj, &layer->up_proj, &layer->down_proj})
      if ((*lin)->bias.defined()) (*lin)->bias.zero_();
    if (layer->q_norm.defined()) {
      layer->q_norm.fill_(1.0);
      layer->k_norm.fill_(1.0);
    }
  }
  model->norm_weight.fill_(1.0);
  if (model->lm_head) model->lm_head->weight.normal_(0.0, std);
  if (model->value_head) {
    model->value_head->weight.normal_(0.0, 1.0 / std::sqrt(double(c.dim) + 1.0));
    model->value_head->bias.zero_();
  }
}

}  // namespace rlhf::policy
