#include "policy/model/fused_ops.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "policy/kernels/logprob_rows.h"

namespace rlhf::policy::fused {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kRowGrain = 16;        // rows per parallel_for task
constexpr int64_t kWeightGradRows = 64;  // rows per partial sum of RMSNorm's weight gradient

std::atomic<bool> g_fused_enabled{true};

// ---------------------------------------------------------------------------------------------
// RMSNorm kernels on [N, D] contiguous rows.

template <typename T>
void rms_norm_rows(const T* x, const T* w, T* y, T* inv, int64_t N, int64_t D, double eps) {
  at::parallel_for(0, N, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* xr = x + n * D;
      T* yr = y + n * D;
      double ss = 0;
      for (int64_t j = 0; j < D; ++j) ss += double(xr[j]) * double(xr[j]);
      const T r = T(1.0 / std::sqrt(ss / double(D) + eps));
      inv[n] = r;
      for (int64_t j = 0; j < D; ++j) yr[j] = (xr[j] * r) * w[j];
    }
  });
}

// gx = r * (gy * w) - x * r^3 / D * sum(gy * w * x); partial_gw[c] += gy * x * r for the rows of
// chunk c (rows [c * N / chunks, (c + 1) * N / chunks)).
template <typename T>
void rms_norm_rows_backward(const T* gy, const T* x, const T* w, const T* inv, T* gx,
                            double* partial_gw, int64_t chunks, int64_t N, int64_t D) {
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      double* gw = partial_gw ? partial_gw + c * D : nullptr;
      for (int64_t n = c * N / chunks; n < (c + 1) * N / chunks; ++n) {
        const T *gr = gy + n * D, *xr = x + n * D;
        T* gxr = gx + n * D;
        const double r = inv[n];
        double dot = 0;
        for (int64_t j = 0; j < D; ++j) dot += double(gr[j]) * double(w[j]) * double(xr[j]);
        const T a = T(r), b = T(r * r * r * dot / double(D));
        for (int64_t j = 0; j < D; ++j) gxr[j] = a * (gr[j] * w[j]) - xr[j] * b;
        if (gw)
          for (int64_t j = 0; j < D; ++j) gw[j] += double(gr[j]) * double(xr[j]) * r;
      }
    }
  });
}

class RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, double eps) {
    const int64_t D = x.size(-1), N = x.numel() / D;
    auto xc = x.contiguous();
    auto wc = weight.contiguous();
    auto y = torch::empty_like(xc);
    auto inv = torch::empty({N}, xc.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_rms_norm", [&] {
      rms_norm_rows<scalar_t>(xc.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(),
                              y.data_ptr<scalar_t>(), inv.data_ptr<scalar_t>(), N, D, eps);
    });
    ctx->save_for_backward({xc, wc, inv});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w = saved[1], &inv = saved[2];
    const int64_t D = x.size(-1), N = x.numel() / D;
    auto gy = grads[0].contiguous();
    auto gx = torch::empty_like(x);
    const bool want_w = ctx->needs_input_grad(1);
    // Row chunks of a fixed size: the weight gradient's summation order depends on N only, not on
    // the thread count, so results are reproducible across machines and thread settings.
    const int64_t chunks = (N + kWeightGradRows - 1) / kWeightGradRows;
    std::vector<double> partial(want_w ? size_t(chunks * D) : 0, 0.0);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_rms_norm_backward", [&] {
      rms_norm_rows_backward<scalar_t>(gy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                       w.data_ptr<scalar_t>(), inv.data_ptr<scalar_t>(),
                                       gx.data_ptr<scalar_t>(), want_w ? partial.data() : nullptr,
                                       chunks, N, D);
    });
    torch::Tensor gw;
    if (want_w) {
      auto sum = torch::zeros({D}, torch::kDouble);
      auto* s = sum.data_ptr<double>();
      for (int64_t c = 0; c < chunks; ++c)
        for (int64_t j = 0; j < D; ++j) s[j] += partial[size_t(c * D + j)];
      gw = sum.to(w.scalar_type());
    }
    return {gx, gw, torch::Tensor()};
  }
};

// ---------------------------------------------------------------------------------------------
// RoPE kernels. x rows n = b * T + t (row stride sx), heads side by side in a row; y [B, H, T, hd].
// sign = +1 applies the rotation, -1 its transpose (the backward pass).

