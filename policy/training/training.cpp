#include "policy/training/training.h"

#include <google/protobuf/message.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>

#include "common/error.h"
#include "common/files.h"
#include "common/manifest.h"
#include "common/text_config.h"
#include "policy/model/safetensors.h"
#include "policy/runtime/distributed.h"
#include "policy/training/optimizer_config.h"

namespace rlhf::policy::training {

namespace fs = std::filesystem;

// ---- where a trainer runs -----------------------------------------------------------------------

void configure_threads(int threads, const dist::Comm& comm) {
  if (threads > 0)
    torch::set_num_threads(threads);
  else if (!comm.alone() && !std::getenv("OMP_NUM_THREADS"))
    torch::set_num_threads(dist::threads_per_rank(comm.env().local_world_size));
}

Placement place_trainer(const std::string& device, const std::string& dtype, int threads,
                        const std::string& what) {
  Placement p;
  p.device = resolve_device(device, what + ": device");
  p.precision = parse_precision(dtype, what + ": dtype");
  p.comm = &dist::world(p.device);
  configure_threads(threads, *p.comm);
  return p;
}

// ---- the same start on every rank ---------------------------------------------------------------

std::string weights_hash(const NamedTensors& tensors) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a offset basis; words are mixed in 8 bytes at a time
  auto mix = [&h](const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      h = (h ^ w) * 0x100000001b3ull;
    }
    for (; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  };
  for (const auto& [name, t] : tensors) {
    mix(name.data(), name.size());
    const std::string shape =
        c10::toString(t.scalar_type()) + std::string(" ") + c10::str(t.sizes());
    mix(shape.data(), shape.size());
    const torch::Tensor host = t.detach().to(torch::kCPU).contiguous();
    mix(host.data_ptr(), static_cast<size_t>(host.numel()) * host.element_size());
  }
  char out[17];
  std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(h));
  return out;
}

void check_same_start(dist::Comm& comm, const std::string& what, const std::string& out_dir,
                      const StartFingerprint& mine, const NamedTensors& weights) {
  if (comm.alone()) return;
  const std::string weights_text = weights.empty() ? "not loaded" : weights_hash(weights);
  const auto all = comm.all_gather_bytes(mine.config + "\n" + std::to_string(mine.step) + "\n" +
                                         mine.data_position + "\n" + weights_text);
  auto fields = [](const std::string& text) {
    std::vector<std::string> f;
    size_t start = 0;
    for (size_t nl; (nl = text.find('\n', start)) != std::string::npos; start = nl + 1)
      f.push_back(text.substr(start, nl - start));
    f.push_back(text.substr(start));
    f.resize(4);
    return f;
  };
  static const char* const kNames[] = {"config fingerprint", "step", "data position",
                                       "weights hash"};
  const auto root = fields(all[0]);
  std::string problems;
  for (size_t r = 1; r < all.size(); ++r) {
    const auto f = fields(all[r]);
    std::string diff;
    for (size_t i = 0; i < 4; ++i)
      if (f[i] != root[i])
        diff += std::string(diff.empty() ? "" : ", ") + kNames[i] + " " + f[i] + " vs " + root[i];
    if (!diff.empty())
      problems += "; rank " + std::to_string(r) + " does not start where rank 0 does: " + diff;
  }
  if (!problems.empty())
    throw Error(what + ":" + problems.substr(1) + " (every rank must see the same output folder, " +
                out_dir + ")");
}

// ---- optimizer ----------------------------------------------------------------------------------

NamedTensors trainable_parameters(torch::nn::Module& model, const LoraAdapters* lora) {
  NamedTensors out;
  for (const auto& p : model.named_parameters())
    if (p.value().requires_grad()) out.emplace_back(p.key(), p.value());
  if (lora)
    for (auto& np : lora->named_parameters()) out.push_back(np);
  return out;
}

std::vector<ParamGroup> param_groups(const NamedTensors& params, double weight_decay,
                                     double embedding_lr_scale) {
  ParamGroup decay{{}, weight_decay, 1.0}, no_decay{{}, 0.0, 1.0};
  ParamGroup embedding{{}, weight_decay, embedding_lr_scale};
  const bool own_embedding_group = embedding_lr_scale != 1.0;
  for (const auto& [name, p] : params) {
    if (own_embedding_group && name.find("embed_tokens") != std::string::npos)
      embedding.params.push_back(p);
    else
      (p.dim() >= 2 ? decay : no_decay).params.push_back(p);
  }
  std::vector<ParamGroup> groups;
  for (ParamGroup* g : {&decay, &no_decay, &embedding})
    if (!g->params.empty()) groups.push_back(std::move(*g));
  return groups;
}

