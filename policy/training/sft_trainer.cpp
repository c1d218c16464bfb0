#include "policy/training/sft_trainer.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>

#include "common/error.h"
#include "common/files.h"
#include "common/manifest.h"
#include "common/metrics.h"
#include "common/progress.h"
#include "common/text_config.h"
#include "policy/model/checkpoint.h"
#include "policy/model/lora.h"
#include "policy/model/model.h"
#include "policy/runtime/device.h"
#include "policy/runtime/distributed.h"
#include "policy/tokenizer/chat_template.h"
#include "policy/tokenizer/prompt_format.h"
#include "policy/tokenizer/tokenizer.h"
#include "policy/training/lr_schedule.h"
#include "policy/training/sft_messages.h"
#include "policy/training/training.h"

namespace rlhf::policy {

namespace fs = std::filesystem;

// ---- data --------------------------------------------------------------------------------------

namespace {

// One tokenised example: ids and, per token, whether it is a training target.
struct Example {
  std::vector<int64_t> ids;
  std::vector<uint8_t> target;
};

// One {"prompt", "response"} line: prompt ids (no target) then response ids (targets, EOS
// included).
Example prompt_response_example(const nlohmann::ordered_json& j, const std::string& where,
                                const Tokenizer& tok) {
  if (!j.is_object() || !j.contains("prompt") || !j.contains("response") ||
      !j["prompt"].is_string() || !j["response"].is_string())
    throw Error(where + ": expected an object with string fields \"prompt\" and \"response\"");
  Example ex;
  auto p = encode_prompt(tok, j["prompt"].get<std::string>());
  auto r = encode_response(tok, j["response"].get<std::string>());
  ex.ids = p;
  ex.ids.insert(ex.ids.end(), r.begin(), r.end());
  ex.target.assign(p.size(), 0);
  ex.target.resize(ex.ids.size(), 1);
  return ex;
}

// One {"messages"} line (policy/training/sft_messages.h); the chat template loads on first use.
Example messages_example(const nlohmann::ordered_json& j, const std::string& where,
                         const Tokenizer& tok, std::optional<ChatFormat>& chat_format) {
  try {
    check_sft_messages(j["messages"]);
    if (!chat_format) chat_format = chat_format_of(tok);
    ConversationTokens c = tokenize_conversation(j["messages"], *chat_format, tok);
    return Example{std::move(c.ids), std::move(c.target)};
  } catch (const Error& e) {
    throw Error(where + ": " + e.what());
  }
}

// The JSON lines of one file hold one kind: {"prompt", "response"} or {"messages"} (the first
// example decides; a line of the other kind is refused).
struct JsonlKind {
  int64_t first_line = 0;  // 0: no example yet
  bool messages = false;
};

Example jsonl_example(const std::string& line, const std::string& path, int64_t line_no,
                      const Tokenizer& tok, JsonlKind& kind,
                      std::optional<ChatFormat>& chat_format) {
  const std::string where = path + ":" + std::to_string(line_no);
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(line);
  } catch (const nlohmann::ordered_json::exception& e) {
    throw Error(where + ": invalid JSON (" + e.what() + ")");
  }
  const bool messages = j.is_object() && j.contains("messages");
  const bool prompt_response = j.is_object() && j.contains("prompt") && j.contains("response");
  if (kind.first_line == 0) {
    kind.first_line = line_no;
    kind.messages = messages;
  } else if (messages != kind.messages && (messages || prompt_response)) {
    const char* mine = messages ? "{\"messages\"}" : "{\"prompt\", \"response\"}";
    const char* theirs = messages ? "{\"prompt\", \"response\"}" : "{\"messages\"}";
    throw Error(where + ": a " + mine + " line in a file whose first example (line " +
                std::to_string(kind.first_line) + ") is a " + theirs +
                " line; one data file holds one kind of line");
  } else if (kind.messages && !messages) {
    throw Error(where +
                ": expected an object with a \"messages\" list of {\"role\", "
                "\"content\"} objects");
  }
  return messages ? messages_example(j, where, tok, chat_format)
                  : prompt_response_example(j, where, tok);
}

std::vector<Example> read_examples(const std::string& path, const std::string& format,
                                   const Tokenizer& tok) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot open data file");
  std::vector<Example> out;
  std::string line;
  int64_t line_no = 0;
  JsonlKind kind;
  std::optional<ChatFormat> chat_format;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    Example ex;
    if (format == "jsonl") {
      ex = jsonl_example(line, path, line_no, tok, kind, chat_format);
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
                (format == "jsonl"
                     ? std::string("JSON lines {\"prompt\", \"response\"} or {\"messages\"}")
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
  int64_t n_tokens = 0;  // real input tokens
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

// Sum of token cross-entropies of a batch (graph kept when grad mode is on); the forward pass under
// bf16 autocast when precision is kBf16, the loss in float32 either way.
torch::Tensor batch_loss_sum(Transformer& model, const Batch& b, Precision precision) {
  AutocastScope autocast(b.inputs.device(), precision);
  auto hidden = model->hidden_states(b.inputs, b.mask);
  auto logits = model->logits_from_hidden(hidden);
  // libtorch's cross_entropy, not fused::token_logprobs (same value up to float rounding, 1.6-1.9x
  // faster alone): with the fused loss the quickstart's SFT student came out different (35.0% gold
  // instead of 32.5%) and the reward model trained on its samples agreed with the gold teacher on
  // 93.7% of pairs, under the 95% target (docs/performance.md). Switching it needs the quickstart
  // re-tuned for the new student.
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

// This rank's share of a global batch of rows (all of it when alone).
std::vector<const Row*> my_share(const std::vector<const Row*>& rows, const dist::Comm& comm) {
  auto [begin, end] =
      dist::shard_range(static_cast<int64_t>(rows.size()), comm.rank(), comm.size());
  return {rows.begin() + begin, rows.begin() + end};
}

// Mean held-out token loss; each rank evaluates its share of every batch, the sums are reduced.
double evaluate(Transformer& model, LoraAdapters* lora, const std::vector<Row>& rows,
                int batch_size, int max_batches, int64_t pad_id, const torch::Device& dev,
                Precision precision, dist::Comm& comm) {
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
    rs = my_share(rs, comm);
    ++batches;
    if (rs.empty()) continue;
    Batch b = make_batch(rs, pad_id, dev);
    sum += batch_loss_sum(model, b, precision).item<double>();
    n += b.n_targets;
  }
  model->train();
  const auto total = comm.sum({sum, static_cast<double>(n)});
  return total[1] > 0 ? total[0] / total[1] : std::nan("");
}

// ---- the run -----------------------------------------------------------------------------------

// Everything one SFT run holds; the phases below read and advance it.
struct SftRun {
  proto::SftConfig cfg;
  torch::Device dev{torch::kCPU};
  Precision precision =
      Precision::kFp32;        // bf16: autocast forward passes (policy/runtime/device.h)
  dist::Comm* comm = nullptr;  // the ranks sharing each global batch (one when alone)
  std::string out;
  training::InitialModel init;
  Transformer model{nullptr};
  std::unique_ptr<LoraAdapters> lora;
  std::vector<Row> train_rows, eval_rows;
  int64_t seq_len = 0, pad_id = 0, total_steps = 0;
  LrSchedule schedule;
  std::unique_ptr<training::Optimizer> opt;
  std::unique_ptr<training::StateFolder> states;
  std::string fingerprint;
  proto::SftTrainState st;        // step, data position, early-stop counters
  std::vector<size_t> order;      // row order of the current pass
  proto::StageManifest manifest;  // the stage record's content (pipelines/ writes it)
  StageStarted on_start;
  std::unique_ptr<MetricsWriter> metrics;
  std::chrono::steady_clock::time_point t_start;
  std::chrono::steady_clock::time_point t_session;  // start of this process's training
  std::chrono::steady_clock::time_point t_train;    // since the last elapsed_seconds update
  int64_t tokens_this_session = 0;
};

const std::vector<std::string> kSftRunOnlyFields = {"out_dir", "threads", "device", "dtype",
                                                    "stop_after"};

// Held-out split by a seeded permutation of examples (or the eval file), then rows.
void load_data(SftRun& r) {
  const auto& c = r.cfg;
  std::vector<Example> train_ex = read_examples(c.train_file(), c.format(), r.init.tokenizer);
  std::vector<Example> eval_ex;
  if (!c.eval_file().empty()) {
    eval_ex = read_examples(c.eval_file(), c.format(), r.init.tokenizer);
  } else if (c.heldout_fraction() > 0 && train_ex.size() >= 2) {
    auto order = epoch_order(train_ex.size(), c.seed() ^ 0x5eedULL, -1);
    size_t n_eval =
        std::max<size_t>(1, static_cast<size_t>(c.heldout_fraction() * train_ex.size()));
    std::vector<uint8_t> is_eval(train_ex.size(), 0);
    for (size_t i = 0; i < n_eval; ++i) is_eval[order[i]] = 1;
    std::vector<Example> keep;
    for (size_t i = 0; i < train_ex.size(); ++i)
      (is_eval[i] ? eval_ex : keep).push_back(std::move(train_ex[i]));
    train_ex = std::move(keep);
  }
  r.train_rows = make_rows(train_ex, r.seq_len, c.packed());
  r.eval_rows = make_rows(eval_ex, r.seq_len, c.packed());
  if (r.train_rows.empty())
    throw Error(c.train_file() + ": no training rows with target tokens (seq_len " +
                std::to_string(r.seq_len) + ")");
}

// Config, model (seeded), LoRA, data, optimizer and schedule.
void prepare(SftRun& r, const proto::SftConfig& config_in) {
  r.t_start = std::chrono::steady_clock::now();
  r.cfg = config_in;
  r.cfg = resolved_sft_config(r.cfg);
  const auto& c = r.cfg;
  validate_sft_config(c, "sft config");
  const ConfigErrors errors(c, "sft config");
  if (c.out_dir().empty()) errors.fail("out_dir", "expected an output folder", "\"\"");
  if (c.train_file().empty()) errors.fail("train_file", "expected a training data file", "\"\"");
  const training::Placement place =
      training::place_trainer(c.device(), c.dtype(), c.threads(), "sft config");
  r.dev = place.device;
  r.precision = place.precision;
  r.comm = place.comm;
  r.out = c.out_dir();
  if (c.batch_size() < r.comm->size())
    errors.fail("batch_size",
                "expected at least one row per rank (" + std::to_string(r.comm->size()) + " ranks)",
                std::to_string(c.batch_size()));

  torch::manual_seed(c.seed());  // from-scratch and LoRA init are reproducible
  training::ModelSource src;
  src.init_from = c.init_from();
  src.tokenizer = c.tokenizer();
  src.scratch = c.model();
  src.seq_len = c.seq_len();
  src.what = "sft config";
  // bf16 with LoRA: a checkpoint's frozen base is read straight into bfloat16 (no float32 copy).
  src.load = frozen_base_load_options(r.precision == Precision::kBf16,
                                      c.has_lora() && c.lora().rank() > 0);
  r.init = training::init_model(src);
  r.model = r.init.model;
  const ModelConfig mc = r.model->config();
  r.seq_len = c.seq_len() > 0 ? std::min<int64_t>(c.seq_len(), mc.max_seq_len) : mc.max_seq_len;
  r.pad_id = mc.pad_id >= 0 ? mc.pad_id : 0;
  r.model->to(r.dev);
  r.model->train();
  if (c.has_lora() && c.lora().rank() > 0) {
    // bf16 with LoRA: the frozen projection matrices and embedding table stay bfloat16 (no
    // float32 copy; a no-op for a checkpoint loaded so); the adapters and norms are float32.
    if (r.precision == Precision::kBf16)
      store_matrices_as(r.model, torch::kBFloat16, StoredWeights::kMatricesAndEmbeddings);
    r.lora = std::make_unique<LoraAdapters>(r.model, LoraOptions::from_proto(c.lora()));
  }

  load_data(r);
  const int64_t rows_per_step = static_cast<int64_t>(c.batch_size()) * c.grad_accum();
  r.total_steps =
      c.steps() > 0 ? c.steps()
                    : std::max<int64_t>(1, static_cast<int64_t>(std::ceil(
                                               c.epochs() * r.train_rows.size() / rows_per_step)));
  // With LoRA the base is frozen: the adapters alone train.
  r.opt = std::make_unique<training::Optimizer>(
      training::trainable_parameters(*r.model, r.lora.get()),
      training::applied_settings(c.optimizer(), training::OptimizerDefaults::kSupervised));
  r.schedule = training::make_schedule(c.optimizer(), r.total_steps,
                                       training::OptimizerDefaults::kSupervised);
}

// Tensors of the resumable state: the model's parameters and buffers, and the LoRA adapters.
training::NamedTensors state_tensors(SftRun& r) {
  return training::state_tensors(*r.model, r.lora.get());
}

void save_state(SftRun& r) {
  if (!r.comm->is_root()) return;
  r.st.set_elapsed_seconds(
      r.st.elapsed_seconds() +
      std::chrono::duration<double>(std::chrono::steady_clock::now() - r.t_train).count());
  r.t_train = std::chrono::steady_clock::now();
  r.states->save(training::step_name(r.st.step()), r.fingerprint, [&](const std::string& dir) {
    training::save_tensors(state_tensors(r), dir + "/model.pt");
    r.opt->save(dir + "/optimizer.pt");
    training::save_cpu_rng(dir + "/rng.pt");
    write_file_atomic(dir + "/train_state.pb", r.st.SerializeAsString());
  });
}

// The resume rule (policy/training/training.h). Returns true when the folder already holds the
// finished run of this config (nothing to do).
// Every rank starts where rank 0 does (training::check_same_start; nothing when alone).
void check_same_start(SftRun& r, bool finished) {
  training::check_same_start(*r.comm, "sft", r.out,
                             {r.fingerprint, r.st.step(),
                              finished ? "finished"
                                       : "epoch " + std::to_string(r.st.epoch()) + ", row " +
                                             std::to_string(r.st.row_in_epoch())},
                             finished ? training::NamedTensors{} : state_tensors(r));
}

bool resume_or_start(SftRun& r, SftResult& res) {
  std::vector<std::string> inputs = r.init.files;
  inputs.push_back(r.cfg.train_file());
  if (!r.cfg.eval_file().empty()) inputs.push_back(r.cfg.eval_file());
  r.fingerprint = training::config_fingerprint(r.cfg, kSftRunOnlyFields, inputs);
  r.states = std::make_unique<training::StateFolder>(r.out + "/state");
  r.st.set_schema_version(1);
  r.st.set_best_eval_loss(std::numeric_limits<float>::infinity());
  r.st.set_config_sha256(r.fingerprint);
  if (auto dir = r.states->resume_dir(r.fingerprint)) {
    if (!r.st.ParseFromString(read_file(*dir + "/train_state.pb")))
      throw Error(*dir + "/train_state.pb: not a SftTrainState message");
    const bool early_stopped = r.cfg.early_stop_patience() > 0 &&
                               r.st.evals_without_improvement() >= r.cfg.early_stop_patience();
    auto m = read_manifest(r.out);
    if (m && m->complete() && (r.st.step() >= r.total_steps || early_stopped)) {
      res.already_complete = true;
      res.steps = static_cast<int64_t>(m->metrics().count("steps") ? m->metrics().at("steps") : 0);
      if (m->metrics().count("final_eval_loss"))
        res.final_eval_loss = m->metrics().at("final_eval_loss");
      if (m->metrics().count("first_eval_loss"))
        res.first_eval_loss = m->metrics().at("first_eval_loss");
      check_same_start(r, /*finished=*/true);
      return true;
    }
    training::load_tensors(state_tensors(r), *dir + "/model.pt");
    r.opt->load(*dir + "/optimizer.pt", r.dev);
    training::load_cpu_rng(*dir + "/rng.pt");
    res.resumed_from = r.st.step();
    if (r.comm->is_root())
      std::fprintf(stderr, "sft: resuming from %s (step %lld)\n", dir->c_str(),
                   static_cast<long long>(r.st.step()));
  }
  check_same_start(r, /*finished=*/false);
  r.manifest = begin_manifest("sft");
  r.manifest.set_complete(false);
  r.manifest.set_resolved_config(to_text_format(r.cfg));
  r.manifest.set_tokenizer_sha256(r.init.tokenizer.sha256());
  r.manifest.set_vocab_size(r.init.tokenizer.vocab_size());
  for (const auto& f : inputs) *r.manifest.add_inputs() = file_ref(f);
  if (!r.comm->is_root()) return false;    // rank 0 alone writes records and metrics
  if (r.on_start) r.on_start(r.manifest);  // the stage marks its folder unfinished
  r.metrics = std::make_unique<MetricsWriter>(r.out, /*append=*/res.resumed_from >= 0);
  return false;
}

// One optimizer step's data: this rank's share of each micro-batch, and the counts of the whole
// global batch (every rank computes them from the same rows, so the loss normaliser is global).
struct StepData {
  std::vector<Batch> micro;  // this rank's shares (a share may be empty: skipped)
  int64_t n_targets = 0;     // target tokens of the global batch
  int64_t n_tokens = 0;      // real input tokens of the global batch
};

// The next optimizer step's micro-batches; the data position advances with them.
StepData next_micro_batches(SftRun& r) {
  StepData step;
  for (int m = 0; m < r.cfg.grad_accum(); ++m) {
    std::vector<const Row*> rows;
    while (static_cast<int64_t>(rows.size()) < r.cfg.batch_size()) {
      if (r.st.row_in_epoch() >= static_cast<int64_t>(r.order.size())) {
        if (!rows.empty()) break;  // a micro-batch never spans two passes
        r.st.set_epoch(r.st.epoch() + 1);
        r.st.set_row_in_epoch(0);
        r.order = epoch_order(r.train_rows.size(), r.cfg.seed(), r.st.epoch());
      }
      rows.push_back(&r.train_rows[r.order[r.st.row_in_epoch()]]);
      r.st.set_row_in_epoch(r.st.row_in_epoch() + 1);
    }
    for (const Row* row : rows) {
      step.n_tokens += static_cast<int64_t>(row->ids.size()) - 1;
      step.n_targets += std::count(row->target.begin() + 1, row->target.end(), 1);
    }
    rows = my_share(rows, *r.comm);
    if (!rows.empty()) step.micro.push_back(make_batch(rows, r.pad_id, r.dev));
  }
  return step;
}

double tokens_per_second(const SftRun& r) {
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - r.t_session).count();
  return s > 0 ? r.tokens_this_session / s : 0.0;
}

// Forward/backward over this rank's micro-batches (the loss is the mean over all the global
// step's target tokens, so N ranks sum to what one process computes), the gradients summed over
// ranks, then one AdamW update (clipping sees the global norm). Returns the step's loss.
double train_step(SftRun& r, const StepData& data) {
  const int64_t n_tokens = data.n_tokens;
  const double lr = r.schedule.at(r.st.step());
  r.opt->zero_grad();
  double loss_sum = 0.0;
  for (const auto& b : data.micro) {
    if (r.lora) r.lora->refresh(true);
    auto loss = batch_loss_sum(r.model, b, r.precision) /
                static_cast<double>(std::max<int64_t>(1, data.n_targets));
    loss.backward();
    loss_sum += loss.item<double>();
  }
  dist::all_reduce_gradients(*r.comm, r.opt->parameters());
  loss_sum = r.comm->sum(loss_sum);
  const double grad_norm = r.opt->step(lr);
  r.st.set_step(r.st.step() + 1);
  r.st.set_tokens_seen(r.st.tokens_seen() + n_tokens);
  r.tokens_this_session += n_tokens;
  if (r.metrics)
    r.metrics->write(r.st.step(), {{"loss", loss_sum},
                                   {"lr", lr},
                                   {"grad_norm", grad_norm},
                                   {"tokens_per_s", tokens_per_second(r)}});
  return loss_sum;
}

double evaluate_now(SftRun& r) {
  return evaluate(r.model, r.lora.get(), r.eval_rows, r.cfg.batch_size(), r.cfg.eval_batches(),
                  r.pad_id, r.dev, r.precision, *r.comm);
}

// Held-out loss after a step; returns true when early stopping says to stop.
bool evaluate_step(SftRun& r, SftResult& res) {
  const double loss = evaluate_now(r);
  if (r.metrics) r.metrics->write(r.st.step(), {{"eval_loss", loss}, {"eval_ppl", std::exp(loss)}});
  res.final_eval_loss = loss;
  if (loss < r.st.best_eval_loss()) {
    r.st.set_best_eval_loss(static_cast<float>(loss));
    r.st.set_evals_without_improvement(0);
    return false;
  }
  r.st.set_evals_without_improvement(r.st.evals_without_improvement() + 1);
  return r.cfg.early_stop_patience() > 0 &&
         r.st.evals_without_improvement() >= r.cfg.early_stop_patience();
}

// model/ (merged with LoRA) with the tokenizer's files, adapter/, and the stage record's content.
void write_outputs(SftRun& r, SftResult& res) {
  CheckpointInfo info;
  info.tokenizer_sha256 = r.init.tokenizer.sha256();
  info.kind = "policy";
  info.created_by = "sft";
  info.step = r.st.step();
  r.model->to(torch::kCPU);
  if (r.lora) {
    r.lora->save(r.out + "/adapter");
    r.lora->merge();
    r.lora.reset();
  }
  store_matrices_as(r.model, torch::kFloat);  // checkpoints are float32 (bf16 LoRA bases)
  save_checkpoint(r.model, res.model_dir, info);
  r.init.tokenizer.save(res.model_dir);  // tokenizer.model, or tokenizer.json (+ its config)

  res.wall_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - r.t_start).count();
  auto& m = r.manifest;
  m.clear_outputs();
  *m.add_outputs() = file_ref(res.model_dir + "/model.safetensors");
  *m.add_outputs() = file_ref(res.model_dir + "/checkpoint.pb");
  if (file_exists(r.out + "/adapter/adapter_model.safetensors"))
    *m.add_outputs() = file_ref(r.out + "/adapter/adapter_model.safetensors");
  auto& mm = *m.mutable_metrics();
  mm["steps"] = static_cast<double>(res.steps);
  mm["final_train_loss"] = res.final_train_loss;
  if (!r.eval_rows.empty()) {
    if (res.resumed_from < 0) mm["first_eval_loss"] = res.first_eval_loss;
    mm["final_eval_loss"] = res.final_eval_loss;
    mm["final_eval_ppl"] = res.final_eval_ppl;
    mm["best_eval_loss"] = r.st.best_eval_loss();
  }
  mm["tokens_seen"] = static_cast<double>(r.st.tokens_seen());
  mm["tokens_per_second"] = res.tokens_per_second;
  mm["early_stopped"] = res.early_stopped ? 1.0 : 0.0;
  res.manifest = m;  // the stage layer writes it (pipelines/stage_record.h)
}

}  // namespace