template <typename T>
void rope_to_heads(const T* x, int64_t sx, const T* cos, const T* sin, T* y, int64_t B, int64_t Tn,
                   int64_t H, int64_t hd, T scale) {
  const int64_t half = hd / 2;
  at::parallel_for(0, B * Tn, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int64_t b = n / Tn, t = n % Tn;
      const T *c = cos + n * half, *s = sin + n * half;
      for (int64_t h = 0; h < H; ++h) {
        const T* src = x + n * sx + h * hd;
        T* dst = y + ((b * H + h) * Tn + t) * hd;
        for (int64_t i = 0; i < half; ++i) {
          const T x1 = src[i], x2 = src[i + half];
          dst[i] = (x1 * c[i] - x2 * s[i]) * scale;
          dst[i + half] = (x2 * c[i] + x1 * s[i]) * scale;
        }
      }
    }
  });
}

// The transpose of rope_to_heads: gy [B, H, T, hd] -> gx rows [B * T, H * hd] (contiguous).
template <typename T>
void rope_from_heads(const T* gy, const T* cos, const T* sin, T* gx, int64_t B, int64_t Tn,
                     int64_t H, int64_t hd, T scale) {
  const int64_t half = hd / 2;
  at::parallel_for(0, B * Tn, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int64_t b = n / Tn, t = n % Tn;
      const T *c = cos + n * half, *s = sin + n * half;
      for (int64_t h = 0; h < H; ++h) {
        const T* src = gy + ((b * H + h) * Tn + t) * hd;
        T* dst = gx + n * H * hd + h * hd;
        for (int64_t i = 0; i < half; ++i) {
          const T g1 = src[i], g2 = src[i + half];
          dst[i] = (g1 * c[i] + g2 * s[i]) * scale;
          dst[i + half] = (g2 * c[i] - g1 * s[i]) * scale;
        }
      }
    }
  });
}

// x [B, T, H*hd] with a contiguous last dimension: usable in place (a slice of a wider row).
torch::Tensor rows_with_unit_stride(const torch::Tensor& x) {
  return x.stride(2) == 1 && x.stride(0) == x.size(1) * x.stride(1) ? x : x.contiguous();
}

class RopeFunction : public torch::autograd::Function<RopeFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& cos, const torch::Tensor& sin, int64_t heads,
                               double scale) {
    const int64_t B = x.size(0), Tn = x.size(1), hd = x.size(2) / heads;
    auto xs = rows_with_unit_stride(x);
    auto c = cos.to(x.scalar_type()).contiguous();
    auto s = sin.to(x.scalar_type()).contiguous();
    auto y = torch::empty({B, heads, Tn, hd}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_rope", [&] {
      rope_to_heads<scalar_t>(xs.data_ptr<scalar_t>(), xs.stride(1), c.data_ptr<scalar_t>(),
                              s.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), B, Tn, heads, hd,
                              scalar_t(scale));
    });
    ctx->save_for_backward({c, s});
    ctx->saved_data["heads"] = heads;
    ctx->saved_data["scale"] = scale;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &c = saved[0], &s = saved[1];
    const int64_t heads = ctx->saved_data["heads"].toInt();
    const double scale = ctx->saved_data["scale"].toDouble();
    auto gy = grads[0].contiguous();
    const int64_t B = gy.size(0), Tn = gy.size(2), hd = gy.size(3);
    auto gx = torch::empty({B, Tn, heads * hd}, gy.options());
    AT_DISPATCH_FLOATING_TYPES(gy.scalar_type(), "fused_rope_backward", [&] {
      rope_from_heads<scalar_t>(gy.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
                                s.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), B, Tn, heads, hd,
                                scalar_t(scale));
    });
    return {gx, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// ---------------------------------------------------------------------------------------------
// Per-head RMSNorm then RoPE (qwen3's q_norm / k_norm), one pass. The head rows m = n * H + h are
// those of rms_norm on x.reshape({B, T, H, hd}), and each value is computed by the same operations
// in the same order as rms_norm_rows followed by rope_to_heads (and backward as rope_from_heads
// followed by rms_norm_rows_backward), so the result equals that composition.

template <typename T>
void norm_rope_to_heads(const T* x, int64_t sx, const T* w, double eps, const T* cos, const T* sin,
                        T* y, T* inv, int64_t B, int64_t Tn, int64_t H, int64_t hd, T scale) {
  const int64_t half = hd / 2;
  at::parallel_for(0, B * Tn, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int64_t b = n / Tn, t = n % Tn;
      const T *c = cos + n * half, *s = sin + n * half;
      for (int64_t h = 0; h < H; ++h) {
        const T* src = x + n * sx + h * hd;
        T* dst = y + ((b * H + h) * Tn + t) * hd;
        double ss = 0;
        for (int64_t j = 0; j < hd; ++j) ss += double(src[j]) * double(src[j]);
        const T r = T(1.0 / std::sqrt(ss / double(hd) + eps));
        inv[n * H + h] = r;
        for (int64_t i = 0; i < half; ++i) {
          const T x1 = (src[i] * r) * w[i], x2 = (src[i + half] * r) * w[i + half];
          dst[i] = (x1 * c[i] - x2 * s[i]) * scale;
          dst[i + half] = (x2 * c[i] + x1 * s[i]) * scale;
        }
      }
    }
  });
}