std::unique_ptr<torch::optim::AdamW> make_adamw(const std::vector<ParamGroup>& groups,
                                                const proto::OptimizerConfig& o) {
  if (groups.empty()) throw Error("optimizer: no trainable parameters");
  std::vector<torch::optim::OptimizerParamGroup> torch_groups;
  for (const ParamGroup& g : groups) {
    auto opts = std::make_unique<torch::optim::AdamWOptions>(0.0);
    opts->betas({o.beta1(), o.beta2()}).eps(o.eps()).weight_decay(g.weight_decay);
    torch_groups.emplace_back(g.params, std::move(opts));
  }
  return std::make_unique<torch::optim::AdamW>(torch_groups, torch::optim::AdamWOptions(0.0));
}

LrSchedule make_schedule(const proto::OptimizerConfig& optimizer, int64_t total_steps,
                         OptimizerDefaults trainer) {
  const proto::OptimizerConfig o = applied_settings(optimizer, trainer);
  LrSchedule s;
  if (o.schedule() == "cosine")
    s.shape = LrShape::kCosine;
  else if (o.schedule() == "linear")
    s.shape = LrShape::kLinear;
  else if (o.schedule() == "constant")
    s.shape = LrShape::kConstant;
  else
    throw Error("optimizer.schedule: \"" + o.schedule() +
                "\" is not one of \"cosine\", \"linear\", \"constant\"");
  s.peak_lr = o.lr();
  s.min_lr = o.lr() * o.min_lr_ratio();  // exact for float32 settings (a product of two floats)
  if (trainer == OptimizerDefaults::kSupervised) s.min_lr = static_cast<float>(s.min_lr);
  s.warmup_steps = resolved_warmup_steps(o, total_steps);
  s.total_steps = total_steps;
  return s;
}

Optimizer::Optimizer(const NamedTensors& params, const proto::OptimizerConfig& o,
                     double embedding_lr_scale)
    : grad_clip_(o.grad_clip()) {
  const std::vector<ParamGroup> groups = param_groups(params, o.weight_decay(), embedding_lr_scale);
  adamw_ = make_adamw(groups, o);
  for (const ParamGroup& g : groups) {
    params_.insert(params_.end(), g.params.begin(), g.params.end());
    lr_scale_.push_back(g.lr_scale);
  }
}

void Optimizer::zero_grad() { adamw_->zero_grad(); }

double Optimizer::step(double lr) {
  auto& groups = adamw_->param_groups();
  for (size_t g = 0; g < groups.size(); ++g)
    static_cast<torch::optim::AdamWOptions&>(groups[g].options()).lr(lr * lr_scale_[g]);
  const double cap = grad_clip_ > 0 ? grad_clip_ : std::numeric_limits<double>::infinity();
  const double norm = torch::nn::utils::clip_grad_norm_(params_, cap);
  if (std::isfinite(norm)) adamw_->step();  // a NaN/inf gradient must not reach the weights
  return norm;
}

void Optimizer::save(const std::string& path) {
  try {
    torch::save(*adamw_, path + ".tmp");
  } catch (const c10::Error& e) {
    throw Error(path + ": cannot write the optimizer state (" + e.what_without_backtrace() + ")");
  }
  rename_atomic(path + ".tmp", path);
}

void Optimizer::load(const std::string& path, const torch::Device& device) {
  try {
    torch::load(*adamw_, path, device);
  } catch (const c10::Error& e) {
    throw Error(path + ": cannot read the optimizer state (" + e.what_without_backtrace() + ")");
  }
}

// ---- tensors and RNG
// -----------------------------------------------------------------------------

NamedTensors module_tensors(torch::nn::Module& module) {
  NamedTensors out;
  for (const auto& p : module.named_parameters()) out.emplace_back(p.key(), p.value());
  for (const auto& b : module.named_buffers()) out.emplace_back(b.key(), b.value());
  return out;
}

NamedTensors state_tensors(torch::nn::Module& model, const LoraAdapters* lora) {
  NamedTensors t = module_tensors(model);
  if (lora)
    for (auto& [k, v] : lora->named_parameters()) t.emplace_back("lora." + k, v);
  return t;
}

