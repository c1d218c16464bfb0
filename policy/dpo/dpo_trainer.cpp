#include "policy/dpo/dpo_trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <unordered_map>

#include "common/error.h"
#include "common/files.h"
#include "common/metrics.h"
#include "common/progress.h"
#include "common/text_config.h"
#include "policy/dpo/dpo_config.h"
#include "policy/dpo/dpo_math.h"
#include "policy/model/checkpoint.h"
#include "policy/model/logprobs.h"
#include "policy/runtime/device.h"
#include "policy/runtime/distributed.h"
#include "policy/tokenizer/chat_template.h"
#include "policy/training/training.h"
#include "reward/comparisons.h"

namespace rlhf::policy::dpo {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kRefChunk = 8;  // sequences per reference / evaluation forward pass

// Token sequences of a set of comparisons: 2k the chosen answer of pair k, 2k + 1 the rejected;
// answer_start[s] is the index in seqs[s] of the first answer token.
struct Encoded {
  std::vector<std::vector<int64_t>> seqs;
  std::vector<int64_t> answer_start;
  std::vector<float> ref;  // reference log-probability of each sequence
  size_t pairs() const { return seqs.size() / 2; }
};

Encoded encode(const std::vector<reward::Comparison>& cs, const Tokenizer& tok, int bos, int eos,
               int max_prompt, int max_answer) {
  Encoded e;
  std::unordered_map<std::string, std::vector<int>> prompt_cache;
  for (const auto& c : cs) {
    auto it = prompt_cache.find(c.prompt);
    if (it == prompt_cache.end()) it = prompt_cache.emplace(c.prompt, tok.encode(c.prompt)).first;
    const std::vector<int>& p = it->second;
    for (const std::string* answer : {&c.chosen, &c.rejected}) {
      std::vector<int64_t> s;
      // A prompt that a chat template began with BOS gets no second one.
      if (bos >= 0 && (p.empty() || p.front() != bos)) s.push_back(bos);
      const size_t keep = std::min<size_t>(p.size(), static_cast<size_t>(max_prompt));
      s.insert(s.end(), p.end() - static_cast<std::ptrdiff_t>(keep), p.end());
      if (s.empty()) s.push_back(eos >= 0 ? eos : 0);  // something to predict the answer from
      e.answer_start.push_back(static_cast<int64_t>(s.size()));
      const std::vector<int> a = tok.encode(*answer);
      const size_t n = std::min<size_t>(a.size(), static_cast<size_t>(max_answer));
      s.insert(s.end(), a.begin(), a.begin() + static_cast<std::ptrdiff_t>(n));
      if (eos >= 0) s.push_back(eos);
      if (static_cast<int64_t>(s.size()) == e.answer_start.back())
        s.push_back(eos >= 0 ? eos : 0);  // an empty answer without EOS: one token to score
      e.seqs.push_back(std::move(s));
    }
  }
  return e;
}

// Summed answer log-probabilities of the sequences `idx` (one forward pass, right-padded).
torch::Tensor sequence_logps(Transformer& model, const Encoded& e, const std::vector<size_t>& idx,
                             const torch::Device& device) {
  int64_t T = 0;
  for (size_t s : idx) T = std::max<int64_t>(T, static_cast<int64_t>(e.seqs[s].size()));
  const auto B = static_cast<int64_t>(idx.size());
  auto ids = torch::zeros({B, T}, torch::kInt64), mask = torch::zeros({B, T}, torch::kInt64);
  auto answer = torch::zeros({B, T - 1}, torch::kFloat32);
  for (int64_t b = 0; b < B; ++b) {
    const auto& s = e.seqs[idx[static_cast<size_t>(b)]];
    const auto n = static_cast<int64_t>(s.size());
    ids[b].narrow(0, 0, n).copy_(torch::tensor(s, torch::kInt64));
    mask[b].narrow(0, 0, n).fill_(1);
    const int64_t from = e.answer_start[idx[static_cast<size_t>(b)]] - 1;  // predicts the answer
    answer[b].narrow(0, from, n - 1 - from).fill_(1);
  }
  auto lp = token_logprobs(model, ids.to(device), mask.to(device)).logprobs;
  return (lp.to(torch::kFloat32) * answer.to(device)).sum(1);
}

// ---- the run -----------------------------------------------------------------------------------

struct DpoRun {
  proto::DpoConfig cfg;
  std::string out;
  torch::Device device{torch::kCPU};
  Precision precision = Precision::kFp32;
  dist::Comm* comm = nullptr;
  LossOptions loss;
  std::vector<reward::Comparison> train, heldout;
  training::InitialModel init;
  Transformer model{nullptr};
  std::unique_ptr<LoraAdapters> lora;
  std::unique_ptr<training::Optimizer> opt;
  LrSchedule schedule;
  Encoded enc_train, enc_held;
  int64_t total_steps = 0;
  std::unique_ptr<training::StateFolder> states;
  std::string fingerprint;
  proto::DpoTrainState state;
  bool resumed = false;
  proto::StageManifest manifest;
  StageStarted on_start;
  std::unique_ptr<MetricsWriter> metrics;
  std::chrono::steady_clock::time_point t0;
  double elapsed() const {
    return state.elapsed_seconds() +
           std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
};

const std::vector<std::string> kRunOnlyFields = {"out_dir", "threads", "device", "dtype",
                                                 "stop_after"};

reward::ChatRenderer chat_renderer(const Tokenizer& tok) {
  const std::string path = (fs::path(tok.path()).parent_path() / "tokenizer_config.json").string();
  if (!fs::exists(path))
    throw Error("dpo config: format \"messages\" renders conversations with the chat template of " +
                path + ", which does not exist");
  auto chat = std::make_shared<const ChatTemplate>(ChatTemplate::load(path));
  return [chat](const nlohmann::ordered_json& messages, bool add_generation_prompt) {
    return chat->render(messages, add_generation_prompt);
  };
}

void load_comparisons(DpoRun& r) {
  const auto& c = r.cfg;
  const reward::ChatRenderer render =
      c.format() == "messages" ? chat_renderer(r.init.tokenizer) : nullptr;
  auto all = reward::read_comparisons(c.train_file(), c.format(), render);
  if (all.empty()) throw Error(c.train_file() + ": no comparisons (empty, or only ties)");
  if (!c.eval_file().empty()) {
    r.train = std::move(all);
    r.heldout = reward::read_comparisons(c.eval_file(), c.format(), render);
  } else {
    reward::split_heldout(all, c.heldout_fraction(), c.split_seed(), &r.train, &r.heldout);
  }
  if (c.max_pairs() > 0 && static_cast<int64_t>(r.train.size()) > c.max_pairs())
    r.train.resize(static_cast<size_t>(c.max_pairs()));
  if (r.train.empty()) throw Error(c.train_file() + ": no training comparisons after the split");
}

// Reference log-probabilities of every sequence: fixed chunks of kRefChunk sequences (the same
// chunks whatever the number of ranks), each rank its contiguous share of the chunks, gathered.
std::vector<float> reference_logps(DpoRun& r, const Encoded& e) {
  const auto n = static_cast<int64_t>(e.seqs.size());
  const int64_t chunks = (n + kRefChunk - 1) / kRefChunk;
  auto [c0, c1] = dist::shard_range(chunks, r.comm->rank(), r.comm->size());
  std::vector<float> mine;
  {
    torch::NoGradGuard ng;
    AutocastScope autocast(r.device, r.precision);
    for (int64_t c = c0; c < c1; ++c) {
      std::vector<size_t> idx;
      for (int64_t s = c * kRefChunk; s < std::min(n, (c + 1) * kRefChunk); ++s)
        idx.push_back(static_cast<size_t>(s));
      auto lp = sequence_logps(r.model, e, idx, r.device).to(torch::kCPU).contiguous();
      mine.insert(mine.end(), lp.data_ptr<float>(), lp.data_ptr<float>() + lp.numel());
    }
  }
  if (r.comm->alone()) return mine;
  std::vector<float> all;
  for (const auto& p : r.comm->all_gather_bytes(
           std::string(reinterpret_cast<const char*>(mine.data()), mine.size() * sizeof(float)))) {
    const auto* f = reinterpret_cast<const float*>(p.data());
    all.insert(all.end(), f, f + p.size() / sizeof(float));
  }
  return all;
}

// The policy from init_from (the reference's log-probabilities taken before any adapter is
// attached), then LoRA when configured.
void init_policy(DpoRun& r) {
  const auto& c = r.cfg;
  training::ModelSource src;
  src.init_from = c.init_from();
  src.tokenizer = c.tokenizer();
  src.seq_len = c.max_prompt_tokens() + c.max_answer_tokens() + 2;
  src.fail_on_long_rows = true;
  src.what = "dpo config";
  // bf16 with LoRA: the frozen base (the reference too) is read straight into bfloat16.
  src.load = frozen_base_load_options(r.precision == Precision::kBf16,
                                      c.has_lora() && c.lora().rank() > 0);
  try {
    r.init = training::init_model(src);
  } catch (const Error& e) {
    const std::string m = e.what();
    if (m.find("exceed") == std::string::npos) throw;
    throw Error(m +
                " (a row is at most max_prompt_tokens + max_answer_tokens + 2 tokens: lower "
                "them)");
  }
  r.model = r.init.model;
  r.model->to(r.device);
  r.model->train();
}

void attach_lora(DpoRun& r) {
  if (!r.cfg.has_lora() || r.cfg.lora().rank() <= 0) return;
  LoraOptions lo = LoraOptions::from_proto(r.cfg.lora());
  try {
    lo.validate();
  } catch (const Error& e) {
    throw Error(std::string("dpo config: field 'lora': ") + e.what());
  }
  r.lora = std::make_unique<LoraAdapters>(r.model, lo);
}

void check_required(const proto::DpoConfig& c) {
  const ConfigErrors errors(c, "dpo config");
  if (c.out_dir().empty())
    errors.fail("out_dir", "expected an output folder (or --out DIR)", "\"\"");
  if (c.train_file().empty()) errors.fail("train_file", "expected a comparisons file", "\"\"");
  if (c.init_from().empty())
    errors.fail("init_from", "expected the initial policy (e.g. an SFT model/ folder)", "\"\"");
}

// Config, data, model, reference log-probabilities, optimizer, schedule.
void prepare(DpoRun& r, const proto::DpoConfig& config) {
  r.t0 = std::chrono::steady_clock::now();
  r.cfg = resolved_dpo_config(config);
  const auto& c = r.cfg;
  validate_dpo_config(c, "dpo config");
  check_required(c);
  r.out = c.out_dir();
  r.loss = {c.loss(), c.beta(), c.label_smoothing()};
  torch::manual_seed(c.seed());
  const auto place = training::place_trainer(c.device(), c.dtype(), c.threads(), "dpo config");
  r.device = place.device;
  r.precision = place.precision;
  r.comm = place.comm;
  if (c.batch_pairs() < r.comm->size())
    ConfigErrors(c, "dpo config")
        .fail("batch_pairs",
              "expected at least one pair per rank (" + std::to_string(r.comm->size()) + " ranks)",
              std::to_string(c.batch_pairs()));
  // Format "messages" needs the tokenizer's folder (its chat template): read after the model.
  if (c.format() != "messages") load_comparisons(r);
  init_policy(r);
  if (c.format() == "messages") load_comparisons(r);
  const int bos = r.model->config().bos_id, eos = r.model->config().eos_id;
  r.enc_train =
      encode(r.train, r.init.tokenizer, bos, eos, c.max_prompt_tokens(), c.max_answer_tokens());
  r.enc_held =
      encode(r.heldout, r.init.tokenizer, bos, eos, c.max_prompt_tokens(), c.max_answer_tokens());
  r.enc_train.ref = reference_logps(r, r.enc_train);
  r.enc_held.ref = reference_logps(r, r.enc_held);
  attach_lora(r);
  r.opt = std::make_unique<training::Optimizer>(
      training::trainable_parameters(*r.model, r.lora.get()),
      training::applied_settings(c.optimizer(), training::OptimizerDefaults::kSupervised),
      c.embedding_lr_scale());
  const auto n_batches =
      static_cast<int64_t>(reward::make_batches(r.train, c.batch_pairs(), c.seed()).size());
  r.total_steps =
      c.has_steps() ? c.steps()
                    : std::max<int64_t>(1, static_cast<int64_t>(std::ceil(c.epochs() * n_batches)));
  r.schedule = training::make_schedule(c.optimizer(), r.total_steps,
                                       training::OptimizerDefaults::kSupervised);
}

training::NamedTensors state_tensors(DpoRun& r) {
  return training::state_tensors(*r.model, r.lora.get());
}

void save_state(DpoRun& r) {
  if (!r.comm->is_root()) return;  // rank 0 alone writes
  r.state.set_config_sha256(r.fingerprint);
  r.state.set_elapsed_seconds(r.elapsed());
  r.t0 = std::chrono::steady_clock::now();
  r.states->save(training::step_name(r.state.step()), r.fingerprint, [&](const std::string& dir) {
    training::save_tensors(state_tensors(r), dir + "/model.pt");
    r.opt->save(dir + "/optimizer.pt");
    training::save_cpu_rng(dir + "/rng.pt");
    write_file_atomic(dir + "/train_state.pb", r.state.SerializeAsString());
  });
}

void check_same_start(DpoRun& r, bool finished) {
  training::check_same_start(*r.comm, "dpo", r.out,
                             {r.fingerprint, r.state.step(),
                              finished ? "finished"
                                       : "epoch " + std::to_string(r.state.epoch()) + ", batch " +
                                             std::to_string(r.state.batch_in_epoch())},
                             finished ? training::NamedTensors{} : state_tensors(r));
}

void log_start(const DpoRun& r) {
  std::fprintf(
      stderr, "dpo: %zu train / %zu held-out comparisons, %lld steps, loss %s beta %g%s%s%s\n",
      r.train.size(), r.heldout.size(), static_cast<long long>(r.total_steps), r.cfg.loss().c_str(),
      r.cfg.beta(), r.resumed ? " (resumed)" : "",
      r.lora
          ? (", LoRA: " + std::to_string(r.lora->num_parameters()) + " adapter parameters").c_str()
          : "",
      r.comm->alone() ? "" : (", " + std::to_string(r.comm->size()) + " ranks").c_str());
}

// The resume rule (policy/training/training.h). Returns true when the folder already holds the
// finished run of this config.
bool resume_or_start(DpoRun& r) {
  std::vector<std::string> inputs = r.init.files;
  inputs.push_back(r.cfg.train_file());
  if (!r.cfg.eval_file().empty()) inputs.push_back(r.cfg.eval_file());
  r.fingerprint = training::config_fingerprint(r.cfg, kRunOnlyFields, inputs);
  r.states = std::make_unique<training::StateFolder>(r.out + "/state");
  r.state.set_schema_version(1);
  if (auto dir = r.states->resume_dir(r.fingerprint)) {
    if (!r.state.ParseFromString(read_file(*dir + "/train_state.pb")))
      throw Error(*dir + "/train_state.pb: not a DpoTrainState message");
    auto m = read_manifest(r.out);
    if (m && m->complete() && r.state.step() >= r.total_steps) {
      check_same_start(r, /*finished=*/true);
      return true;
    }
    training::load_tensors(state_tensors(r), *dir + "/model.pt");
    r.opt->load(*dir + "/optimizer.pt", r.device);
    training::load_cpu_rng(*dir + "/rng.pt");
    r.resumed = true;
  }
  check_same_start(r, /*finished=*/false);
  r.manifest = begin_manifest("dpo");
  r.manifest.set_resolved_config(to_text_format(r.cfg));
  r.manifest.set_tokenizer_sha256(r.init.tokenizer.sha256());
  r.manifest.set_vocab_size(r.model->config().vocab_size);
  for (const auto& f : inputs) r.manifest.add_inputs()->CopyFrom(file_ref(f));
  if (!r.comm->is_root()) return false;  // rank 0 alone writes records, metrics and logs
  if (r.on_start) r.on_start(r.manifest);
  r.metrics = std::make_unique<MetricsWriter>(r.out, /*append=*/r.resumed);
  log_start(r);
  return false;
}

// Sums over this rank's pairs of loss, correct, chosen and rejected rewards (loss with graph).
struct LocalSums {
  torch::Tensor loss = torch::zeros({});
  double correct = 0, chosen = 0, rejected = 0;
};

LocalSums pair_sums(DpoRun& r, const Encoded& e, const std::vector<size_t>& pairs) {
  LocalSums s;
  if (pairs.empty()) return s;
  std::vector<size_t> idx;
  std::vector<float> ref_c, ref_r;
  for (size_t k : pairs) idx.push_back(2 * k);
  for (size_t k : pairs) idx.push_back(2 * k + 1);
  for (size_t k : pairs) {
    ref_c.push_back(e.ref[2 * k]);
    ref_r.push_back(e.ref[2 * k + 1]);
  }
  torch::Tensor lp;
  {
    AutocastScope autocast(r.device, r.precision);
    lp = sequence_logps(r.model, e, idx, r.device);
  }
  const auto n = static_cast<int64_t>(pairs.size());
  auto t = pair_losses(lp.narrow(0, 0, n), lp.narrow(0, n, n), torch::tensor(ref_c).to(r.device),
                       torch::tensor(ref_r).to(r.device), r.loss);
  s.loss = t.loss.sum();
  s.correct = (t.chosen_reward > t.rejected_reward).sum().item<double>();
  s.chosen = t.chosen_reward.sum().item<double>();
  s.rejected = t.rejected_reward.sum().item<double>();
  return s;
}

PairStats global_stats(DpoRun& r, const LocalSums& s, double n) {
  const auto g = r.comm->sum({s.loss.item<double>(), s.correct, s.chosen, s.rejected});
  PairStats p;
  p.n = static_cast<int64_t>(n);
  if (n == 0) return p;
  p.loss = g[0] / n;
  p.accuracy = g[1] / n;
  p.chosen_reward = g[2] / n;
  p.rejected_reward = g[3] / n;
  p.margin = p.chosen_reward - p.rejected_reward;
  return p;
}

std::map<std::string, double> named(const std::string& prefix, const PairStats& p) {
  return {{prefix + "loss", p.loss},
          {prefix + "accuracy", p.accuracy},
          {prefix + "chosen_reward", p.chosen_reward},
          {prefix + "rejected_reward", p.rejected_reward},
          {prefix + "margin", p.margin},
          {prefix + "pairs", static_cast<double>(p.n)}};
}

// One optimizer step on a batch: each rank its share of the pairs, loss summed / global count,
// gradients summed over ranks; a rank with no pairs makes the same collectives with zeros.
PairStats train_step(DpoRun& r, const std::vector<size_t>& global_batch) {
  auto [begin, end] =
      dist::shard_range(static_cast<int64_t>(global_batch.size()), r.comm->rank(), r.comm->size());
  const std::vector<size_t> batch(global_batch.begin() + begin, global_batch.begin() + end);
  const double lr = r.schedule.at(r.state.step());
  const auto n_global = static_cast<double>(global_batch.size());
  const size_t micro = r.cfg.micro_batch_pairs() > 0
                           ? static_cast<size_t>(r.cfg.micro_batch_pairs())
                           : std::max<size_t>(1, batch.size());
  r.opt->zero_grad();
  LocalSums s;
  for (size_t i = 0; i < batch.size(); i += micro) {
    const std::vector<size_t> part(
        batch.begin() + static_cast<std::ptrdiff_t>(i),
        batch.begin() + static_cast<std::ptrdiff_t>(std::min(batch.size(), i + micro)));
    if (r.lora) r.lora->refresh(true);  // a fresh graph through the adapters for each pass
    const LocalSums p = pair_sums(r, r.enc_train, part);
    (p.loss / n_global).backward();
    s.loss = s.loss + p.loss.detach().to(torch::kCPU);
    s.correct += p.correct;
    s.chosen += p.chosen;
    s.rejected += p.rejected;
  }
  dist::all_reduce_gradients(*r.comm, r.opt->parameters());
  const double gnorm = r.opt->step(lr);
  r.state.set_step(r.state.step() + 1);
  const PairStats p = global_stats(r, s, n_global);
  if (r.metrics) {
    auto m = named("train/", p);
    m["train/lr"] = lr;
    m["train/grad_norm"] = gnorm;
    r.metrics->write(r.state.step(), m);
  }
  return p;
}

// Held-out statistics of the current policy (every rank its share of the pairs, in chunks).
PairStats evaluate(DpoRun& r) {
  if (r.heldout.empty()) return {};
  if (r.lora) r.lora->refresh(false);
  torch::NoGradGuard ng;
  auto [begin, end] =
      dist::shard_range(static_cast<int64_t>(r.enc_held.pairs()), r.comm->rank(), r.comm->size());
  LocalSums total;
  for (int64_t k = begin; k < end; k += kRefChunk / 2) {
    std::vector<size_t> chunk;
    for (int64_t j = k; j < std::min(end, k + kRefChunk / 2); ++j)
      chunk.push_back(static_cast<size_t>(j));
    LocalSums s = pair_sums(r, r.enc_held, chunk);
    total.loss = total.loss + s.loss.to(torch::kCPU);
    total.correct += s.correct;
    total.chosen += s.chosen;
    total.rejected += s.rejected;
  }
  const PairStats p = global_stats(r, total, static_cast<double>(r.heldout.size()));
  if (r.metrics) r.metrics->write(r.state.step(), named("eval/", p));
  if (r.comm->is_root())
    std::fprintf(stderr, "dpo: step %lld held-out loss %.4f accuracy %.4f margin %.4f\n",
                 static_cast<long long>(r.state.step()), p.loss, p.accuracy, p.margin);
  return p;
}

// model/ (merged with LoRA) with the tokenizer's files, adapter/, and the stage record's content.
void write_outputs(DpoRun& r, DpoResult& res) {
  CheckpointInfo info;
  info.tokenizer_sha256 = r.init.tokenizer.sha256();
  info.kind = "policy";
  info.created_by = "dpo";
  info.step = r.state.step();
  r.model->to(torch::kCPU);
  if (r.lora) {
    r.lora->save(r.out + "/adapter");
    r.lora->merge();
    r.lora.reset();
  }
  store_matrices_as(r.model, torch::kFloat);
  save_checkpoint(r.model, res.model_dir, info);
  r.init.tokenizer.save(res.model_dir);
  res.wall_seconds = r.elapsed();
  auto& m = r.manifest;
  *m.add_outputs() = file_ref(res.model_dir + "/model.safetensors");
  *m.add_outputs() = file_ref(res.model_dir + "/checkpoint.pb");
  if (file_exists(r.out + "/adapter/adapter_model.safetensors"))
    *m.add_outputs() = file_ref(r.out + "/adapter/adapter_model.safetensors");
  auto& mm = *m.mutable_metrics();
  mm["steps"] = static_cast<double>(res.steps);
  mm["train_pairs"] = static_cast<double>(r.train.size());
  for (const auto& [k, v] : named("heldout_", res.heldout)) mm[k] = v;
  for (const auto& [k, v] : named("final_train_", res.last_train)) mm[k] = v;
  res.manifest = m;
}

DpoResult finished_result(const DpoRun& r) {
  DpoResult res;
  res.out_dir = r.out;
  res.model_dir = r.out + "/model";
  res.already_complete = true;
  auto m = read_manifest(r.out);
  auto metric = [&](const std::string& k) {
    return m->metrics().count(k) ? m->metrics().at(k) : 0.0;
  };
  res.steps = static_cast<int64_t>(metric("steps"));
  res.heldout = {metric("heldout_loss"),          metric("heldout_accuracy"),
                 metric("heldout_chosen_reward"), metric("heldout_rejected_reward"),
                 metric("heldout_margin"),        static_cast<int64_t>(metric("heldout_pairs"))};
  return res;
}

}  // namespace

DpoResult train_dpo(const proto::DpoConfig& config, const StageStarted& on_start) {
  DpoRun r;
  r.on_start = on_start;
  prepare(r, config);
  make_dirs(r.out);
  if (resume_or_start(r)) return finished_result(r);
  DpoResult res;
  res.out_dir = r.out;
  res.model_dir = r.out + "/model";
  std::optional<Progress> progress;
  if (r.comm->is_root()) progress.emplace("dpo", r.total_steps, "step");
  while (r.state.step() < r.total_steps) {
    const auto batches = reward::make_batches(
        r.train, r.cfg.batch_pairs(), r.cfg.seed() + static_cast<uint64_t>(r.state.epoch()));
    for (auto bi = r.state.batch_in_epoch(); bi < static_cast<int64_t>(batches.size()); ++bi) {
      res.last_train = train_step(r, batches[static_cast<size_t>(bi)]);
      r.state.set_batch_in_epoch(bi + 1);
      char extra[64];
      std::snprintf(extra, sizeof extra, "loss %.4f acc %.2f", res.last_train.loss,
                    res.last_train.accuracy);
      if (progress) progress->update(r.state.step(), extra);
      const bool last = r.state.step() == r.total_steps;
      if (r.state.step() % r.cfg.eval_every() == 0 || last) res.heldout = evaluate(r);
      if (r.cfg.stop_after() > 0 && r.state.step() >= r.cfg.stop_after() && !last) {
        res.interrupted = true;  // simulated kill: leave without saving anything more
        res.steps = r.state.step();
        if (progress) progress->finish("stopped (stop_after)");
        return res;
      }
      if (r.state.step() % r.cfg.save_every() == 0 || last) save_state(r);
      if (last) break;
    }
    if (r.state.step() < r.total_steps) {
      r.state.set_epoch(r.state.epoch() + 1);
      r.state.set_batch_in_epoch(0);
    }
  }
  if (progress) progress->finish();
  // Resumed from the last step's state (stopped before the stage record was written): the final
  // policy's held-out numbers are taken now.
  if (r.resumed && res.heldout.n == 0) res.heldout = evaluate(r);
  res.steps = r.state.step();
  if (r.comm->is_root()) write_outputs(r, res);
  return res;
}

}  // namespace rlhf::policy::dpo