// gy [B, H, T, hd] -> gx rows [B * T, H * hd] (contiguous): the rotation's transpose, then
// RMSNorm's backward per head; partial_gw[c] += g * x * r over the head rows of chunk c (rows
// [c * N / chunks, (c + 1) * N / chunks) of the N = B * T * H head rows), as rms_norm.
template <typename T>
void norm_rope_from_heads(const T* gy, const T* x, int64_t sx, const T* w, const T* inv,
                          const T* cos, const T* sin, T* gx, double* partial_gw, int64_t chunks,
                          int64_t B, int64_t Tn, int64_t H, int64_t hd, T scale) {
  const int64_t half = hd / 2, N = B * Tn * H;
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t ch = cb; ch < ce; ++ch) {
      double* gw = partial_gw ? partial_gw + ch * hd : nullptr;
      for (int64_t m = ch * N / chunks; m < (ch + 1) * N / chunks; ++m) {
        const int64_t n = m / H, h = m % H, b = n / Tn, t = n % Tn;
        const T *c = cos + n * half, *s = sin + n * half;
        const T* src = gy + ((b * H + h) * Tn + t) * hd;
        const T* xr = x + n * sx + h * hd;
        T* g = gx + n * H * hd + h * hd;  // first the rotated gradient, then overwritten
        for (int64_t i = 0; i < half; ++i) {
          const T g1 = src[i], g2 = src[i + half];
          g[i] = (g1 * c[i] + g2 * s[i]) * scale;
          g[i + half] = (g2 * c[i] - g1 * s[i]) * scale;
        }
        const double r = inv[m];
        double dot = 0;
        for (int64_t j = 0; j < hd; ++j) dot += double(g[j]) * double(w[j]) * double(xr[j]);
        if (gw)
          for (int64_t j = 0; j < hd; ++j) gw[j] += double(g[j]) * double(xr[j]) * r;
        const T a = T(r), bb = T(r * r * r * dot / double(hd));
        for (int64_t j = 0; j < hd; ++j) g[j] = a * (g[j] * w[j]) - xr[j] * bb;
      }
    }
  });
}