void save_tensors(const NamedTensors& tensors, const std::string& path) {
  try {
    torch::serialize::OutputArchive ar;
    for (const auto& [name, t] : tensors) ar.write(name, t.detach());
    ar.save_to(path + ".tmp");
  } catch (const c10::Error& e) {
    throw Error(path + ": cannot write tensors (" + e.what_without_backtrace() + ")");
  }
  rename_atomic(path + ".tmp", path);
}

void load_tensors(const NamedTensors& tensors, const std::string& path) {
  torch::serialize::InputArchive ar;
  try {
    ar.load_from(path);
  } catch (const c10::Error& e) {
    throw Error(path + ": cannot read tensors (" + e.what_without_backtrace() + ")");
  }
  torch::NoGradGuard no_grad;
  for (const auto& [name, t] : tensors) {
    torch::Tensor stored;
    try {
      ar.read(name, stored);
    } catch (const c10::Error&) {
      throw Error(path + ": has no tensor '" + name + "'");
    }
    if (stored.sizes() != t.sizes())
      throw Error(path + ": tensor '" + name + "' has shape " + c10::str(stored.sizes()) +
                  ", expected " + c10::str(t.sizes()));
    torch::Tensor dst = t;
    dst.copy_(stored);
  }
}

void save_cpu_rng(const std::string& path) {
  auto gen = at::detail::getDefaultCPUGenerator();
  torch::Tensor state;
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    state = gen.get_state();
  }
  save_tensors({{"cpu_rng", state}}, path);
}

void load_cpu_rng(const std::string& path) {
  auto gen = at::detail::getDefaultCPUGenerator();
  torch::Tensor state;
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    state = gen.get_state().clone();
  }
  load_tensors({{"cpu_rng", state}}, path);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

// ---- the resumable-state folder
// ------------------------------------------------------------------

std::string config_fingerprint(const google::protobuf::Message& config,
                               const std::vector<std::string>& ignored_fields,
                               const std::vector<std::string>& input_files) {
  std::unique_ptr<google::protobuf::Message> c(config.New());
  c->CopyFrom(config);
  const auto* desc = c->GetDescriptor();
  for (const auto& name : ignored_fields) {
    const auto* field = desc->FindFieldByName(name);
    if (!field) throw Error("config_fingerprint: " + desc->name() + " has no field '" + name + "'");
    c->GetReflection()->ClearField(c.get(), field);
  }
  std::string all = to_text_format(*c);
  for (const auto& f : input_files) {
    all += "\n" + f + " ";
    all += file_exists(f) && fs::is_regular_file(f) ? sha256_file(f) : "-";
  }
  return sha256_hex(all);
}

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
  return buf;
}

StateFolder::StateFolder(std::string root, int keep)
    : root_(std::move(root)), keep_(std::max(1, keep)) {}

std::optional<std::string> StateFolder::latest() const {
  const std::string pointer = root_ + "/latest";
  if (!file_exists(pointer)) return std::nullopt;
  std::string name = read_file(pointer);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  const std::string dir = root_ + "/" + name;
  if (name.empty() || !file_exists(dir + "/fingerprint"))
    throw Error(pointer + ": names '" + name + "', which is not a complete checkpoint (delete " +
                root_ + " to start afresh)");
  return dir;
}

std::optional<std::string> StateFolder::resume_dir(const std::string& fingerprint) const {
  auto dir = latest();
  if (!dir) return std::nullopt;
  std::string saved = read_file(*dir + "/fingerprint");
  while (!saved.empty() && saved.back() == '\n') saved.pop_back();
  if (saved != fingerprint)
    throw Error(*dir +
                ": written by a run with a different config or different input files "
                "(fingerprint " +
                saved.substr(0, 12) + ", this run " + fingerprint.substr(0, 12) +
                "); to start afresh delete " + root_ + " or choose another output folder");
  return dir;
}

std::string StateFolder::save(const std::string& name, const std::string& fingerprint,
                              const std::function<void(const std::string& dir)>& write) {
  make_dirs(root_);
  const std::string tmp = root_ + "/.tmp-" + name;
  const std::string dir = root_ + "/" + name;
  fs::remove_all(tmp);
  make_dirs(tmp);
  write(tmp);
  write_file_atomic(tmp + "/fingerprint", fingerprint + "\n");
  fs::remove_all(dir);
  rename_atomic(tmp, dir);
  write_file_atomic(root_ + "/latest", name + "\n");  // the switch to the new checkpoint
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(root_)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n[0] != '.' && n <= name) names.push_back(n);
  }
  std::sort(names.begin(), names.end());
  for (size_t i = 0; i + keep_ < names.size(); ++i) fs::remove_all(root_ + "/" + names[i]);
  return dir;
}

