#include "policy/sft_trainer.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <random>

#include "common/error.h"
#include "common/files.h"
#include "common/manifest.h"
#include "common/metrics.h"
#include "common/progress.h"
#include "common/text_config.h"
#include "policy/checkpoint.h"
#include "policy/lora.h"
#include "policy/lr_schedule.h"
#include "policy/model.h"
#include "policy/prompt_format.h"
#include "policy/tokenizer.h"

namespace rlhf::policy {

namespace fs = std::filesystem;

// ---- data --------------------------------------------------------------------------------------

namespace {

// One tokenised example: ids and, per token, whether it is a training target.
struct Example {
  std::vector<int64_t> ids;
  std::vector<uint8_t> target;
};

std::vector<Example> read_examples(const std::string& path, const std::string& format,
                                   const Tokenizer& tok) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot open data file");
  std::vector<Example> out;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    Example ex;
    if (format == "jsonl") {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        throw Error(path + ":" + std::to_string(line_no) + ": invalid JSON (" + e.what() + ")");
      }
      if (!j.is_object() || !j.contains("prompt") || !j.contains("response") ||
          !j["prompt"].is_string() || !j["response"].is_string())
        throw Error(path + ":" + std::to_string(line_no) +
                    ": expected an object with string fields \"prompt\" and \"response\"");
      auto p = encode_prompt(tok, j["prompt"].get<std::string>());
      auto r = encode_response(tok, j["response"].get<std::string>());
      ex.ids = p;
      ex.ids.insert(ex.ids.end(), r.begin(), r.end());
      ex.target.assign(p.size(), 0);
      ex.target.resize(ex.ids.size(), 1);
    } else {
      if (tok.bos_id() >= 0) ex.ids.push_back(tok.bos_id());
      for (int id : tok.encode(line)) ex.ids.push_back(id);
      if (tok.eos_id() >= 0) ex.ids.push_back(tok.eos_id());
      ex.target.assign(ex.ids.size(), 1);
      ex.target[0] = 0;
    }
    if (ex.ids.size() >= 2) out.push_back(std::move(ex));
  }
  if (out.empty())
    throw Error(path + ": no examples (the file is empty or has no usable lines; expected " +
                (format == "jsonl" ? std::string("JSON lines {\"prompt\", \"response\"}")
                                   : std::string("one text per line")) +
                ")");
  return out;
}

// A training row: up to seq_len + 1 tokens; inputs are ids[:-1], targets ids[1:] where target[1:].
using Row = Example;

std::vector<Row> make_rows(const std::vector<Example>& examples, int64_t seq_len, bool packed) {
  std::vector<Row> rows;
  const size_t width = static_cast<size_t>(seq_len) + 1;
  if (packed) {
    Row cur;
    for (const auto& ex : examples) {
      for (size_t i = 0; i < ex.ids.size(); ++i) {
        cur.ids.push_back(ex.ids[i]);
        cur.target.push_back(ex.target[i]);
        if (cur.ids.size() == width) {
          rows.push_back(std::move(cur));
          cur = Row();
        }
      }
    }
    if (cur.ids.size() >= 2) rows.push_back(std::move(cur));
  } else {
    for (const auto& ex : examples) {
      Row r = ex;
      if (r.ids.size() > width) {
        r.ids.resize(width);
        r.target.resize(width);
      }
      rows.push_back(std::move(r));
    }
  }
  // Rows without any target contribute nothing (e.g. a prompt longer than seq_len).
  rows.erase(std::remove_if(rows.begin(), rows.end(),
                            [](const Row& r) {
                              return std::none_of(r.target.begin() + 1, r.target.end(),
                                                  [](uint8_t t) { return t != 0; });
                            }),
             rows.end());
  return rows;
}