class NormRopeFunction : public torch::autograd::Function<NormRopeFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, double eps, const torch::Tensor& cos,
                               const torch::Tensor& sin, int64_t heads, double scale) {
    const int64_t B = x.size(0), Tn = x.size(1), hd = x.size(2) / heads;
    auto xs = rows_with_unit_stride(x);
    auto wc = weight.contiguous();
    auto c = cos.to(x.scalar_type()).contiguous();
    auto s = sin.to(x.scalar_type()).contiguous();
    auto y = torch::empty({B, heads, Tn, hd}, x.options());
    auto inv = torch::empty({B * Tn * heads}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_norm_rope", [&] {
      norm_rope_to_heads<scalar_t>(xs.data_ptr<scalar_t>(), xs.stride(1), wc.data_ptr<scalar_t>(),
                                   eps, c.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(),
                                   y.data_ptr<scalar_t>(), inv.data_ptr<scalar_t>(), B, Tn, heads,
                                   hd, scalar_t(scale));
    });
    ctx->save_for_backward({xs, wc, inv, c, s});
    ctx->saved_data["heads"] = heads;
    ctx->saved_data["scale"] = scale;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w = saved[1], &inv = saved[2], &c = saved[3], &s = saved[4];
    const int64_t heads = ctx->saved_data["heads"].toInt();
    const double scale = ctx->saved_data["scale"].toDouble();
    auto gy = grads[0].contiguous();
    const int64_t B = gy.size(0), Tn = gy.size(2), hd = gy.size(3);
    auto gx = torch::empty({B, Tn, heads * hd}, gy.options());
    const bool want_w = ctx->needs_input_grad(1);
    const int64_t chunks = (B * Tn * heads + kWeightGradRows - 1) / kWeightGradRows;
    std::vector<double> partial(want_w ? size_t(chunks * hd) : 0, 0.0);
    AT_DISPATCH_FLOATING_TYPES(gy.scalar_type(), "fused_norm_rope_backward", [&] {
      norm_rope_from_heads<scalar_t>(gy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), x.stride(1),
                                     w.data_ptr<scalar_t>(), inv.data_ptr<scalar_t>(),
                                     c.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(),
                                     gx.data_ptr<scalar_t>(), want_w ? partial.data() : nullptr,
                                     chunks, B, Tn, heads, hd, scalar_t(scale));
    });
    torch::Tensor gw;
    if (want_w) {
      auto sum = torch::zeros({hd}, torch::kDouble);
      auto* acc = sum.data_ptr<double>();
      for (int64_t ch = 0; ch < chunks; ++ch)
        for (int64_t j = 0; j < hd; ++j) acc[j] += partial[size_t(ch * hd + j)];
      gw = sum.to(w.scalar_type());
    }
    return {gx, gw, {}, {}, {}, {}, {}};
  }
};

// ---------------------------------------------------------------------------------------------
// SwiGLU kernels on rows [N, 2F] (gate | up) with row stride sg; sig = sigmoid(gate) [N, F].

template <typename T>
void swiglu_rows(const T* gu, int64_t sg, const T* sig, T* y, int64_t N, int64_t F) {
  at::parallel_for(0, N, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T *g = gu + n * sg, *u = g + F, *s = sig + n * F;
      T* yr = y + n * F;
      for (int64_t f = 0; f < F; ++f) yr[f] = (g[f] * s[f]) * u[f];
    }
  });
}

// d/dgate = gy * up * s * (1 + gate * (1 - s)), d/dup = gy * gate * s.
template <typename T>
void swiglu_rows_backward(const T* gy, const T* gu, int64_t sg, const T* sig, T* ggu, int64_t N,
                          int64_t F) {
  at::parallel_for(0, N, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T *g = gu + n * sg, *u = g + F, *s = sig + n * F, *go = gy + n * F;
      T *gg = ggu + n * 2 * F, *gup = gg + F;
      for (int64_t f = 0; f < F; ++f) {
        const T silu = g[f] * s[f];
        gg[f] = go[f] * u[f] * (s[f] + silu * (T(1) - s[f]));
        gup[f] = go[f] * silu;
      }
    }
  });
}

class SwigluFunction : public torch::autograd::Function<SwigluFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gate_up) {
    const int64_t F = gate_up.size(-1) / 2, N = gate_up.numel() / (2 * F);
    auto rows = gate_up.reshape({N, 2 * F});
    if (rows.stride(1) != 1) rows = rows.contiguous();
    auto sig = torch::sigmoid(rows.narrow(1, 0, F)).contiguous();  // vectorised exp
    auto out_sizes = gate_up.sizes().vec();
    out_sizes.back() = F;
    auto y = torch::empty(out_sizes, gate_up.options());
    AT_DISPATCH_FLOATING_TYPES(gate_up.scalar_type(), "fused_swiglu", [&] {
      swiglu_rows<scalar_t>(rows.data_ptr<scalar_t>(), rows.stride(0), sig.data_ptr<scalar_t>(),
                            y.data_ptr<scalar_t>(), N, F);
    });
    ctx->save_for_backward({rows, sig});
    ctx->saved_data["sizes"] = gate_up.sizes().vec();
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &rows = saved[0], &sig = saved[1];
    const int64_t N = rows.size(0), F = rows.size(1) / 2;
    auto gy = grads[0].contiguous();
    auto ggu = torch::empty({N, 2 * F}, gy.options());
    AT_DISPATCH_FLOATING_TYPES(gy.scalar_type(), "fused_swiglu_backward", [&] {
      swiglu_rows_backward<scalar_t>(gy.data_ptr<scalar_t>(), rows.data_ptr<scalar_t>(),
                                     rows.stride(0), sig.data_ptr<scalar_t>(),
                                     ggu.data_ptr<scalar_t>(), N, F);
    });
    return {ggu.view(ctx->saved_data["sizes"].toIntVector())};
  }
};

