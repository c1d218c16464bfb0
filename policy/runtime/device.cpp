#include "policy/runtime/device.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <cctype>
#include <cstdlib>

#include "common/error.h"
#include "policy/runtime/distributed.h"

// libtorch 2.4 replaced the per-device autocast functions (set_enabled / set_cpu_enabled,
// set_autocast_gpu_dtype / set_autocast_cpu_dtype) by ones taking the device type; the old names
// are deprecated there.
#if defined(TORCH_VERSION_MAJOR) && \
    (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4))
#define RLHF_AUTOCAST_BY_DEVICE_TYPE 1
#endif

namespace rlhf::policy {

namespace {

bool all_digits(const std::string& s) {
  if (s.empty() || s.size() > 4) return false;
  for (char c : s)
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

bool autocast_enabled(c10::DeviceType t) {
#ifdef RLHF_AUTOCAST_BY_DEVICE_TYPE
  return at::autocast::is_autocast_enabled(t);
#else
  return t == torch::kCUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
#endif
}

void set_autocast_enabled(c10::DeviceType t, bool on) {
#ifdef RLHF_AUTOCAST_BY_DEVICE_TYPE
  at::autocast::set_autocast_enabled(t, on);
#else
  if (t == torch::kCUDA)
    at::autocast::set_enabled(on);
  else
    at::autocast::set_cpu_enabled(on);
#endif
}

torch::ScalarType autocast_dtype(c10::DeviceType t) {
#ifdef RLHF_AUTOCAST_BY_DEVICE_TYPE
  return at::autocast::get_autocast_dtype(t);
#else
  return t == torch::kCUDA ? at::autocast::get_autocast_gpu_dtype()
                           : at::autocast::get_autocast_cpu_dtype();
#endif
}

void set_autocast_dtype(c10::DeviceType t, torch::ScalarType dtype) {
#ifdef RLHF_AUTOCAST_BY_DEVICE_TYPE
  at::autocast::set_autocast_dtype(t, dtype);
#else
  if (t == torch::kCUDA)
    at::autocast::set_autocast_gpu_dtype(dtype);
  else
    at::autocast::set_autocast_cpu_dtype(dtype);
#endif
}

}  // namespace

std::string device_syntax_error(const std::string& value) {
  if (value == "cpu" || value == "cuda") return "";
  if (value.rfind("cuda:", 0) == 0 && all_digits(value.substr(5))) return "";
  return "expected \"cpu\", \"cuda\" or \"cuda:N\"";
}

std::string dtype_syntax_error(const std::string& value) {
  if (value == "fp32" || value == "bf16") return "";
  return "expected \"fp32\" or \"bf16\"";
}

Precision parse_precision(const std::string& value, const std::string& what) {
  if (value == "fp32") return Precision::kFp32;
  if (value == "bf16") return Precision::kBf16;
  throw Error(what + " = \"" + value + "\": " + dtype_syntax_error(value));
}

const char* precision_name(Precision p) { return p == Precision::kBf16 ? "bf16" : "fp32"; }

bool libtorch_has_cuda() { return at::hasCUDA(); }

torch::Device resolve_device(const std::string& value, const std::string& what) {
  const std::string where = what + " = \"" + value + "\": ";
  if (const std::string bad = device_syntax_error(value); !bad.empty()) throw Error(where + bad);
  if (value == "cpu") return torch::Device(torch::kCPU);
  if (!libtorch_has_cuda())
    throw Error(where + "this libtorch (" + TORCH_VERSION +
                ") was built without CUDA; use device \"cpu\" or build against a CUDA libtorch "
                "(README: GPU)");
  const int64_t count = static_cast<int64_t>(torch::cuda::device_count());
  if (count == 0) throw Error(where + "no CUDA device is visible (CUDA_VISIBLE_DEVICES?)");
  int64_t index = 0;
  if (value == "cuda")
    index = dist::parse_world_env([](const char* n) { return std::getenv(n); }).local_rank;
  else
    index = std::stoll(value.substr(5));
  if (index >= count)
    throw Error(where + "GPU " + std::to_string(index) + (value == "cuda" ? " (LOCAL_RANK)" : "") +
                " does not exist: " + std::to_string(count) + " CUDA device(s) visible");
  // TF32 for float32 matmuls and convolutions (Ampere and later), as torch.backends.*.allow_tf32.
  at::globalContext().setAllowTF32CuBLAS(true);
  at::globalContext().setAllowTF32CuDNN(true);
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
}

torch::ScalarType activation_dtype(Precision p) {
  return p == Precision::kBf16 ? torch::kBFloat16 : torch::kFloat;
}

AutocastScope::AutocastScope(const torch::Device& device, Precision precision) {
  if (precision != Precision::kBf16) return;
  type_ = device.type();
  was_enabled_ = autocast_enabled(type_);
  previous_dtype_ = autocast_dtype(type_);
  set_autocast_dtype(type_, torch::kBFloat16);
  set_autocast_enabled(type_, true);
  at::autocast::increment_nesting();
  active_ = true;
}

AutocastScope::~AutocastScope() {
  if (!active_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  set_autocast_enabled(type_, was_enabled_);
  set_autocast_dtype(type_, previous_dtype_);
}

}  // namespace rlhf::policy
