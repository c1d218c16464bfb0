// LLaMA-style decoder-only transformer (the student policy, and the backbone of the reward model).
//
// Pre-norm RMSNorm, rotary position embeddings in the Hugging Face rotate-half convention,
// SwiGLU MLP, grouped-query attention (n_kv_heads divides n_heads), optional tied embeddings,
// optional scalar value head. Shapes: B = batch, T = time, D = dim, V = vocab.
//
// Padding: sequences are left-padded for prompts. An attention_mask [B, T] (1 = real token,
// 0 = pad) drives both the attention mask and the positions: position of a token = number of
// real tokens before it, so a left-padded prompt gets the same positions as the unpadded one.
//
// Thread safety: none, not even for forward passes without gradients. Every forward pass
// (Transformer::forward, hidden_states, DecoderLayer::forward) reads each layer's concatenated
// q/k/v and gate/up weights through a cache (fused::ConcatWeights) that it rebuilds when the
// weights changed or while autograd records, so two threads must not run one model at once: give
// each thread its own model (or serialise the calls). A KVCache belongs to one decoding loop.
// Ownership: modules and tensors are libtorch handles (shared, reference-counted); the model keeps
// no pointer to a KVCache passed in.
//
// Errors: ModelConfig::validate / from_proto and the Transformer constructor throw rlhf::Error
// naming the field; hidden_states and values_from_hidden check shapes and dtypes with TORCH_CHECK
// (c10::Error naming the argument), e.g. a sequence longer than max_seq_len.
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "policy/model/fused_ops.h"

namespace rlhf::proto {
class ModelConfig;
}

namespace rlhf::policy {

struct ModelConfig {
  int vocab_size = 4096;
  int dim = 256;
  int n_layers = 4;
  int n_heads = 8;
  int n_kv_heads = 8;  // grouped-query attention when < n_heads
  int hidden_dim = 0;  // SwiGLU inner size; 0 = LLaMA rule (2/3 * 4 * dim, multiple of 32)
  int max_seq_len = 512;
  float norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  bool tie_embeddings = false;
  bool value_head = false;  // adds a Linear(dim, 1) head read by values()
  int bos_id = 1;
  int eos_id = 2;
  int pad_id = 0;
  // Hugging Face family (config.json model_type): "llama", "mistral", "qwen2" or "qwen3". The
  // fields below say what the forward pass does; the family is kept for export.
  std::string model_type = "llama";
  int explicit_head_dim = 0;  // per-head size; 0 = dim / n_heads (config.json head_dim)
  bool qkv_bias = false;      // biases on q, k and v (qwen2; llama/qwen3 attention_bias)
  bool o_bias = false;        // bias on o (llama/qwen3 attention_bias)
  bool mlp_bias = false;      // biases on gate, up and down (llama mlp_bias)
  bool qk_norm = false;       // per-head RMSNorm on q and k before RoPE (qwen3), weights [head_dim]
  // rope_scaling of type "llama3" when rope_factor > 0: the inverse frequencies are rescaled as
  // Hugging Face's _compute_llama3_parameters does (wavelengths above original / low_freq_factor
  // divided by factor, below original / high_freq_factor kept, smooth in between).
  float rope_factor = 0.0f;
  float rope_low_freq_factor = 1.0f;
  float rope_high_freq_factor = 4.0f;
  int rope_original_max_position = 8192;
  // Sliding-window attention size (mistral; qwen with use_sliding_window), 0 = none. Not run:
  // max_seq_len is capped at the window when the config is read, so a longer context is refused
  // and within it full causal attention is exactly the windowed one.
  int sliding_window = 0;

  int head_dim() const { return explicit_head_dim > 0 ? explicit_head_dim : dim / n_heads; }
  int resolved_hidden_dim() const;
  // Throws rlhf::Error naming the field when the configuration is inconsistent.
  void validate() const;
  int64_t num_parameters() const;  // excluding the value head

  void to_proto(proto::ModelConfig* out) const;
  static ModelConfig from_proto(const proto::ModelConfig& p);
};

// Per-layer key/value cache for incremental decoding.
// keys/values[l]: [B, n_kv_heads, capacity, head_dim] preallocated buffers; positions
// [0, length) are filled. Set `capacity` before the first call to size the buffers (0 = the
// model's max_seq_len); a cache that runs out of room grows (doubling), which copies.
struct KVCache {
  std::vector<torch::Tensor> keys, values;
  int64_t length = 0;
  int64_t capacity = 0;
  torch::Tensor attention_mask;  // [B, length] mask of all tokens seen so far (1 = real); a view
  torch::Tensor next_position;   // [B] int64: position id the next token gets
  torch::Tensor mask_buffer;     // [B, capacity] backing store of attention_mask (internal)
  // dtype of the key/value buffers, set before the first call: unset = the activations' (float32);
  // torch::kBFloat16 under bf16 autocast halves the cache (policy/runtime/device.h).
  c10::optional<torch::ScalarType> dtype;
};

// The dtypes a Transformer holds its frozen-able weights in (the rest: norms, biases, value head,
// are float32). kFloat (the default) or kBFloat16, for a base that stays frozen under bf16
// autocast (LoRA; a reference): the constructor narrows each tensor right after initialising it,
// so no float32 copy of the model exists at any time (at most one float32 tensor, the largest
// being the embedding table), and the RNG draws are the same as with float32.
struct WeightDtypes {
  torch::ScalarType matrices = torch::kFloat;    // q, k, v, o, gate, up, down, an untied lm_head
  torch::ScalarType embeddings = torch::kFloat;  // the token embedding table (the tied lm_head)
};

// One pre-norm decoder block: x + attn(rmsnorm(x)), then h + mlp(rmsnorm(h)).
// Projections are Linear layers named after the Hugging Face tensors, with biases where the config
// asks (qkv_bias, o_bias, mlp_bias); with qk_norm, q and k are RMS-normalised per head (weights
// q_norm, k_norm [head_dim]) before RoPE. The forward pass
// runs q, k, v as one GEMM and gate, up as one (fused::ConcatWeights), and RMSNorm, RoPE and
// SwiGLU as fused kernels (policy/model/fused_ops.h).
class DecoderLayerImpl : public torch::nn::Module {
 public:
  // The projection matrices in `matrices` (WeightDtypes), their biases and the norms float32.
  explicit DecoderLayerImpl(const ModelConfig& config, torch::ScalarType matrices = torch::kFloat);