// ---------------------------------------------------------------------------------------------
// Token log-probability rows [N, V] (contiguous): the kernels of policy/kernels/logprob_rows.h
// (one instruction-set dispatch with the decoding kernels), split over libtorch's threads.

// Row grain of the parallel loops: about 64 K elements per task.
int64_t logprob_row_grain(int64_t V) { return std::max<int64_t>(1, (int64_t(1) << 16) / V); }

// ent null: no entropy (logprob_rows.h).
template <typename T>
void logprob_rows(const T* z, const int64_t* tgt, T* lp, T* lse, T* ent, int64_t N, int64_t V) {
  at::parallel_for(0, N, logprob_row_grain(V), [&](int64_t begin, int64_t end) {
    kernels::logprob_rows(z, tgt, lp, lse, ent, begin, end, V);
  });
}

// ent and gent null: no entropy term (logprob_rows.h).
template <typename T>
void logprob_rows_backward(const T* z, const int64_t* tgt, const T* lse, const T* ent, const T* glp,
                           const T* gent, T* out, int64_t N, int64_t V) {
  at::parallel_for(0, N, logprob_row_grain(V), [&](int64_t begin, int64_t end) {
    kernels::logprob_grad_rows(z, tgt, lse, ent, glp, gent, out, begin, end, V);
  });
}

// Logits as [N, V] rows and targets as [N] int64, after checking that they match.
std::pair<torch::Tensor, torch::Tensor> logprob_rows_of(const torch::Tensor& logits,
                                                        const torch::Tensor& targets,
                                                        const char* who) {
  TORCH_CHECK(logits.dim() >= 1 && logits.size(-1) > 0, who,
              ": logits must be [..., V] with V > 0, got ", logits.sizes());
  TORCH_CHECK(targets.scalar_type() == torch::kLong, who, ": targets must be int64, got ",
              targets.scalar_type());
  auto lead = logits.sizes().vec();
  lead.pop_back();
  TORCH_CHECK(targets.sizes().vec() == lead, who, ": targets must be ", c10::IntArrayRef(lead),
              " for logits ", logits.sizes(), ", got ", targets.sizes());
  const int64_t V = logits.size(-1);
  auto t = targets.reshape({-1}).contiguous();
  if (t.numel() > 0 && t.device().is_cpu()) {  // (on a GPU, gather checks; no sync here)
    const int64_t hi = t.max().item<int64_t>();
    TORCH_CHECK(hi < V, who, ": target ", hi, " is outside the vocabulary of ", V, " logits");
  }
  return {logits.reshape({-1, V}).contiguous(), t};
}

TokenLogprobStats fused_stats(const torch::Tensor& z, const torch::Tensor& t, bool entropy) {
  const int64_t N = z.size(0), V = z.size(1);
  TokenLogprobStats st;
  st.logprobs = torch::empty({N}, z.options());
  st.logsumexp = torch::empty({N}, z.options());
  if (entropy) st.entropy = torch::empty({N}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "fused_token_logprobs", [&] {
    auto* ent = entropy ? st.entropy.data_ptr<scalar_t>() : nullptr;
    logprob_rows<scalar_t>(z.data_ptr<scalar_t>(), t.data_ptr<int64_t>(),
                           st.logprobs.data_ptr<scalar_t>(), st.logsumexp.data_ptr<scalar_t>(), ent,
                           N, V);
  });
  return st;
}