struct Batch {
  torch::Tensor inputs;   // [B, T] int64
  torch::Tensor mask;     // [B, T] int64 (1 real) or undefined when all real
  torch::Tensor targets;  // [B, T] int64, -100 = ignored
  int64_t n_targets = 0;
  int64_t n_tokens = 0;   // real input tokens
};

Batch make_batch(const std::vector<const Row*>& rows, int64_t pad_id, const torch::Device& dev) {
  int64_t T = 0;
  for (const Row* r : rows) T = std::max<int64_t>(T, static_cast<int64_t>(r->ids.size()) - 1);
  const int64_t B = static_cast<int64_t>(rows.size());
  auto inputs = torch::full({B, T}, pad_id, torch::kInt64);
  auto mask = torch::zeros({B, T}, torch::kInt64);
  auto targets = torch::full({B, T}, -100, torch::kInt64);
  auto in_a = inputs.accessor<int64_t, 2>();
  auto m_a = mask.accessor<int64_t, 2>();
  auto t_a = targets.accessor<int64_t, 2>();
  Batch b;
  bool all_real = true;
  for (int64_t i = 0; i < B; ++i) {
    const Row& r = *rows[i];
    const int64_t n = static_cast<int64_t>(r.ids.size()) - 1;
    if (n < T) all_real = false;
    for (int64_t t = 0; t < n; ++t) {
      in_a[i][t] = r.ids[t];
      m_a[i][t] = 1;
      if (r.target[t + 1]) {
        t_a[i][t] = r.ids[t + 1];
        ++b.n_targets;
      }
    }
    b.n_tokens += n;
  }
  b.inputs = inputs.to(dev);
  b.targets = targets.to(dev);
  if (!all_real) b.mask = mask.to(dev);
  return b;
}

// Sum of token cross-entropies of a batch (graph kept when grad mode is on).
torch::Tensor batch_loss_sum(Transformer& model, const Batch& b) {
  auto hidden = model->hidden_states(b.inputs, b.mask);
  auto logits = model->logits_from_hidden(hidden);
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(-1)}), b.targets.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
}

// Row order of one data pass: a permutation seeded by (seed, epoch).
std::vector<size_t> epoch_order(size_t n, uint64_t seed, int64_t epoch) {
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(epoch) + 1);
  for (size_t i = n; i > 1; --i) {  // Fisher-Yates with our own draws: same on every libstdc++
    size_t j = static_cast<size_t>(rng() % i);
    std::swap(order[i - 1], order[j]);
  }
  return order;
}

// ---- resumable state ---------------------------------------------------------------------------

std::string config_identity(proto::SftConfig c) {
  c.clear_stop_after();
  c.clear_out_dir();
  c.clear_threads();
  return sha256_hex(to_text_format(c));
}

std::string step_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
  return buf;
}

torch::Tensor cpu_rng_state() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_cpu_rng_state(const torch::Tensor& state) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

void save_state(const std::string& out_dir, Transformer& model, torch::optim::Optimizer& opt,
                const std::vector<std::pair<std::string, torch::Tensor>>& adapters,
                const proto::SftTrainState& st) {
  const std::string root = out_dir + "/state";
  make_dirs(root);
  const std::string name = step_dir_name(st.step());
  const std::string tmp = root + "/" + name + ".tmp";
  fs::remove_all(tmp);
  make_dirs(tmp);
  {
    torch::serialize::OutputArchive ar;
    for (const auto& p : model->named_parameters()) ar.write(p.key(), p.value());
    for (const auto& b : model->named_buffers()) ar.write(b.key(), b.value(), /*is_buffer=*/true);
    for (const auto& [k, t] : adapters) ar.write("lora." + k, t);
    ar.save_to(tmp + "/model.pt");
  }
  torch::save(opt, tmp + "/optimizer.pt");
  torch::save(cpu_rng_state(), tmp + "/rng.pt");
  write_file_atomic(tmp + "/train_state.pb", st.SerializeAsString());
  const std::string final_dir = root + "/" + name;
  fs::remove_all(final_dir);
  rename_atomic(tmp, final_dir);
  write_file_atomic(root + "/LATEST", name + "\n");
  // Keep only the newest state.
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory() && e.path().filename().string() != name)
      fs::remove_all(e.path());
}