// ---- training ----------------------------------------------------------------------------------

SftResult train_sft(const proto::SftConfig& config, const StageStarted& on_start) {
  SftRun r;
  r.on_start = on_start;
  prepare(r, config);
  SftResult res;
  res.out_dir = r.out;
  res.model_dir = r.out + "/model";
  make_dirs(r.out);
  if (resume_or_start(r, res)) return res;
  if (res.resumed_from < 0 && !r.eval_rows.empty()) {
    res.first_eval_loss = evaluate_now(r);
    r.st.set_best_eval_loss(static_cast<float>(res.first_eval_loss));  // must improve on the start
    if (r.metrics)
      r.metrics->write(
          0, {{"eval_loss", res.first_eval_loss}, {"eval_ppl", std::exp(res.first_eval_loss)}});
  }

  std::optional<Progress> progress;
  if (r.comm->is_root()) progress.emplace("sft", r.total_steps, "step", 30.0);
  r.order = epoch_order(r.train_rows.size(), r.cfg.seed(), r.st.epoch());
  r.t_session = r.t_train = std::chrono::steady_clock::now();
  bool evaluated_at_end = false;
  while (r.st.step() < r.total_steps) {
    res.final_train_loss = train_step(r, next_micro_batches(r));
    char extra[96];
    std::snprintf(extra, sizeof extra, "loss %.4f  %.0f tok/s", res.final_train_loss,
                  tokens_per_second(r));
    if (progress) progress->update(r.st.step(), extra);

    const bool last = r.st.step() == r.total_steps;
    evaluated_at_end = !r.eval_rows.empty() && (r.st.step() % r.cfg.eval_every() == 0 || last);
    const bool stop = evaluated_at_end && evaluate_step(r, res);
    res.early_stopped = stop;
    if (r.cfg.stop_after() > 0 && r.st.step() >= r.cfg.stop_after() && !last) {
      res.interrupted = true;  // simulated kill: leave without saving anything more
      res.steps = r.st.step();
      if (progress) progress->finish("stopped (stop_after)");
      return res;
    }
    if (r.st.step() % r.cfg.save_every() == 0 || last || stop) save_state(r);
    if (stop) break;
  }
  if (progress) progress->finish();
  const double session_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - r.t_session).count();
  res.steps = r.st.step();
  res.tokens_per_second = session_s > 0 ? r.tokens_this_session / session_s : 0.0;
  if (!r.eval_rows.empty() && !evaluated_at_end)
    res.final_eval_loss = evaluate_now(r);  // resumed at the end
  res.final_eval_ppl = std::exp(res.final_eval_loss);
  if (r.comm->is_root()) write_outputs(r, res);
  return res;
}

}  // namespace rlhf::policy