  // x [B, T, D]; cos/sin [B, T, head_dim / 2] (rotary angles); bias [B, 1, T, L] additive attention
  // bias (0 or a large negative), or undefined for "attend to everything" (L = cached + T keys).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& bias, KVCache* cache, int64_t layer_index);

  torch::Tensor input_layernorm, post_attention_layernorm;  // RMSNorm weights [D]
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
  torch::Tensor q_norm, k_norm;  // [head_dim] with config.qk_norm, else undefined

 private:
  // h + down(swiglu(gate_up(rmsnorm(h)))).
  torch::Tensor mlp_block(const torch::Tensor& h);

  int64_t n_heads_, n_kv_heads_, head_dim_;
  double eps_;
  fused::ConcatWeights qkv_weight_, gate_up_weight_, qkv_bias_, gate_up_bias_;
};
TORCH_MODULE(DecoderLayer);

class TransformerImpl : public torch::nn::Module {
 public:
  // Throws rlhf::Error (ModelConfig::validate) on an inconsistent config, or on a dtype in
  // `dtypes` other than kFloat / kBFloat16.
  explicit TransformerImpl(const ModelConfig& config, const WeightDtypes& dtypes = {});

  // Final-norm hidden states [B, T, D] for ids [B, T] (int64); the residual stream is float32
  // (rows of a bfloat16 embedding table are widened).
  // attention_mask: [B, T] (1 real / 0 pad) or undefined for "all real".
  // With a cache: ids are the new tokens, attention_mask covers only the new tokens, and the cache
  // is extended in place (allocated on first use with capacity max_seq_len).
  torch::Tensor hidden_states(const torch::Tensor& ids, const torch::Tensor& attention_mask = {},
                              KVCache* cache = nullptr);

  // Logits [B, T, V] (float32) from hidden states [B, T, D] (or a slice of them).
  torch::Tensor logits_from_hidden(const torch::Tensor& hidden);
  // Values [B, T] from hidden states; requires config.value_head.
  torch::Tensor values_from_hidden(const torch::Tensor& hidden);

  // Convenience: logits [B, T, V].
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor& attention_mask = {});

  const ModelConfig& config() const { return config_; }

  // Adds a freshly initialised value head (e.g. for PPO or a reward model) if absent.
  void add_value_head();

  // Parameters by Hugging Face LLaMA name ("model.layers.0.self_attn.q_proj.weight", ...,
  // "...q_proj.bias" and "...self_attn.q_norm.weight" where the config has them,
  // "lm_head.weight" unless tied, "value_head.weight"/"value_head.bias" when present).
  std::vector<std::pair<std::string, torch::Tensor>> hf_named_parameters();

  // Module pieces (public so LoRA can wrap projections).
  torch::nn::Embedding tok_embeddings{nullptr};
  torch::nn::ModuleList layers{nullptr};  // DecoderLayer each
  torch::Tensor norm_weight;
  torch::nn::Linear lm_head{nullptr};     // null when tie_embeddings
  torch::nn::Linear value_head{nullptr};  // null unless value head

 private:
  ModelConfig config_;
  torch::Tensor rope_inv_freq_;  // [head_dim/2] (rope_inv_freq(config))
};
TORCH_MODULE(Transformer);

// Empties `cache` and allocates it for `batch` rows, as hidden_states does on its first call with a
// cache: capacity = cache->capacity when > 0, else config.max_seq_len, and at least `min_tokens`;
// zeroed keys and values [batch, n_kv_heads, capacity, head_dim] per layer (contiguous views of
// one block) in `kv_options`
// (cache->dtype overrides its dtype); zeroed mask_buffer [batch, capacity] and next_position
// [batch] (int64 on the same device); length 0.
void start_cache(KVCache* cache, const ModelConfig& config, int64_t batch, int64_t min_tokens,
                 const torch::TensorOptions& kv_options);

// The rotary inverse frequencies [head_dim / 2] (float32) as Hugging Face computes them:
// theta^(-2i / hd), rescaled for rope_factor > 0 (llama3 rope_scaling).
torch::Tensor rope_inv_freq(const ModelConfig& config);

// Position ids [B, T] from an attention mask [B, T]: cumulative count of real tokens - 1, clamped
// at 0 for pads. `offset` [B] (optional) is added (positions already consumed, with a cache).
torch::Tensor positions_from_mask(const torch::Tensor& attention_mask,
                                  const torch::Tensor& offset = {});

// Initialises all weights the GPT-2/LLaMA way (normal(0, 0.02), residual projections scaled by
// 1/sqrt(2 * n_layers)), deterministic given the torch seed.
void init_weights(Transformer& model);

}  // namespace rlhf::policy