std::optional<std::string> latest_state(const std::string& out_dir) {
  const std::string latest = out_dir + "/state/LATEST";
  if (!file_exists(latest)) return std::nullopt;
  std::string name = read_file(latest);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  const std::string dir = out_dir + "/state/" + name;
  if (!file_exists(dir + "/train_state.pb"))
    throw Error(latest + ": names " + dir + ", which has no train_state.pb (delete the state folder)");
  return dir;
}

void load_state(const std::string& dir, Transformer& model, torch::optim::Optimizer& opt,
                std::vector<std::pair<std::string, torch::Tensor>>& adapters,
                proto::SftTrainState* st) {
  try {
    torch::serialize::InputArchive ar;
    ar.load_from(dir + "/model.pt");
    torch::NoGradGuard no_grad;
    for (auto& p : model->named_parameters()) {
      torch::Tensor t = p.value();
      ar.read(p.key(), t);
    }
    for (auto& b : model->named_buffers()) {
      torch::Tensor t = b.value();
      ar.read(b.key(), t, /*is_buffer=*/true);
    }
    for (auto& [k, t] : adapters) ar.read("lora." + k, t);
    torch::load(opt, dir + "/optimizer.pt");
    torch::Tensor rng;
    torch::load(rng, dir + "/rng.pt");
    set_cpu_rng_state(rng);
  } catch (const c10::Error& e) {
    throw Error(dir + ": cannot read the saved state (" + e.what_without_backtrace() + ")");
  }
  if (!st->ParseFromString(read_file(dir + "/train_state.pb")))
    throw Error(dir + "/train_state.pb: not a SftTrainState message");
}

// ---- model set-up ------------------------------------------------------------------------------

ModelConfig scratch_config(const proto::SftConfig& c, const Tokenizer& tok) {
  ModelConfig m;
  const auto& p = c.model();
  if (p.dim()) m.dim = p.dim();
  if (p.n_layers()) m.n_layers = p.n_layers();
  if (p.n_heads()) m.n_heads = p.n_heads();
  m.n_kv_heads = p.n_kv_heads() ? p.n_kv_heads() : m.n_heads;
  if (p.hidden_dim()) m.hidden_dim = p.hidden_dim();
  if (p.max_seq_len()) m.max_seq_len = p.max_seq_len();
  if (p.norm_eps() != 0) m.norm_eps = p.norm_eps();
  if (p.rope_theta() != 0) m.rope_theta = p.rope_theta();
  m.tie_embeddings = p.tie_embeddings();
  m.vocab_size = tok.vocab_size();
  m.bos_id = tok.bos_id();
  m.eos_id = tok.eos_id();
  m.pad_id = tok.pad_id() >= 0 ? tok.pad_id() : 0;
  if (c.seq_len() > m.max_seq_len) m.max_seq_len = c.seq_len();
  try {
    m.validate();
  } catch (const Error&) {
    rethrow_with_context("model");
  }
  return m;
}

double evaluate(Transformer& model, LoraAdapters* lora, const std::vector<Row>& rows,
                int batch_size, int max_batches, int64_t pad_id, const torch::Device& dev) {
  if (rows.empty()) return std::nan("");
  torch::NoGradGuard no_grad;
  model->eval();
  if (lora) lora->refresh(false);
  double sum = 0.0;
  int64_t n = 0;
  int batches = 0;
  for (size_t i = 0; i < rows.size(); i += batch_size) {
    if (max_batches > 0 && batches >= max_batches) break;
    std::vector<const Row*> rs;
    for (size_t j = i; j < std::min(rows.size(), i + batch_size); ++j) rs.push_back(&rows[j]);
    Batch b = make_batch(rs, pad_id, dev);
    sum += batch_loss_sum(model, b).item<double>();
    n += b.n_targets;
    ++batches;
  }
  model->train();
  return n > 0 ? sum / static_cast<double>(n) : std::nan("");
}

}  // namespace