torch::Tensor fused_backward(const torch::Tensor& z, const torch::Tensor& t,
                             const TokenLogprobStats& st, const torch::Tensor& glp,
                             const torch::Tensor& gent, torch::Tensor out) {
  const int64_t N = z.size(0), V = z.size(1);
  const bool with_entropy = gent.defined();
  auto g = glp.defined() ? glp.reshape({-1}).to(z.scalar_type()).contiguous() : glp;
  auto gh = with_entropy ? gent.reshape({-1}).to(z.scalar_type()).contiguous() : gent;
  auto ent = with_entropy ? st.entropy.reshape({-1}).contiguous() : st.entropy;
  auto lse = st.logsumexp.reshape({-1}).contiguous();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "fused_token_logprobs_backward", [&] {
    const scalar_t* gp = g.defined() ? g.data_ptr<scalar_t>() : nullptr;
    const scalar_t* e = with_entropy ? ent.data_ptr<scalar_t>() : nullptr;
    const scalar_t* ge = with_entropy ? gh.data_ptr<scalar_t>() : nullptr;
    logprob_rows_backward<scalar_t>(z.data_ptr<scalar_t>(), t.data_ptr<int64_t>(),
                                    lse.data_ptr<scalar_t>(), e, gp, ge, out.data_ptr<scalar_t>(),
                                    N, V);
  });
  return out;
}

class TokenLogprobsFunction : public torch::autograd::Function<TokenLogprobsFunction> {
 public:
  // z [N, V] contiguous float32/float64, t [N] int64 (checked).
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& z,
                               const torch::Tensor& t) {
    auto st = fused_stats(z, t, false);
    ctx->save_for_backward({z, t, st.logsumexp});
    return st.logprobs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    TokenLogprobStats st;
    st.logsumexp = saved[2];
    auto gz = fused_backward(saved[0], saved[1], st, grads[0], torch::Tensor(),
                             torch::empty_like(saved[0]));
    return {gz, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor ConcatWeights::get(const std::vector<torch::Tensor>& weights) {
  bool recording = false;
  for (const auto& w : weights) recording = recording || w.requires_grad();
  if (recording && torch::GradMode::is_enabled()) {
    cached_ = torch::Tensor();
    return torch::cat(weights, 0);
  }
  // A copy made under c10::InferenceMode cannot be saved for backward: outside inference mode
  // (e.g. frozen weights in a forward that autograd records for its input) make a normal one.
  bool same = cached_.defined() && impls_.size() == weights.size() &&
              !(cached_.is_inference() && !c10::InferenceMode::is_enabled());
  for (size_t i = 0; same && i < weights.size(); ++i)
    same = impls_[i] == weights[i].unsafeGetTensorImpl() && versions_[i] == weights[i]._version() &&
           data_[i] == weights[i].data_ptr() && cached_.scalar_type() == weights[i].scalar_type();
  if (!same) {
    torch::NoGradGuard no_grad;
    cached_ = torch::cat(weights, 0);
    impls_.clear();
    versions_.clear();
    data_.clear();
    for (const auto& w : weights) {
      impls_.push_back(w.unsafeGetTensorImpl());
      versions_.push_back(w._version());
      data_.push_back(w.data_ptr());
    }
  }
  return cached_;
}

bool set_fused_kernels(bool enabled) { return g_fused_enabled.exchange(enabled); }

bool has_fused_kernel(const torch::Tensor& t) {
  return g_fused_enabled.load() && t.device().is_cpu() &&
         (t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kDouble);
}

// ---------------------------------------------------------------------------------------------

torch::Tensor reference_rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  const bool wide = x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kDouble;
  auto xf = wide ? x : x.to(torch::kFloat);
  auto inv = torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  auto y = xf * inv;
  if (y.scalar_type() != x.scalar_type()) y = y.to(x.scalar_type());
  return y * weight;
}

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  if (!has_fused_kernel(x) || weight.scalar_type() != x.scalar_type())
    return reference_rms_norm(x, weight, eps);
  return RmsNormFunction::apply(x, weight, eps);
}

