#include "policy/model/lora.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"
#include "common/files.h"
#include "policy/model/safetensors.h"
#include "proto/sft.pb.h"

namespace rlhf::policy {

namespace {

const std::vector<std::string> kTargets = {"q", "k", "v", "o", "gate", "up", "down"};

std::string hf_module(const std::string& target) {
  if (target == "gate" || target == "up" || target == "down") return "mlp." + target + "_proj";
  return "self_attn." + target + "_proj";
}

torch::nn::Linear& projection(DecoderLayerImpl& layer, const std::string& target) {
  if (target == "q") return layer.q_proj;
  if (target == "k") return layer.k_proj;
  if (target == "v") return layer.v_proj;
  if (target == "o") return layer.o_proj;
  if (target == "gate") return layer.gate_proj;
  if (target == "up") return layer.up_proj;
  return layer.down_proj;
}

}  // namespace

void LoraOptions::validate() const {
  if (rank <= 0) throw Error("lora.rank: expected > 0, got " + std::to_string(rank));
  if (alpha < 0) throw Error("lora.alpha: expected >= 0, got " + std::to_string(alpha));
  if (dropout < 0 || dropout >= 1)
    throw Error("lora.dropout: expected a value in [0, 1), got " + std::to_string(dropout));
  if (targets.empty()) throw Error("lora.targets: expected at least one of q,k,v,o,gate,up,down");
  for (const auto& t : targets)
    if (std::find(kTargets.begin(), kTargets.end(), t) == kTargets.end())
      throw Error("lora.targets: unknown projection '" + t + "' (expected q,k,v,o,gate,up,down)");
}

LoraOptions LoraOptions::from_proto(const proto::LoraConfig& p) {
  LoraOptions o;
  if (p.rank() != 0) o.rank = p.rank();
  o.alpha = p.alpha();
  o.dropout = p.dropout();
  if (p.targets_size() > 0) o.targets.assign(p.targets().begin(), p.targets().end());
  return o;
}

LoraAdapters::LoraAdapters(Transformer model, const LoraOptions& options)
    : model_(std::move(model)), options_(options) {
  options_.validate();
  for (auto& p : model_->parameters()) p.set_requires_grad(false);
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < model_->layers->size(); ++i) {
    auto& layer = *model_->layers[i]->as<DecoderLayerImpl>();
    for (const auto& t : kTargets) {  // fixed order, whatever order the options list
      if (std::find(options_.targets.begin(), options_.targets.end(), t) == options_.targets.end())
        continue;
      Slot s;
      s.name = "base_model.model.model.layers." + std::to_string(i) + "." + hf_module(t);
      s.linear = projection(layer, t);
      s.base = s.linear->weight;
      const int64_t out = s.base.size(0), in = s.base.size(1);
      auto opts = s.base.options().dtype(torch::kFloat);  // float32 adapters on any base
      s.a = torch::empty({options_.rank, in}, opts);
      // PEFT: kaiming_uniform_(A, a=sqrt(5)) -> bound = 1 / sqrt(in).
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      s.a.uniform_(-bound, bound);
      s.b = torch::zeros({out, options_.rank}, opts);
      s.a.set_requires_grad(true);
      s.b.set_requires_grad(true);
      slots_.push_back(std::move(s));
    }
  }
  refresh(false);
}

LoraAdapters::~LoraAdapters() { detach_all(); }

void LoraAdapters::detach_all() {
  for (auto& s : slots_) s.linear->weight = s.base;
  slots_.clear();
}

void LoraAdapters::disable() {
  for (auto& s : slots_) s.linear->weight = s.base;
}

void LoraAdapters::refresh(bool training) {
  const float scale = options_.scale();
  const float p = options_.dropout;
  for (auto& s : slots_) {
    torch::Tensor a = s.a;
    if (training && p > 0) {
      auto keep = torch::bernoulli(torch::full({options_.rank, 1}, 1.0 - p, a.options()));
      a = a * keep / (1.0 - p);
    }
    auto delta = torch::matmul(s.b, a) * scale;
    // A bfloat16 base (LoadOptions::matrix_dtype) stays bfloat16: the update is rounded to it.
    s.linear->weight = delta.scalar_type() == s.base.scalar_type()
                           ? s.base + delta
                           : s.base + delta.to(s.base.scalar_type());
  }
}

