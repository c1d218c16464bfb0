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

// SwiGLU on a fused gate/up projection: gate_up [..., 2F] holds gate in [..., :F] and up in
// [..., F:]; returns silu(gate) * up [..., F]. The gradient is written straight into one
// [..., 2F] tensor (no split and concatenation).
torch::Tensor swiglu(const torch::Tensor& gate_up);
torch::Tensor reference_swiglu(const torch::Tensor& gate_up);

// The concatenation along dim 0 of several weights [out_i, in] (q, k and v projections; gate and
// up), so one GEMM replaces several; the parameters themselves stay separate (checkpoints, LoRA
// and optimizers see the Hugging Face tensors). While autograd records and a weight requires a
// gradient, get() concatenates afresh (gradients flow back to each weight). Otherwise (decoding,
// evaluation) it returns a cached copy, rebuilt when any weight is another tensor or was changed in
// place (its version counter moved). Not thread-safe.
class ConcatWeights {
 public:
  torch::Tensor get(const std::vector<torch::Tensor>& weights);

 private:
  torch::Tensor cached_;
  std::vector<const void*> impls_;
  std::vector<int64_t> versions_;
};

// Whether the fused kernels (rather than the reference) run for a tensor: CPU, float32/float64,
// and not switched off.
bool has_fused_kernel(const torch::Tensor& t);

// Switches the fused kernels on (the default) or off process-wide, so a benchmark can measure the
// reference path in the same run. Returns the previous setting.
bool set_fused_kernels(bool enabled);

}  // namespace rlhf::policy::fused