torch::Tensor reference_rope(const torch::Tensor& x, const torch::Tensor& cos,
                             const torch::Tensor& sin, int64_t heads, double scale) {
  const int64_t B = x.size(0), Tn = x.size(1), hd = x.size(2) / heads, half = hd / 2;
  auto xh = x.reshape({B, Tn, heads, hd});
  auto x1 = xh.narrow(-1, 0, half), x2 = xh.narrow(-1, half, half);
  auto c = cos.to(x.scalar_type()).unsqueeze(2), s = sin.to(x.scalar_type()).unsqueeze(2);
  auto y = torch::cat({x1 * c - x2 * s, x2 * c + x1 * s}, -1);
  if (scale != 1.0) y = y * scale;
  return y.transpose(1, 2).contiguous();
}

torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                   int64_t heads, double scale) {
  TORCH_CHECK(x.dim() == 3 && heads > 0 && x.size(2) % (2 * heads) == 0,
              "rope: x must be [B, T, heads * head_dim] with an even head_dim, got ", x.sizes(),
              " for ", heads, " heads");
  TORCH_CHECK(cos.dim() == 3 && cos.size(0) == x.size(0) && cos.size(1) == x.size(1) &&
                  cos.size(2) == x.size(2) / heads / 2 && sin.sizes() == cos.sizes(),
              "rope: cos/sin must be [B, T, head_dim / 2], got ", cos.sizes(), " and ",
              sin.sizes());
  if (!has_fused_kernel(x)) return reference_rope(x, cos, sin, heads, scale);
  return RopeFunction::apply(x, cos, sin, heads, scale);
}

namespace {

// norm_rope's arguments: as rope's, and a weight of head_dim elements.
void check_norm_rope(const torch::Tensor& x, const torch::Tensor& weight, int64_t heads) {
  TORCH_CHECK(x.dim() == 3 && heads > 0 && x.size(2) % (2 * heads) == 0,
              "norm_rope: x must be [B, T, heads * head_dim] with an even head_dim, got ",
              x.sizes(), " for ", heads, " heads");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(2) / heads,
              "norm_rope: the norm weight must be [head_dim] = [", x.size(2) / heads, "], got ",
              weight.sizes());
}

}  // namespace

torch::Tensor reference_norm_rope(const torch::Tensor& x, const torch::Tensor& weight, double eps,
                                  const torch::Tensor& cos, const torch::Tensor& sin, int64_t heads,
                                  double scale) {
  check_norm_rope(x, weight, heads);
  const int64_t B = x.size(0), Tn = x.size(1), hd = x.size(2) / heads;
  auto normed = reference_rms_norm(x.reshape({B, Tn, heads, hd}), weight, eps);
  return reference_rope(normed.reshape({B, Tn, heads * hd}), cos, sin, heads, scale);
}

torch::Tensor norm_rope(const torch::Tensor& x, const torch::Tensor& weight, double eps,
                        const torch::Tensor& cos, const torch::Tensor& sin, int64_t heads,
                        double scale) {
  check_norm_rope(x, weight, heads);
  const int64_t B = x.size(0), Tn = x.size(1), hd = x.size(2) / heads;
  if (!has_fused_kernel(x) || weight.scalar_type() != x.scalar_type()) {
    // The two steps, each fused or not by its own rule (bf16, CUDA: the references).
    auto normed = rms_norm(x.reshape({B, Tn, heads, hd}), weight, eps);
    return rope(normed.view({B, Tn, heads * hd}), cos, sin, heads, scale);
  }
  TORCH_CHECK(cos.dim() == 3 && cos.size(0) == B && cos.size(1) == Tn && cos.size(2) == hd / 2 &&
                  sin.sizes() == cos.sizes(),
              "norm_rope: cos/sin must be [B, T, head_dim / 2], got ", cos.sizes(), " and ",
              sin.sizes());
  return NormRopeFunction::apply(x, weight, eps, cos, sin, heads, scale);
}

torch::Tensor reference_swiglu(const torch::Tensor& gate_up) {
  const int64_t F = gate_up.size(-1) / 2;
  return torch::silu(gate_up.narrow(-1, 0, F)) * gate_up.narrow(-1, F, F);
}

