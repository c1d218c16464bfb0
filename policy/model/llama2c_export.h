// Writes a Transformer in the legacy checkpoint format of karpathy's llama2.c (run.c, "version 0"
// of export.py), so the peer can run the same shape and weights as `rlhf bench` for a speed
// comparison (bench/peer/compare_llama2c.sh, docs/performance.md "Peer: llama2.c").
//
// model.bin: 7 int32 {dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len}
// (vocab_size negative = an unshared classifier follows), then float32 tensors, each row-major
// [out, in] like torch Linear weights: token_embedding [V, D], rms_att [L, D], wq [L, D, D],
// wk [L, KVD, D], wv [L, KVD, D], wo [L, D, D], rms_ffn [L, D], w1 = gate [L, H, D],
// w2 = down [L, D, H], w3 = up [L, H, D], rms_final [D], seq_len * head_dim zeros (the unused
// freq_cis real and imaginary halves), then wcls [V, D] unless the embeddings are tied.
// KVD = n_kv_heads * head_dim, H = the SwiGLU hidden size. Native byte order (little-endian on
// every machine llama2.c targets).
//
// Not converted: the rotary convention. This project rotates halves (Hugging Face), llama2.c
// rotates interleaved pairs, so the peer computes a different function of the same weights; the
// cost per token is the same, which is all the comparison needs.
//
// tokenizer.bin: int32 max_token_length, then per token: float32 score, int32 byte length, bytes.
// The pieces are placeholders ("<unk>", "<s>", "</s>", then " t3", " t4", ...), scores 0.
//
// Thread safety: the functions read the model's weights (no thread may train it meanwhile) and
// keep no state. Errors: rlhf::Error, as each function says.
#pragma once

#include <cstdint>
#include <string>

#include "policy/model/model.h"

namespace rlhf::policy {

// The checkpoint bytes described above (weights copied to CPU float32). Throws rlhf::Error naming
// the feature for a model llama2.c cannot run (biases, q/k norms, an explicit head_dim, rope
// scaling, a sliding window).
std::string llama2c_checkpoint_bytes(Transformer& model);

// The placeholder tokenizer bytes for `vocab_size` tokens; throws rlhf::Error when
// vocab_size < 3.
std::string llama2c_tokenizer_bytes(int vocab_size);

// Writes dir/model.bin and dir/tokenizer.bin atomically (temp file + rename each), creating dir.
// Throws rlhf::Error naming the path that could not be created or written.
void write_llama2c(Transformer& model, const std::string& dir);

// Number of float32 values after the header in a checkpoint of this shape.
int64_t llama2c_float_count(const ModelConfig& config);

}  // namespace rlhf::policy
