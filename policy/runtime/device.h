// Where the trainers, generation and the bench compute, and at which precision.
//
// Every stage config and command takes the same two options:
//   device: "cpu" | "cuda" | "cuda:N"   ("cuda" = cuda:LOCAL_RANK under data parallelism, else 0)
//   dtype:  "fp32" | "bf16"
// bf16 is mixed precision: weights, gradients and optimizer state stay float32 (the master copy);
// forward passes (and so their backward) run under autocast to bfloat16, and generation keeps its
// KV cache in bfloat16. Losses, log-probabilities, values and scores come out as float32. On CUDA,
// float32 matmuls may use TF32 (resolve_device turns it on).
//
// bf16 works on CPU too (libtorch >= 1.10 has CPU autocast); it is correct but slow on CPUs
// without native bfloat16 instructions (AVX-512 BF16 / AMX), so it is meant for GPUs and tests.
//
// Errors: rlhf::Error naming the option and the value (parse_precision, resolve_device).
// Thread safety: the functions may be called from any thread; resolve_device changes process-wide
// CUDA matmul settings (TF32). An AutocastScope acts on its own thread only.
#pragma once

#include <torch/torch.h>

#include <string>

namespace rlhf::policy {

enum class Precision { kFp32, kBf16 };

// Syntax checks for config validation (no device is touched): "" when `value` is acceptable,
// else what was expected, for ConfigErrors::fail.
std::string device_syntax_error(const std::string& value);  // cpu | cuda | cuda:N
std::string dtype_syntax_error(const std::string& value);   // fp32 | bf16

// "fp32" -> kFp32, "bf16" -> kBf16; throws rlhf::Error "<what> = \"x\": expected ..." otherwise.
Precision parse_precision(const std::string& value, const std::string& what = "dtype");
const char* precision_name(Precision p);

// The device for `value` on this machine. "cuda" without an index means cuda:LOCAL_RANK (the
// data-parallel rank's GPU on this node; torchrun's LOCAL_RANK from the environment, 0 when
// unset). Throws rlhf::Error naming `what` and the value when the syntax is wrong, when this
// libtorch was built without CUDA, when no GPU is visible or when the index is out of range.
// On CUDA it also allows TF32 for float32 matmuls and cuDNN (process-wide).
torch::Device resolve_device(const std::string& value, const std::string& what = "device");

// Whether this libtorch has CUDA support compiled in (not whether a GPU is present).
bool libtorch_has_cuda();

// The dtype of activations kept between steps (the KV cache): bfloat16 for kBf16, else float32.
torch::ScalarType activation_dtype(Precision p);

// Autocast to bfloat16 for `device`'s type while alive when `precision` is kBf16; no-op for
// kFp32. Restores the previous autocast state on destruction and clears autocast's cast cache
// when the outermost scope ends. Thread-local (autocast state is per thread); not copyable.
// Put it around forward passes and losses, not around backward() or optimizer steps.
class AutocastScope {
 public:
  AutocastScope(const torch::Device& device, Precision precision);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool active_ = false;
  c10::DeviceType type_ = c10::DeviceType::CPU;
  bool was_enabled_ = false;
  c10::ScalarType previous_dtype_ = c10::ScalarType::Float;
};

}  // namespace rlhf::policy
