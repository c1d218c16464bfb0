// Fused element-wise operations of the decoder layer, forward and backward.
//
// Why: the quickstart's and the bench's models are small (d = 128..256), so a training step is
// dominated by per-operation overhead, not by the matrix multiplies: RMSNorm written with libtorch
// operations is 6 kernels and 6 allocations forward and about 10 backward; RoPE and SwiGLU are
// similar (profiles in docs/performance.md). Each function here is one pass over memory forward
// and one backward (a custom autograd function), for float32 and float64 tensors on the CPU. On
// other devices and dtypes (CUDA, bf16) the same function runs the reference composition of
// libtorch operations, so callers never branch.
//
// Every fused function has a `reference_` twin written with plain libtorch operations (the
// definition of the result); tests compare the two forward and backward, and against numerical
// gradients. Results differ from the reference only by float summation order.
//
// Shapes: N = rows (batch x time), D = model dim, H = heads, hd = head size, F = MLP hidden size.
//
// Errors: inputs of the wrong shape or dtype (targets not int64, a target outside the vocabulary,
// heads that do not divide the width, cos/sin that do not match x) throw c10::Error naming the
// function and the shapes. Thread safety: the functions keep no state; the CPU loops split their
// rows over libtorch's intra-op pool and the kernels' instruction set (policy/kernels/isa.h).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace rlhf::policy::fused {

// RMSNorm (Zhang & Sennrich 2019), Hugging Face LlamaRMSNorm: y = x / sqrt(mean(x^2) + eps) * w
// over the last dimension, computed in float32 (or float64). x [..., D], weight [D].
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);
torch::Tensor reference_rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// Rotary position embedding in the Hugging Face rotate-half convention, fused with the layout
// change attention needs and an optional scale:
//   x [B, T, H * hd] (any row stride; the last dimension contiguous, e.g. a slice of a fused
//   q/k/v projection), cos/sin [B, T, hd / 2] (the angles, not duplicated)
//   -> y [B, H, T, hd] contiguous, y = scale * (x * cos + rotate_half(x) * sin) per head, where
//   rotate_half(x) = cat(-x[hd/2:], x[:hd/2]) and cos/sin repeat over both halves.
// No gradient flows to cos/sin (they come from positions).
torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                   int64_t heads, double scale = 1.0);
torch::Tensor reference_rope(const torch::Tensor& x, const torch::Tensor& cos,
                             const torch::Tensor& sin, int64_t heads, double scale = 1.0);

// Per-head RMSNorm then RoPE in one pass (Qwen3's q_norm / k_norm before the rotary embedding):
// rope(rms_norm(x.reshape({B, T, heads, hd}), weight, eps).view({B, T, heads * hd}), cos, sin,
// heads, scale), with weight [hd]; x, cos, sin and the result as rope's. Forward and backward
// (gradients for x and weight) compute each value with the operations and the order of that
// composition of the fused kernels, so they give the same numbers without the copy of the strided
// q/k slice and the extra passes over it. Where the fused kernels do not run (see
// has_fused_kernel, or a weight of another dtype) it is that composition.
torch::Tensor norm_rope(const torch::Tensor& x, const torch::Tensor& weight, double eps,
                        const torch::Tensor& cos, const torch::Tensor& sin, int64_t heads,
                        double scale = 1.0);
torch::Tensor reference_norm_rope(const torch::Tensor& x, const torch::Tensor& weight, double eps,
                                  const torch::Tensor& cos, const torch::Tensor& sin, int64_t heads,
                                  double scale = 1.0);

// SwiGLU on a fused gate/up projection: gate_up [..., 2F] holds gate in [..., :F] and up in
// [..., F:]; returns silu(gate) * up [..., F]. The gradient is written straight into one
// [..., 2F] tensor (no split and concatenation).
torch::Tensor swiglu(const torch::Tensor& gate_up);
torch::Tensor reference_swiglu(const torch::Tensor& gate_up);

// Log-probability of each row's target under softmax(logits): logits [N, V] (or [..., V] with
// targets [...]), targets int64 [N] -> [N], out[n] = logits[n, t] - logsumexp(logits[n, :]) for
// t = targets[n]. A negative target is ignored: its output and its gradient are 0 (the SFT loss's
// masked prompt tokens). Equals -cross_entropy(logits, targets, reduction none, ignore_index < 0).
// Forward is one pass per row that saves only the row's log-sum-exp [N] (no [N, V] log-softmax);
// backward writes g * (onehot(target) - softmax) in one pass, recomputing exp from the saved
// log-sum-exp. Narrower dtypes (bf16) are computed in float32, as autocast does for
// cross_entropy. Rows are independent, so results do not depend on the thread count.
torch::Tensor token_logprobs(const torch::Tensor& logits, const torch::Tensor& targets);
torch::Tensor reference_token_logprobs(const torch::Tensor& logits, const torch::Tensor& targets);

// The same computation without autograd, for callers that recompute the logits in their own
// backward pass (policy/model/logprobs.cpp): the per-row statistics of logits [..., V] (float32 or
// float64) and targets [...] (negative = ignored, as above). entropy[n] = -sum_v p log p of the
// row's whole distribution (also for ignored rows); computed only when asked for.
struct TokenLogprobStats {
  torch::Tensor logprobs;   // [...]
  torch::Tensor logsumexp;  // [...]
  torch::Tensor entropy;    // [...], undefined unless requested
};
TokenLogprobStats token_logprob_stats(const torch::Tensor& logits, const torch::Tensor& targets,
                                      bool entropy);

// The gradient with respect to the logits of sum(grad_logprobs * logprobs + grad_entropy *
// entropy), given the same logits and targets and their stats (entropy needed only when
// grad_entropy is defined; either grad may be undefined = 0). With in_place the result is
// written over `logits` (which must then be contiguous and not needed afterwards) instead of a
// new tensor.
torch::Tensor token_logprobs_backward(const torch::Tensor& logits, const torch::Tensor& targets,
                                      const TokenLogprobStats& stats,
                                      const torch::Tensor& grad_logprobs,
                                      const torch::Tensor& grad_entropy, bool in_place = false);

// The concatenation along dim 0 of several weights [out_i, in] (q, k and v projections; gate and
// up), so one GEMM replaces several; the parameters themselves stay separate (checkpoints, LoRA
// and optimizers see the Hugging Face tensors). While autograd records and a weight requires a
// gradient, get() concatenates afresh (gradients flow back to each weight). Otherwise (decoding,
// evaluation) it returns a cached copy, rebuilt when any weight is another tensor, was changed in
// place (its version counter moved) or got other data (set_data: another storage or dtype, e.g.
// a frozen base widened from bfloat16). Not thread-safe.
class ConcatWeights {
 public:
  torch::Tensor get(const std::vector<torch::Tensor>& weights);

 private:
  torch::Tensor cached_;
  std::vector<const void*> impls_;
  std::vector<int64_t> versions_;
  std::vector<const void*> data_;
};

// Whether the fused kernels (rather than the reference) run for a tensor: CPU, float32/float64,
// and not switched off.
bool has_fused_kernel(const torch::Tensor& t);

// Switches the fused kernels on (the default) or off process-wide, so a benchmark can measure the
// reference path in the same run. Returns the previous setting.
bool set_fused_kernels(bool enabled);

}  // namespace rlhf::policy::fused