// ---- model initialisation
// ------------------------------------------------------------------------

namespace {

ModelConfig scratch_config(const ModelSource& s, const Tokenizer& tok) {
  const proto::ModelConfig& p = s.scratch;
  ModelConfig m;
  if (p.dim()) m.dim = p.dim();
  if (p.n_layers()) m.n_layers = p.n_layers();
  if (p.n_heads()) m.n_heads = p.n_heads();
  m.n_kv_heads = p.n_kv_heads() ? p.n_kv_heads() : m.n_heads;
  if (p.hidden_dim()) m.hidden_dim = p.hidden_dim();
  if (p.max_seq_len()) m.max_seq_len = p.max_seq_len();
  if (p.norm_eps() > 0) m.norm_eps = p.norm_eps();
  if (p.rope_theta() > 0) m.rope_theta = p.rope_theta();
  m.tie_embeddings = p.tie_embeddings();
  m.vocab_size = p.vocab_size() ? p.vocab_size() : tok.vocab_size();
  m.bos_id = tok.bos_id();
  m.eos_id = tok.eos_id();
  m.pad_id = tok.pad_id() >= 0 ? tok.pad_id() : 0;
  m.max_seq_len = std::max<int64_t>(m.max_seq_len, s.seq_len);
  try {
    m.validate();
  } catch (const Error&) {
    rethrow_with_context(s.what + ": field 'model'");
  }
  return m;
}

Transformer load_initial(const ModelSource& s, const Tokenizer& tok,
                         std::vector<std::string>* files) {
  if (auto m = read_manifest(s.init_from); m && !m->complete())
    throw Error(s.init_from + ": stage '" + m->stage() + "' is not finished");
  LoadedModel loaded = load_checkpoint(s.init_from, s.load);
  const auto& sha = loaded.info.tokenizer_sha256;
  if (!sha.empty() && sha != tok.sha256())
    throw Error(s.init_from + ": trained with tokenizer " + sha.substr(0, 12) + " but " +
                tok.path() + " is " + tok.sha256().substr(0, 12));
  const ModelConfig& mc = loaded.model->config();
  if (mc.vocab_size < tok.vocab_size())
    throw Error(s.init_from + ": vocab_size " + std::to_string(mc.vocab_size) +
                " is smaller than the tokenizer's " + std::to_string(tok.vocab_size()) + " (" +
                tok.path() + ")");
  if (s.fail_on_long_rows && s.seq_len > mc.max_seq_len)
    throw Error(s.what + ": rows of " + std::to_string(s.seq_len) + " tokens exceed " +
                s.init_from + "'s max_seq_len " + std::to_string(mc.max_seq_len));
  // The weights (model.safetensors, or a Hugging Face index and its shards), then the metadata.
  for (const auto& f : SafetensorsWeights::files_in(s.init_from, "model.safetensors"))
    files->push_back(f);
  for (const char* f : {"/checkpoint.pb", "/config.json"})
    if (file_exists(s.init_from + f)) files->push_back(s.init_from + f);
  return loaded.model;
}

}  // namespace

InitialModel init_model(const ModelSource& s) {
  InitialModel out;
  std::string tokenizer = s.tokenizer;
  if (tokenizer.empty() && !s.init_from.empty()) tokenizer = Tokenizer::file_in_folder(s.init_from);
  if (tokenizer.empty())
    throw Error(
        s.what + ": field 'tokenizer': no tokenizer (.model, tokenizer.json or folder) given" +
        (s.init_from.empty()
             ? std::string()
             : " (and " + s.init_from + " holds neither tokenizer.model nor tokenizer.json)"));
  out.tokenizer = Tokenizer::load(tokenizer);
  out.tokenizer_path = out.tokenizer.path();
  for (const std::string& f : out.tokenizer.files()) out.files.push_back(f);
  try {
    if (s.init_from.empty()) {
      out.model = Transformer(scratch_config(s, out.tokenizer));
      init_weights(out.model);
    } else {
      out.model = load_initial(s, out.tokenizer, &out.files);
    }
  } catch (...) {
    rethrow_with_context(s.init_from.empty() ? s.what : "initialising from " + s.init_from);
  }
  if (s.value_head && !out.model->config().value_head) out.model->add_value_head();
  return out;
}

}  // namespace rlhf::policy::training
