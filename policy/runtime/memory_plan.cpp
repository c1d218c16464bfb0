#include "policy/runtime/memory_plan.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "common/error.h"

namespace rlhf::policy {

namespace {

std::string mib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

std::string millions(int64_t n, const char* unit) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.1fM %s", static_cast<double>(n) / 1e6, unit);
  return buf;
}

// (in, out) of a projection target.
std::pair<int64_t, int64_t> target_shape(const ModelShape& s, const std::string& t) {
  const int64_t q = s.heads * s.head_dim, kv = s.kv_heads * s.head_dim;
  if (t == "q") return {s.dim, q};
  if (t == "k" || t == "v") return {s.dim, kv};
  if (t == "o") return {q, s.dim};
  if (t == "gate" || t == "up") return {s.dim, s.hidden};
  if (t == "down") return {s.hidden, s.dim};
  throw Error("memory plan: unknown LoRA target \"" + t +
              "\" (expected q, k, v, o, gate, up or down)");
}

int64_t cuda_free_bytes(const std::string& device) {
  using GetInfo = int (*)(size_t*, size_t*);
  using SetDevice = int (*)(int);
  void* h = RTLD_DEFAULT;
  auto get = reinterpret_cast<GetInfo>(dlsym(h, "cudaMemGetInfo"));
  for (const char* lib : {"libcudart.so", "libcudart.so.12", "libcudart.so.11.0"}) {
    if (get) break;
    if ((h = dlopen(lib, RTLD_NOW | RTLD_LOCAL)))
      get = reinterpret_cast<GetInfo>(dlsym(h, "cudaMemGetInfo"));
  }
  if (!get) return -1;
  auto set = reinterpret_cast<SetDevice>(dlsym(h, "cudaSetDevice"));
  const auto colon = device.find(':');
  if (set && colon != std::string::npos) set(std::atoi(device.c_str() + colon + 1));
  size_t free_b = 0, total_b = 0;
  return get(&free_b, &total_b) == 0 ? static_cast<int64_t>(free_b) : -1;
}

}  // namespace

void ModelShape::validate(const std::string& what) const {
  for (auto [name, v] : {std::pair{"vocab", vocab},
                         {"dim", dim},
                         {"layers", layers},
                         {"heads", heads},
                         {"kv_heads", kv_heads},
                         {"head_dim", head_dim},
                         {"hidden", hidden}})
    if (v <= 0)
      throw Error(what + ": model shape field '" + name + "' = " + std::to_string(v) +
                  ": expected > 0");
}

int64_t ModelShape::matrix_params() const {
  const int64_t q = heads * head_dim, kv = kv_heads * head_dim;
  return layers * (dim * q + 2 * dim * kv + q * dim + 3 * dim * hidden);
}

int64_t ModelShape::fused_params() const {
  const int64_t q = heads * head_dim, kv = kv_heads * head_dim;
  return layers * (dim * (q + 2 * kv) + 2 * dim * hidden);
}

int64_t ModelShape::other_params() const {
  const int64_t q = heads * head_dim, kv = kv_heads * head_dim;
  int64_t per_layer = 2 * dim;  // the two RMSNorm weights
  if (qkv_bias) per_layer += q + 2 * kv;
  if (o_bias) per_layer += dim;
  if (mlp_bias) per_layer += 2 * hidden + dim;
  if (qk_norm) per_layer += 2 * head_dim;
  int64_t n = vocab * dim + layers * per_layer + dim;  // embeddings, layers, final norm
  if (!tied) n += vocab * dim;
  if (value_head) n += dim + 1;
  return n;
}

int64_t ModelShape::lora_params(int64_t rank, const std::vector<std::string>& targets) const {
  int64_t n = 0;
  for (const auto& t : targets) {
    auto [in, out] = target_shape(*this, t);
    n += rank * (in + out);
  }
  return layers * n;
}

int64_t MemoryPlan::total() const {
  int64_t t = 0;
  for (const auto& r : rows) t += r.bytes;
  return t;
}

void MemoryPlan::add(const std::string& component, const std::string& part, int64_t bytes,
                     const std::string& note) {
  rows.push_back({component, part, bytes, note});
}

std::string MemoryPlan::table() const {
  std::ostringstream os;
  char line[256];
  std::snprintf(line, sizeof line, "memory plan: %s on %s, dtype %s\n", stage.c_str(),
                device.c_str(), dtype.c_str());
  os << line;
  std::snprintf(line, sizeof line, "%-14s %-12s %12s  %s\n", "component", "part", "MiB", "counted");
  os << line;
  for (const auto& r : rows) {
    std::snprintf(line, sizeof line, "%-14s %-12s %12s  %s\n", r.component.c_str(), r.part.c_str(),
                  mib(r.bytes).c_str(), r.note.c_str());
    os << line;
  }
  std::snprintf(line, sizeof line, "%-14s %-12s %12s\n", "total", "", mib(total()).c_str());
  os << line;
  return os.str();
}

void add_model(MemoryPlan& plan, const ModelPart& p) {
  const ModelShape& s = p.shape;
  if (p.shared_base) {
    plan.add(p.name, "weights", 0, "shares the " + p.shared_with + "'s frozen base");
  } else {
    const int64_t matrices = s.matrix_params() + s.lm_head_params(), emb = s.embedding_params();
    const int64_t rest = s.other_params() - s.lm_head_params() - emb;
    const int64_t w = matrices * p.matrix_bytes + emb * p.embedding_bytes + rest * 4;
    plan.add(p.name, "weights", w,
             millions(matrices, p.matrix_bytes == 2 ? "matrix params bf16" : "matrix params fp32") +
                 " + " +
                 millions(emb, p.embedding_bytes == 2 ? "embedding bf16" : "embedding fp32") +
                 " + " + millions(rest, "other fp32"));
    plan.add(p.name, "fused cache", s.fused_params() * p.matrix_bytes,
             millions(s.fused_params(), "q/k/v + gate/up params"));
  }
  if (p.trainable > 0) {
    plan.add(p.name, "gradients", p.trainable * 4, millions(p.trainable, "trainable fp32"));
    plan.add(p.name, "optimizer", p.trainable * 8, "AdamW: 2 fp32 moments");
  }
}

int64_t kv_cache_bytes(const ModelShape& s, int64_t batch, int64_t sequence, bool bf16) {
  return 2 * s.layers * batch * s.kv_heads * s.head_dim * sequence * (bf16 ? 2 : 4);
}

int64_t activation_bytes(const ModelShape& s, int64_t minibatch, int64_t sequence, bool logits,
                         bool bf16) {
  const int64_t tokens = minibatch * sequence;
  const int64_t per_layer = (4 * s.dim + 2 * s.hidden) * (bf16 ? 2 : 4) + 4 * s.heads * sequence;
  return tokens * (s.layers * per_layer + (logits ? 6 * s.vocab : 0));
}

int64_t available_memory(const std::string& device) {
  if (device.rfind("cuda", 0) == 0) return cuda_free_bytes(device);
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return -1;
}

void check_plan_fits(const MemoryPlan& plan, int64_t available) {
  if (available < 0 || plan.total() <= available) return;
  throw Error(plan.stage + ": the memory plan needs " + mib(plan.total()) + " MiB on " +
              plan.device + ", " + mib(available) +
              " MiB are available (run with --plan to see it; use LoRA, dtype bf16, a smaller "
              "batch or another device)\n" +
              plan.table());
}

}  // namespace rlhf::policy