torch::Tensor swiglu(const torch::Tensor& gate_up) {
  TORCH_CHECK(gate_up.dim() >= 1 && gate_up.size(-1) % 2 == 0,
              "swiglu: the last dimension must hold gate and up (even size), got ",
              gate_up.sizes());
  if (!has_fused_kernel(gate_up)) return reference_swiglu(gate_up);
  return SwigluFunction::apply(gate_up);
}

}  // namespace rlhf::policy::fused

namespace rlhf::policy::fused {

namespace {

// logits in float32 at least (autocast computes cross_entropy in float32).
torch::Tensor widened(const torch::Tensor& logits) {
  const auto st = logits.scalar_type();
  return st == torch::kFloat || st == torch::kDouble ? logits : logits.to(torch::kFloat);
}

}  // namespace

torch::Tensor reference_token_logprobs(const torch::Tensor& logits, const torch::Tensor& targets) {
  auto logp = torch::log_softmax(widened(logits), -1);
  auto keep = targets >= 0;
  auto lp = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1);
  return lp * keep.to(lp.scalar_type());
}

torch::Tensor token_logprobs(const torch::Tensor& logits, const torch::Tensor& targets) {
  auto z = widened(logits);
  auto [rows, t] = logprob_rows_of(z, targets, "token_logprobs");
  if (!has_fused_kernel(z)) return reference_token_logprobs(logits, targets);
  return TokenLogprobsFunction::apply(rows, t).view(targets.sizes());
}

TokenLogprobStats token_logprob_stats(const torch::Tensor& logits, const torch::Tensor& targets,
                                      bool entropy) {
  torch::NoGradGuard no_grad;
  auto [rows, t] = logprob_rows_of(logits, targets, "token_logprob_stats");
  TokenLogprobStats st;
  if (has_fused_kernel(rows)) {
    st = fused_stats(rows, t, entropy);
  } else {
    auto z = widened(rows);
    st.logsumexp = torch::logsumexp(z, -1);
    auto logp = z - st.logsumexp.unsqueeze(-1);
    st.logprobs =
        logp.gather(-1, t.clamp_min(0).unsqueeze(-1)).squeeze(-1) * (t >= 0).to(z.scalar_type());
    if (entropy) st.entropy = -(logp.exp() * logp).sum(-1);
  }
  const auto sizes = targets.sizes();
  st.logprobs = st.logprobs.view(sizes);
  st.logsumexp = st.logsumexp.view(sizes);
  if (entropy) st.entropy = st.entropy.view(sizes);
  return st;
}

torch::Tensor token_logprobs_backward(const torch::Tensor& logits, const torch::Tensor& targets,
                                      const TokenLogprobStats& stats,
                                      const torch::Tensor& grad_logprobs,
                                      const torch::Tensor& grad_entropy, bool in_place) {
  torch::NoGradGuard no_grad;
  TORCH_CHECK(!grad_entropy.defined() || stats.entropy.defined(),
              "token_logprobs_backward: a gradient for the entropy needs stats.entropy");
  TORCH_CHECK(!in_place || logits.is_contiguous(),
              "token_logprobs_backward: in_place needs contiguous logits");
  auto [rows, t] = logprob_rows_of(logits, targets, "token_logprobs_backward");
  if (has_fused_kernel(rows)) {
    auto out = in_place ? rows : torch::empty_like(rows);
    return fused_backward(rows, t, stats, grad_logprobs, grad_entropy, out).view(logits.sizes());
  }
  auto z = widened(rows);
  auto logp = z - stats.logsumexp.reshape({-1, 1}).to(z.scalar_type());
  auto p = logp.exp();
  auto g = torch::zeros_like(p);
  if (grad_logprobs.defined()) {
    auto glp = grad_logprobs.reshape({-1, 1}).to(z.scalar_type()) *
               (t >= 0).unsqueeze(-1).to(z.scalar_type());
    g = g - p * glp;
    g.scatter_add_(-1, t.clamp_min(0).unsqueeze(-1), glp);
  }
  if (grad_entropy.defined()) {
    auto H = stats.entropy.reshape({-1, 1}).to(z.scalar_type());
    g = g - grad_entropy.reshape({-1, 1}).to(z.scalar_type()) * p * (logp + H);
  }
  g = g.view(logits.sizes());
  if (in_place && g.scalar_type() == logits.scalar_type()) return logits.copy_(g);
  return g;
}

}  // namespace rlhf::policy::fused