// ---- training ----------------------------------------------------------------------------------

SftResult train_sft(const proto::SftConfig& config_in) {
  const auto t_start = std::chrono::steady_clock::now();
  proto::SftConfig cfg = config_in;
  cfg = resolved_sft_config(cfg);
  validate_sft_config(cfg, "sft config");
  if (cfg.out_dir().empty()) throw Error("sft config: field 'out_dir': no output folder given");
  if (cfg.train_file().empty()) throw Error("sft config: field 'train_file': no training data given");
  if (cfg.threads() > 0) torch::set_num_threads(cfg.threads());
  const torch::Device dev(cfg.device());
  const std::string out = cfg.out_dir();
  make_dirs(out);

  SftResult res;
  res.out_dir = out;
  res.model_dir = out + "/model";
  const std::string identity = config_identity(cfg);

  // A finished run of this same config: nothing to do.
  if (auto m = read_manifest(out); m && m->complete()) {
    proto::SftConfig done;
    if (google::protobuf::TextFormat::ParseFromString(m->resolved_config(), &done) &&
        config_identity(done) == identity) {
      res.already_complete = true;
      res.steps = static_cast<int64_t>(m->metrics().count("steps") ? m->metrics().at("steps") : 0);
      if (m->metrics().count("final_eval_loss")) res.final_eval_loss = m->metrics().at("final_eval_loss");
      if (m->metrics().count("first_eval_loss")) res.first_eval_loss = m->metrics().at("first_eval_loss");
      return res;
    }
  }

  // Tokenizer.
  std::string tok_path = cfg.tokenizer();
  if (tok_path.empty() && !cfg.init_from().empty() && file_exists(cfg.init_from() + "/tokenizer.model"))
    tok_path = cfg.init_from() + "/tokenizer.model";
  if (tok_path.empty()) throw Error("sft config: field 'tokenizer': no tokenizer .model given");
  const Tokenizer tok = Tokenizer::load(tok_path);

  // Model (seeded: from-scratch init and LoRA init are reproducible).
  torch::manual_seed(cfg.seed());
  Transformer model{nullptr};
  CheckpointInfo base_info;
  if (cfg.init_from().empty()) {
    model = Transformer(scratch_config(cfg, tok));
    init_weights(model);
  } else {
    LoadedModel loaded = load_checkpoint(cfg.init_from());
    model = loaded.model;
    base_info = loaded.info;
    if (!base_info.tokenizer_sha256.empty() && base_info.tokenizer_sha256 != tok.sha256())
      throw Error(cfg.init_from() + ": trained with tokenizer " + base_info.tokenizer_sha256.substr(0, 12) +
                  " but " + tok_path + " is " + tok.sha256().substr(0, 12));
    if (model->config().vocab_size < tok.vocab_size())
      throw Error(cfg.init_from() + ": vocab_size " + std::to_string(model->config().vocab_size) +
                  " is smaller than the tokenizer's " + std::to_string(tok.vocab_size()) + " (" +
                  tok_path + ")");
  }
  const ModelConfig mc = model->config();
  const int64_t seq_len = cfg.seq_len() > 0 ? std::min<int64_t>(cfg.seq_len(), mc.max_seq_len) : mc.max_seq_len;
  const int64_t pad_id = mc.pad_id >= 0 ? mc.pad_id : 0;
  model->to(dev);
  model->train();

  std::unique_ptr<LoraAdapters> lora;
  if (cfg.has_lora() && cfg.lora().rank() > 0)
    lora = std::make_unique<LoraAdapters>(model, LoraOptions::from_proto(cfg.lora()));

  // Data: held-out split by a seeded permutation of examples.
  std::vector<Example> train_ex = read_examples(cfg.train_file(), cfg.format(), tok);
  std::vector<Example> eval_ex;
  if (!cfg.eval_file().empty()) {
    eval_ex = read_examples(cfg.eval_file(), cfg.format(), tok);
  } else if (cfg.heldout_fraction() > 0 && train_ex.size() >= 2) {
    auto order = epoch_order(train_ex.size(), cfg.seed() ^ 0x5eedULL, -1);
    size_t n_eval = std::max<size_t>(1, static_cast<size_t>(cfg.heldout_fraction() * train_ex.size()));
    std::vector<uint8_t> is_eval(train_ex.size(), 0);
    for (size_t i = 0; i < n_eval; ++i) is_eval[order[i]] = 1;
    std::vector<Example> keep;
    for (size_t i = 0; i < train_ex.size(); ++i)
      (is_eval[i] ? eval_ex : keep).push_back(std::move(train_ex[i]));
    train_ex = std::move(keep);
  }
  const std::vector<Row> train_rows = make_rows(train_ex, seq_len, cfg.packed());
  const std::vector<Row> eval_rows = make_rows(eval_ex, seq_len, cfg.packed());
  if (train_rows.empty())
    throw Error(cfg.train_file() + ": no training rows with target tokens (seq_len " +
                std::to_string(seq_len) + ")");
  const int64_t rows_per_step = static_cast<int64_t>(cfg.batch_size()) * cfg.grad_accum();
  const int64_t total_steps =
      cfg.steps() > 0 ? cfg.steps()
                      : std::max<int64_t>(1, static_cast<int64_t>(std::ceil(
                                                 cfg.epochs() * train_rows.size() / rows_per_step)));

  // Optimiser: AdamW, decay on >= 2-dim parameters only.
  std::vector<torch::Tensor> decay, no_decay;
  if (lora) {
    for (auto& p : lora->parameters()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  } else {
    for (auto& p : model->parameters())
      if (p.requires_grad()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  auto adamw_opts = [&](double wd) {
    auto o = std::make_unique<torch::optim::AdamWOptions>(cfg.lr());
    o->betas({cfg.beta1(), cfg.beta2()}).weight_decay(wd).eps(1e-8);
    return o;
  };
  if (!decay.empty()) groups.emplace_back(decay, adamw_opts(cfg.weight_decay()));
  if (!no_decay.empty()) groups.emplace_back(no_decay, adamw_opts(0.0));
  torch::optim::AdamW opt(groups, torch::optim::AdamWOptions(cfg.lr()));
  std::vector<torch::Tensor> trainable = decay;
  trainable.insert(trainable.end(), no_decay.begin(), no_decay.end());

  WarmupCosine schedule;
  schedule.peak_lr = cfg.lr();
  schedule.min_lr = cfg.lr() * cfg.min_lr_ratio();
  schedule.total_steps = total_steps;
  schedule.warmup_steps = resolved_warmup_steps(cfg, total_steps);

  // Resume.
  proto::SftTrainState st;
  st.set_schema_version(1);
  st.set_best_eval_loss(std::numeric_limits<float>::infinity());
  st.set_config_sha256(identity);
  std::vector<std::pair<std::string, torch::Tensor>> adapter_params;
  if (lora) adapter_params = lora->named_parameters();
  if (auto dir = latest_state(out)) {
    proto::SftTrainState saved;
    load_state(*dir, model, opt, adapter_params, &saved);
    if (saved.config_sha256() != identity)
      throw Error(*dir + ": saved by a run with a different config; use another output folder or "
                  "delete " + out + "/state to start over");
    st = saved;
    res.resumed_from = st.step();
    std::fprintf(stderr, "sft: resuming from %s (step %lld)\n", dir->c_str(),
                 static_cast<long long>(st.step()));
  }

  proto::StageManifest manifest = begin_manifest("sft");
  manifest.set_complete(false);
  manifest.set_resolved_config(to_text_format(cfg));
  manifest.set_tokenizer_sha256(tok.sha256());
  manifest.set_vocab_size(tok.vocab_size());
  *manifest.add_inputs() = file_ref(cfg.train_file());
  if (!cfg.eval_file().empty()) *manifest.add_inputs() = file_ref(cfg.eval_file());
  *manifest.add_inputs() = file_ref(tok_path);
  if (!cfg.init_from().empty()) {
    for (const char* f : {"/model.safetensors", "/checkpoint.pb", "/config.json"})
      if (file_exists(cfg.init_from() + f)) *manifest.add_inputs() = file_ref(cfg.init_from() + f);
  }
  write_manifest(manifest, out);

  MetricsWriter metrics(out, /*append=*/res.resumed_from >= 0);
  const int eval_batches = cfg.eval_batches();
  if (res.resumed_from < 0 && !eval_rows.empty()) {
    const double l0 = evaluate(model, lora.get(), eval_rows, cfg.batch_size(), eval_batches, pad_id, dev);
    res.first_eval_loss = l0;
    st.set_best_eval_loss(static_cast<float>(l0));  // early stop: must improve on the start
    metrics.write(0, {{"eval_loss", l0}, {"eval_ppl", std::exp(l0)}});
  }

  Progress progress("sft", total_steps, "step", 30.0);
  std::vector<size_t> order = epoch_order(train_rows.size(), cfg.seed(), st.epoch());
  const auto t_train = std::chrono::steady_clock::now();
  const double elapsed_before = st.elapsed_seconds();
  bool evaluated_at_end = false;
  int64_t tokens_this_session = 0;
  double last_loss = 0.0;
  while (st.step() < total_steps) {
    // The step's micro-batches (the data position advances with them).
    std::vector<Batch> micro;
    for (int m = 0; m < cfg.grad_accum(); ++m) {
      std::vector<const Row*> rs;
      while (static_cast<int64_t>(rs.size()) < cfg.batch_size()) {
        if (st.row_in_epoch() >= static_cast<int64_t>(order.size())) {
          if (!rs.empty()) break;  // a micro-batch never spans two passes
          st.set_epoch(st.epoch() + 1);
          st.set_row_in_epoch(0);
          order = epoch_order(train_rows.size(), cfg.seed(), st.epoch());
        }
        rs.push_back(&train_rows[order[st.row_in_epoch()]]);
        st.set_row_in_epoch(st.row_in_epoch() + 1);
      }
      micro.push_back(make_batch(rs, pad_id, dev));
    }
    int64_t n_targets = 0, n_tokens = 0;
    for (const auto& b : micro) {
      n_targets += b.n_targets;
      n_tokens += b.n_tokens;
    }
    const double lr = schedule.at(st.step());
    for (auto& g : opt.param_groups())
      static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
    opt.zero_grad();
    double loss_sum = 0.0;
    for (const auto& b : micro) {
      if (lora) lora->refresh(true);
      auto loss = batch_loss_sum(model, b) / static_cast<double>(std::max<int64_t>(1, n_targets));
      loss.backward();
      loss_sum += loss.item<double>();
    }
    double grad_norm = 0.0;
    if (cfg.grad_clip() > 0)
      grad_norm = torch::nn::utils::clip_grad_norm_(trainable, cfg.grad_clip());
    opt.step();
    st.set_step(st.step() + 1);
    st.set_tokens_seen(st.tokens_seen() + n_tokens);
    tokens_this_session += n_tokens;
    last_loss = loss_sum;
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t_train).count();
    const double tps = elapsed > 0 ? tokens_this_session / elapsed : 0.0;
    metrics.write(st.step(), {{"loss", loss_sum}, {"lr", lr}, {"grad_norm", grad_norm},
                              {"tokens_per_s", tps}});
    char extra[96];
    std::snprintf(extra, sizeof extra, "loss %.4f  %.0f tok/s", loss_sum, tps);
    progress.update(st.step(), extra);

    bool stop = false;
    const bool last = st.step() == total_steps;
    evaluated_at_end = false;
    if (!eval_rows.empty() && (st.step() % cfg.eval_every() == 0 || last)) {
      const double el = evaluate(model, lora.get(), eval_rows, cfg.batch_size(), eval_batches, pad_id, dev);
      metrics.write(st.step(), {{"eval_loss", el}, {"eval_ppl", std::exp(el)}});
      res.final_eval_loss = el;
      evaluated_at_end = true;
      if (el < st.best_eval_loss()) {
        st.set_best_eval_loss(static_cast<float>(el));
        st.set_evals_without_improvement(0);
      } else {
        st.set_evals_without_improvement(st.evals_without_improvement() + 1);
        if (cfg.early_stop_patience() > 0 &&
            st.evals_without_improvement() >= cfg.early_stop_patience()) {
          stop = true;
          res.early_stopped = true;
        }
      }
    }
    if (cfg.stop_after() > 0 && st.step() >= cfg.stop_after() && !last) {
      // Simulated kill: leave without saving anything more.
      res.interrupted = true;
      res.steps = st.step();
      progress.finish("stopped (stop_after)");
      return res;
    }
    if (st.step() % cfg.save_every() == 0 || last || stop) {
      st.set_elapsed_seconds(elapsed_before + elapsed);
      save_state(out, model, opt, adapter_params, st);
    }
    if (stop) break;
  }
  progress.finish();
  const double train_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_train).count();
  res.steps = st.step();
  res.final_train_loss = last_loss;
  res.tokens_per_second = train_seconds > 0 ? tokens_this_session / train_seconds : 0.0;
  if (!eval_rows.empty() && !evaluated_at_end)  // e.g. resumed from the final state
    res.final_eval_loss = evaluate(model, lora.get(), eval_rows, cfg.batch_size(), eval_batches, pad_id, dev);
  res.final_eval_ppl = std::exp(res.final_eval_loss);

  // Outputs.
  CheckpointInfo info;
  info.tokenizer_sha256 = tok.sha256();
  info.kind = "policy";
  info.created_by = "sft";
  info.step = st.step();
  model->to(torch::kCPU);
  if (lora) {
    lora->save(out + "/adapter");
    lora->merge();
    lora.reset();
  }
  save_checkpoint(model, res.model_dir, info);
  write_file_atomic(res.model_dir + "/tokenizer.model", read_file(tok_path));

  res.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  manifest.clear_outputs();
  *manifest.add_outputs() = file_ref(res.model_dir + "/model.safetensors");
  *manifest.add_outputs() = file_ref(res.model_dir + "/checkpoint.pb");
  if (file_exists(out + "/adapter/adapter_model.safetensors"))
    *manifest.add_outputs() = file_ref(out + "/adapter/adapter_model.safetensors");
  auto& mm = *manifest.mutable_metrics();
  mm["steps"] = static_cast<double>(res.steps);
  mm["final_train_loss"] = res.final_train_loss;
  if (!eval_rows.empty()) {
    if (res.resumed_from < 0) mm["first_eval_loss"] = res.first_eval_loss;
    mm["final_eval_loss"] = res.final_eval_loss;
    mm["final_eval_ppl"] = res.final_eval_ppl;
    mm["best_eval_loss"] = st.best_eval_loss();
  }
  mm["tokens_seen"] = static_cast<double>(st.tokens_seen());
  mm["tokens_per_second"] = res.tokens_per_second;
  mm["early_stopped"] = res.early_stopped ? 1.0 : 0.0;
  finish_manifest(manifest, out, res.wall_seconds);
  return res;
}

}  // namespace rlhf::policy