std::vector<torch::Tensor> LoraAdapters::parameters() const {
  std::vector<torch::Tensor> out;
  for (const auto& s : slots_) {
    out.push_back(s.a);
    out.push_back(s.b);
  }
  return out;
}

std::vector<std::pair<std::string, torch::Tensor>> LoraAdapters::named_parameters() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& s : slots_) {
    out.emplace_back(s.name + ".lora_A.weight", s.a);
    out.emplace_back(s.name + ".lora_B.weight", s.b);
  }
  return out;
}

int64_t LoraAdapters::num_parameters() const {
  int64_t n = 0;
  for (const auto& t : parameters()) n += t.numel();
  return n;
}

void LoraAdapters::save(const std::string& dir) const {
  make_dirs(dir);
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& [name, t] : named_parameters()) tensors[name] = t.detach().to(torch::kCPU);
  write_safetensors(dir + "/adapter_model.safetensors", tensors, {{"format", "pt"}});
  nlohmann::json cfg = {{"peft_type", "LORA"},
                        {"task_type", "CAUSAL_LM"},
                        {"r", options_.rank},
                        {"lora_alpha", options_.alpha > 0 ? options_.alpha : options_.rank},
                        {"lora_dropout", options_.dropout},
                        {"rlhf_dropout_kind", "rank"},
                        {"bias", "none"},
                        {"schema_version", 1}};
  std::vector<std::string> modules;
  for (const auto& t : options_.targets) modules.push_back(t + "_proj");
  cfg["target_modules"] = modules;
  write_file_atomic(dir + "/adapter_config.json", cfg.dump(2) + "\n");
}

LoraOptions LoraAdapters::read_options(const std::string& dir) {
  const std::string path = dir + "/adapter_config.json";
  nlohmann::json cfg;
  try {
    cfg = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": invalid JSON (" + e.what() + ")");
  }
  LoraOptions o;
  try {
    o.rank = cfg.at("r").get<int>();
    o.alpha = cfg.value("lora_alpha", 0.0f);
    o.dropout = cfg.value("lora_dropout", 0.0f);
    o.targets.clear();
    for (const auto& m : cfg.at("target_modules")) {
      std::string name = m.get<std::string>();
      if (name.size() > 5 && name.substr(name.size() - 5) == "_proj") name.resize(name.size() - 5);
      o.targets.push_back(name);
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": expected fields r, lora_alpha, target_modules (" + e.what() + ")");
  }
  try {
    o.validate();
  } catch (const Error&) {
    rethrow_with_context(path);
  }
  return o;
}

void LoraAdapters::load(const std::string& dir) {
  const std::string path = dir + "/adapter_model.safetensors";
  const auto tensors = read_safetensors(path);
  torch::NoGradGuard no_grad;
  for (auto& [name, t] : named_parameters()) {
    auto it = tensors.find(name);
    if (it == tensors.end()) throw Error(path + ": missing tensor " + name);
    if (it->second.sizes() != t.sizes()) {
      std::ostringstream os;
      os << path << ": tensor " << name << " has shape " << it->second.sizes() << ", expected "
         << t.sizes();
      throw Error(os.str());
    }
    t.copy_(it->second);
  }
  refresh(false);
}

void LoraAdapters::merge() {
  {
    torch::NoGradGuard no_grad;
    const float scale = options_.scale();
    for (auto& s : slots_) {
      // A bfloat16 base is widened first: an update below its resolution would round away.
      if (s.base.scalar_type() != s.a.scalar_type()) s.base.set_data(s.base.to(s.a.scalar_type()));
      s.base.add_(torch::matmul(s.b, s.a) * scale);
    }
  }
  detach_all();
}

}  // namespace rlhf::policy
