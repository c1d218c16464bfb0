#include "reward/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <sstream>
#include <unordered_map>

#include "common/error.h"
#include "common/files.h"
#include "common/manifest.h"
#include "common/metrics.h"
#include "common/progress.h"
#include "common/text_config.h"
#include "policy/model/checkpoint.h"
#include "policy/model/lora.h"
#include "policy/runtime/device.h"
#include "policy/runtime/distributed.h"
#include "policy/tokenizer/tokenizer.h"
#include "policy/training/lr_schedule.h"
#include "policy/training/training.h"
#include "reward/chat_renderer.h"
#include "reward/comparisons.h"
#include "reward/reward_model.h"
#include "reward/train_config.h"

namespace rlhf::reward {

namespace fs = std::filesystem;

namespace {

// Unique token sequences of a set of comparisons, and each comparison as (chosen, rejected)
// indices into them.
struct EncodedComparisons {
  std::vector<std::vector<int64_t>> sequences;
  std::vector<std::pair<size_t, size_t>> pairs;
};

EncodedComparisons encode_comparisons(const std::vector<Comparison>& cs,
                                      const policy::Tokenizer& tok, int bos, int eos,
                                      const EncodeOptions& opts) {
  EncodedComparisons out;
  std::unordered_map<std::string, std::vector<int>> prompt_cache;
  std::unordered_map<std::string, size_t> seq_index;
  auto index_of = [&](const std::string& prompt, const std::string& answer) {
    std::string key = prompt;
    key.push_back('\0');
    key += answer;
    auto it = seq_index.find(key);
    if (it != seq_index.end()) return it->second;
    auto pit = prompt_cache.find(prompt);
    if (pit == prompt_cache.end()) pit = prompt_cache.emplace(prompt, tok.encode(prompt)).first;
    out.sequences.push_back(build_sequence(pit->second, tok.encode(answer), bos, eos, opts));
    seq_index.emplace(std::move(key), out.sequences.size() - 1);
    return out.sequences.size() - 1;
  };
  for (const auto& c : cs) {
    size_t a = index_of(c.prompt, c.chosen);
    size_t b = index_of(c.prompt, c.rejected);
    out.pairs.emplace_back(a, b);
  }
  return out;
}

// Scores of all sequences, each rank scoring its contiguous share (all of them when alone).
std::vector<float> sharded_scores(policy::Transformer& model,
                                  const std::vector<std::vector<int64_t>>& sequences,
                                  const torch::Device& device, policy::dist::Comm& comm) {
  if (comm.alone()) return score_sequences(model, sequences, 32, device);
  auto [begin, end] =
      policy::dist::shard_range(static_cast<int64_t>(sequences.size()), comm.rank(), comm.size());
  const std::vector<std::vector<int64_t>> mine(sequences.begin() + begin, sequences.begin() + end);
  const auto scores = score_sequences(model, mine, 32, device);
  const auto parts = comm.all_gather_bytes(
      std::string(reinterpret_cast<const char*>(scores.data()), scores.size() * sizeof(float)));
  std::vector<float> all;
  for (const auto& p : parts) {
    const auto* f = reinterpret_cast<const float*>(p.data());
    all.insert(all.end(), f, f + p.size() / sizeof(float));
  }
  return all;
}

PairMetrics evaluate_encoded(policy::Transformer& model, const EncodedComparisons& enc,
                             const torch::Device& device, double margin, policy::dist::Comm& comm) {
  auto scores = sharded_scores(model, enc.sequences, device, comm);
  std::vector<float> ch, rj;
  for (const auto& [a, b] : enc.pairs) {
    ch.push_back(scores[a]);
    rj.push_back(scores[b]);
  }
  return pair_metrics(ch, rj, margin);
}

// ---- the run -----------------------------------------------------------------------------------

// Everything one reward-model run holds; the phases below read and advance it.
struct RewardRun {
  proto::RewardTrainConfig cfg;
  std::string out, best_dir;
  torch::Device device{torch::kCPU};
  policy::Precision precision = policy::Precision::kFp32;  // bf16: autocast training forwards
  policy::dist::Comm* comm = nullptr;  // the ranks sharing each batch of pairs (one when alone)
  std::vector<Comparison> train, heldout;
  EncodeOptions enc_opts;
  policy::training::InitialModel init;
  policy::Transformer model{nullptr};
  std::unique_ptr<policy::LoraAdapters> lora;
  std::unique_ptr<policy::training::Optimizer> opt;
  policy::LrSchedule schedule;
  EncodedComparisons enc_train, enc_held;
  int64_t total_steps = 0;
  std::unique_ptr<policy::training::StateFolder> states;
  std::string fingerprint;
  proto::RewardTrainState state;
  bool resumed = false;
  proto::StageManifest manifest;  // the stage record's content (pipelines/ writes it)
  StageStarted on_start;
  std::unique_ptr<MetricsWriter> metrics;
  std::chrono::steady_clock::time_point t0;
  double elapsed() const {
    return state.elapsed_seconds() +
           std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
};

const std::vector<std::string> kRewardRunOnlyFields = {"out_dir", "threads", "device", "dtype",
                                                       "time_limit_seconds"};

void load_comparisons(RewardRun& r) {
  const auto& c = r.cfg;
  const ChatRenderer render =
      c.format() == "messages" ? chat_renderer_beside(r.init.tokenizer, "reward config") : nullptr;
  auto all = read_comparisons(c.train_file(), c.format(), render);
  if (all.empty()) throw Error(c.train_file() + ": no comparisons (empty, or only ties)");
  if (!c.eval_file().empty()) {
    r.train = std::move(all);
    r.heldout = read_comparisons(c.eval_file(), c.format(), render);
  } else {
    split_heldout(all, c.heldout_fraction(), c.split_seed(), &r.train, &r.heldout);
  }
  if (c.max_pairs() > 0 && static_cast<int64_t>(r.train.size()) > c.max_pairs())
    r.train.resize(static_cast<size_t>(c.max_pairs()));
  if (r.train.empty()) throw Error(c.train_file() + ": no training comparisons after the split");
}

// The backbone from init_from (or from scratch), a fresh scalar head, LoRA when configured.
void init_reward_model(RewardRun& r) {
  const auto& c = r.cfg;
  policy::training::ModelSource src;
  src.init_from = c.init_from();
  src.tokenizer = c.tokenizer();
  src.scratch = c.model();
  src.seq_len = r.enc_opts.max_prompt_tokens + r.enc_opts.max_answer_tokens + 2;
  src.fail_on_long_rows = true;
  src.value_head = true;
  src.what = "reward config";
  const bool frozen_base = c.has_lora() && c.lora().rank() > 0;
  // bf16 with LoRA: a checkpoint's frozen base is read straight into bfloat16 (no float32 copy).
  src.load = policy::frozen_base_load_options(r.precision == policy::Precision::kBf16, frozen_base);
  r.init = policy::training::init_model(src);
  r.model = r.init.model;
  {
    // Scalar head: small random weights, zero bias (Stiennon et al. 2020 init the head with
    // std 1/sqrt(d_model + 1)).
    torch::NoGradGuard ng;
    r.model->value_head->weight.normal_(0.0, 1.0 / std::sqrt(r.model->config().dim + 1.0));
    if (r.model->value_head->bias.defined()) r.model->value_head->bias.zero_();
  }
  r.model->to(r.device);
  r.model->train();
  if (frozen_base) {
    policy::LoraOptions lo = policy::LoraOptions::from_proto(c.lora());
    try {
      lo.validate();
    } catch (const Error& e) {
      throw Error(std::string("reward config: field 'lora': ") + e.what());
    }
    // bf16: the frozen projection matrices and embedding table stay bfloat16 (no float32 copy; a
    // no-op for a checkpoint loaded so); the adapters, norms, biases and scalar head are float32.
    if (r.precision == policy::Precision::kBf16)
      policy::store_matrices_as(r.model, torch::kBFloat16,
                                policy::StoredWeights::kMatricesAndEmbeddings);
    // Frozen backbone; the adapters and the scalar head train.
    r.lora = std::make_unique<policy::LoraAdapters>(r.model, lo);
    for (auto& p : r.model->value_head->parameters()) p.set_requires_grad(true);
  }
}

// Config, data, model, optimizer, schedule, encoded sequences.
void prepare(RewardRun& r, const proto::RewardTrainConfig& config) {
  r.t0 = std::chrono::steady_clock::now();
  r.cfg = config;
  r.cfg = resolved_train_config(r.cfg);
  const auto& c = r.cfg;
  validate_config(c, "reward config");
  const ConfigErrors errors(c, "reward config");
  if (c.out_dir().empty())
    errors.fail("out_dir", "expected an output folder (or --out DIR)", "\"\"");
  if (c.train_file().empty())
    errors.fail("train_file", "expected a comparisons file (or annotation_db)", "\"\"");
  r.out = c.out_dir();
  r.best_dir = r.out + "/best";
  torch::manual_seed(c.seed());
  const policy::training::Placement place =
      policy::training::place_trainer(c.device(), c.dtype(), c.threads(), "reward config");
  r.device = place.device;
  r.precision = place.precision;
  r.comm = place.comm;
  if (c.batch_pairs() < r.comm->size())
    errors.fail(
        "batch_pairs",
        "expected at least one pair per rank (" + std::to_string(r.comm->size()) + " ranks)",
        std::to_string(c.batch_pairs()));
  r.enc_opts.max_prompt_tokens = c.max_prompt_tokens();
  r.enc_opts.max_answer_tokens = c.max_answer_tokens();
  // Format "messages" needs the tokenizer's folder (its chat template), so its data are read
  // after the model; the other formats are read first, to fail before a model loads.
  const bool needs_template = c.format() == "messages";
  if (!needs_template) load_comparisons(r);
  init_reward_model(r);
  if (needs_template) load_comparisons(r);

  // With LoRA: the scalar head, then the adapters (the backbone is frozen).
  r.opt = std::make_unique<policy::training::Optimizer>(
      policy::training::trainable_parameters(*r.model, r.lora.get()),
      policy::training::applied_settings(c.optimizer(),
                                         policy::training::OptimizerDefaults::kSupervised),
      c.embedding_lr_scale());

  const int bos = r.model->config().bos_id, eos = r.model->config().eos_id;
  r.enc_train = encode_comparisons(r.train, r.init.tokenizer, bos, eos, r.enc_opts);
  r.enc_held = encode_comparisons(r.heldout, r.init.tokenizer, bos, eos, r.enc_opts);
  const auto n_batches =
      static_cast<int64_t>(make_batches(r.train, c.batch_pairs(), c.seed()).size());
  r.total_steps =
      c.steps() > 0 ? c.steps()
                    : std::max<int64_t>(1, static_cast<int64_t>(std::ceil(c.epochs() * n_batches)));
  r.schedule = policy::training::make_schedule(c.optimizer(), r.total_steps,
                                               policy::training::OptimizerDefaults::kSupervised);
}

policy::training::NamedTensors state_tensors(RewardRun& r) {
  return policy::training::state_tensors(*r.model, r.lora.get());
}

void save_state(RewardRun& r) {
  if (!r.comm->is_root()) return;  // rank 0 alone writes
  r.state.set_config_sha256(r.fingerprint);
  r.state.set_elapsed_seconds(r.elapsed());
  r.t0 = std::chrono::steady_clock::now();
  r.states->save(policy::training::step_name(r.state.step()), r.fingerprint,
                 [&](const std::string& dir) {
                   policy::training::save_tensors(state_tensors(r), dir + "/model.pt");
                   r.opt->save(dir + "/optimizer.pt");
                   policy::training::save_cpu_rng(dir + "/rng.pt");
                   write_file_atomic(dir + "/train_state.pb", r.state.SerializeAsString());
                 });
}

// Every rank starts where rank 0 does (policy::training::check_same_start; nothing when alone).
void check_same_start(RewardRun& r, bool finished) {
  policy::training::check_same_start(
      *r.comm, "reward train", r.out,
      {r.fingerprint, r.state.step(),
       finished ? "finished"
                : "epoch " + std::to_string(r.state.epoch()) + ", batch " +
                      std::to_string(r.state.batch_in_epoch())},
      finished ? policy::training::NamedTensors{} : state_tensors(r));
}

// The resume rule (policy/training/training.h). Returns true when the folder already holds the
// finished run of this config.
bool resume_or_start(RewardRun& r) {
  std::vector<std::string> inputs = r.init.files;
  inputs.push_back(r.cfg.train_file());
  if (!r.cfg.eval_file().empty()) inputs.push_back(r.cfg.eval_file());
  r.fingerprint = policy::training::config_fingerprint(r.cfg, kRewardRunOnlyFields, inputs);
  r.states = std::make_unique<policy::training::StateFolder>(r.out + "/state");
  r.state.set_schema_version(1);
  r.state.set_best_accuracy(-1);
  if (auto dir = r.states->resume_dir(r.fingerprint)) {
    if (!r.state.ParseFromString(read_file(*dir + "/train_state.pb")))
      throw Error(*dir + "/train_state.pb: not a RewardTrainState message");
    auto m = read_manifest(r.out);
    if (m && m->complete() && r.state.step() >= r.total_steps) {
      check_same_start(r, /*finished=*/true);
      return true;
    }
    policy::training::load_tensors(state_tensors(r), *dir + "/model.pt");
    r.opt->load(*dir + "/optimizer.pt", r.device);
    policy::training::load_cpu_rng(*dir + "/rng.pt");
    r.resumed = true;
  }
  check_same_start(r, /*finished=*/false);
  // Written only now: a refused resume or bad data/config leaves the manifest of a finished run
  // as it was; from here on the folder holds an unfinished run.
  r.manifest = begin_manifest("reward");
  r.manifest.set_resolved_config(to_text(r.cfg));
  r.manifest.set_tokenizer_sha256(r.init.tokenizer.sha256());
  r.manifest.set_vocab_size(r.model->config().vocab_size);
  for (const auto& f : inputs) r.manifest.add_inputs()->CopyFrom(file_ref(f));
  if (!r.comm->is_root()) return false;    // rank 0 alone writes records, metrics and logs
  if (r.on_start) r.on_start(r.manifest);  // the stage marks its folder unfinished
  r.metrics = std::make_unique<MetricsWriter>(r.out, /*append=*/r.resumed);
  std::fprintf(
      stderr,
      "reward train: %zu train / %zu held-out comparisons, %zu + %zu sequences, "
      "%lld steps, %.2fM parameters%s%s%s\n",
      r.train.size(), r.heldout.size(), r.enc_train.sequences.size(), r.enc_held.sequences.size(),
      static_cast<long long>(r.total_steps), r.model->config().num_parameters() / 1e6,
      r.resumed ? " (resumed)" : "",
      r.lora
          ? (", LoRA: " + std::to_string(r.lora->num_parameters()) + " adapter parameters").c_str()
          : "",
      r.comm->alone() ? "" : (", " + std::to_string(r.comm->size()) + " ranks").c_str());
  return false;
}

// One optimizer step on the batch's comparisons: every answer scored once, loss
// -log sigmoid(r_chosen - r_rejected - margin) averaged over the pairs. Each rank takes its share
// of the pairs and divides by the global count, and the gradients are summed over ranks, so N
// ranks step as one process does. Returns the progress text.
std::string train_step(RewardRun& r, const std::vector<size_t>& global_batch) {
  auto [begin, end] = policy::dist::shard_range(static_cast<int64_t>(global_batch.size()),
                                                r.comm->rank(), r.comm->size());
  const std::vector<size_t> batch(global_batch.begin() + begin, global_batch.begin() + end);
  std::unordered_map<size_t, int64_t> local;
  std::vector<std::vector<int64_t>> seqs;
  std::vector<int64_t> ci, ri;
  for (size_t k : batch) {
    auto [a, b] = r.enc_train.pairs[k];
    for (size_t s : {a, b})
      if (local.emplace(s, static_cast<int64_t>(seqs.size())).second)
        seqs.push_back(r.enc_train.sequences[s]);
    ci.push_back(local[a]);
    ri.push_back(local[b]);
  }
  const double lr = r.schedule.at(r.state.step());
  const double n_global = static_cast<double>(global_batch.size());
  // A rank whose share is empty (the last batch of an epoch can hold fewer pairs than there are
  // ranks) adds nothing: no forward, zero gradients and zero sums, but the same collectives.
  torch::Tensor d = torch::zeros({0}), loss = torch::zeros({});
  if (r.lora) r.lora->refresh(true);  // fresh graph through the adapters
  if (!seqs.empty()) {
    auto pb = pad_batch(seqs, r.model->config().pad_id);
    torch::Tensor scores;
    {
      policy::AutocastScope autocast(r.device, r.precision);
      scores = score_batch(r.model, pb.ids.to(r.device), pb.mask.to(r.device));
    }
    d = scores.index_select(0, torch::tensor(ci).to(r.device)) -
        scores.index_select(0, torch::tensor(ri).to(r.device));
    loss = -torch::log_sigmoid(d - r.cfg.margin()).sum() / n_global;
  }
  r.opt->zero_grad();
  if (!seqs.empty()) loss.backward();
  policy::dist::all_reduce_gradients(*r.comm, r.opt->parameters());
  const double gnorm = r.opt->step(lr);
  r.state.set_step(r.state.step() + 1);
  const auto sums =
      r.comm->sum({loss.item<double>(), (d > 0).sum().item<double>(), d.sum().item<double>()});
  const double loss_v = sums[0], acc = sums[1] / n_global;
  if (r.metrics)
    r.metrics->write(r.state.step(), {{"train/loss", loss_v},
                                      {"train/accuracy", acc},
                                      {"train/mean_margin", sums[2] / n_global},
                                      {"train/lr", lr},
                                      {"train/grad_norm", gnorm},
                                      {"train/pairs", n_global}});
  char extra[64];
  std::snprintf(extra, sizeof extra, "loss %.4f acc %.2f", loss_v, acc);
  return extra;
}

// Held-out metrics now; best/ keeps the checkpoint of the best accuracy so far (with no
// held-out comparisons, the latest: the final model is what is kept).
void evaluate_and_keep_best(RewardRun& r) {
  if (r.lora) r.lora->refresh(false);  // the weights after the last optimizer step
  policy::AutocastScope autocast(r.device, r.precision);
  PairMetrics m = r.heldout.empty()
                      ? PairMetrics{}
                      : evaluate_encoded(r.model, r.enc_held, r.device, r.cfg.margin(), *r.comm);
  r.model->train();
  if (!r.comm->is_root()) return;  // the same metrics on every rank; rank 0 logs and keeps best/
  r.metrics->write(r.state.step(), {{"eval/accuracy", m.accuracy},
                                    {"eval/loss", m.loss},
                                    {"eval/mean_margin", m.mean_margin},
                                    {"eval/ece", m.ece}});
  std::fprintf(stderr,
               "reward train: step %lld held-out accuracy %.4f loss %.4f margin %.3f (n=%lld)\n",
               static_cast<long long>(r.state.step()), m.accuracy, m.loss, m.mean_margin,
               static_cast<long long>(m.n));
  if (!r.heldout.empty() && m.accuracy <= r.state.best_accuracy() && fs::exists(r.best_dir)) return;
  r.state.set_best_accuracy(static_cast<float>(m.accuracy));
  r.state.set_best_step(r.state.step());
  policy::CheckpointInfo info;
  info.kind = "reward";
  info.created_by = "rlhf reward train (best)";
  info.step = r.state.step();
  info.tokenizer_sha256 = r.init.tokenizer.sha256();
  policy::save_checkpoint(r.model, r.best_dir, info);
  if (r.lora) r.lora->save(r.best_dir + "/adapter");
}

// True when the frozen base is held in bfloat16 (dtype bf16 with LoRA): best/ then holds the
// bfloat16 effective weights (base + update rounded to bfloat16).
bool bf16_frozen_base(const RewardRun& r) {
  return r.lora && r.precision == policy::Precision::kBf16;
}

// The float32 reward model of best/ for a bfloat16 frozen base, as SFT writes it: best/'s adapters
// and scalar head on the live base, merged (the update folded into float32 matrices), every
// weight widened to float32, copied into a new model (the live one's fused-weight caches hold
// the bfloat16 matrices). Ends the adapters and releases the live model.
policy::Transformer merged_best(RewardRun& r) {
  const policy::Transformer saved =
      policy::load_checkpoint(r.best_dir, policy::frozen_base_load_options(true, true)).model;
  {
    torch::NoGradGuard ng;
    r.model->value_head->weight.copy_(saved->value_head->weight);
    if (r.model->value_head->bias.defined())
      r.model->value_head->bias.copy_(saved->value_head->bias);
  }
  r.lora->load(r.best_dir + "/adapter");
  r.lora->merge();
  r.lora.reset();
  policy::store_matrices_as(r.model, torch::kFloat);  // checkpoints are float32
  policy::Transformer best(r.model->config());
  best->to(r.device);
  {
    torch::NoGradGuard ng;
    const auto live = r.model->named_parameters();
    for (auto& p : best->named_parameters()) p.value().copy_(live[p.key()]);
  }
  r.model = r.init.model = policy::Transformer{nullptr};
  return best;
}

// Keeps best/, shifts its scores to mean 0 over the training answers (offset folded into the
// head bias), saves model/ and completes the stage record's content.
TrainResult write_outputs(RewardRun& r) {
  // With LoRA, checkpoints hold the effective (merged) weights already, so `best` is a plain model
  // (with a bfloat16 base, merged again in float32 from best/'s adapters: merged_best).
  const bool bf16_base = bf16_frozen_base(r);
  if (!bf16_base) r.lora.reset();
  r.comm->barrier();  // rank 0 has written best/
  policy::Transformer best = bf16_base ? merged_best(r) : policy::load_checkpoint(r.best_dir).model;
  best->to(r.device);
  auto train_scores = sharded_scores(best, r.enc_train.sequences, r.device, *r.comm);
  double offset = 0;
  for (float s : train_scores) offset += s;
  offset /= std::max<size_t>(1, train_scores.size());
  const bool folded = best->value_head->bias.defined();
  if (folded) {
    torch::NoGradGuard ng;
    best->value_head->bias.sub_(offset);
  }
  TrainResult result;
  // Differences of scores (all the pairwise metrics use) do not depend on the shift.
  result.heldout = r.heldout.empty()
                       ? PairMetrics{}
                       : evaluate_encoded(best, r.enc_held, r.device, r.cfg.margin(), *r.comm);
  result.best_step = r.state.best_step();
  result.steps = r.state.step();
  result.score_offset = offset;
  result.model_dir = r.out + "/model";
  if (!r.comm->is_root()) return result;  // rank 0 alone writes the model and the record
  proto::RewardModelMeta meta;
  meta.set_score_offset(static_cast<float>(offset));
  meta.set_offset_folded(folded);
  meta.set_max_prompt_tokens(r.enc_opts.max_prompt_tokens);
  meta.set_max_answer_tokens(r.enc_opts.max_answer_tokens);
  meta.set_heldout_accuracy(static_cast<float>(result.heldout.accuracy));
  meta.set_offset_answers(static_cast<int32_t>(train_scores.size()));
  best->to(torch::kCPU);
  save_reward_model(best, r.init.tokenizer_path, meta, result.model_dir, r.state.best_step());

  for (const char* f : {"model.safetensors", "checkpoint.pb", "config.json", "reward.pb",
                        "tokenizer.model", "tokenizer.json", "tokenizer_config.json"}) {
    std::string p = result.model_dir + "/" + f;
    if (!file_exists(p)) continue;
    auto ref = file_ref(p);
    ref.set_path(std::string("model/") + f);
    r.manifest.add_outputs()->CopyFrom(ref);
  }
  auto& mm = *r.manifest.mutable_metrics();
  mm["heldout_accuracy"] = result.heldout.accuracy;
  mm["heldout_loss"] = result.heldout.loss;
  mm["heldout_mean_margin"] = result.heldout.mean_margin;
  mm["heldout_ece"] = result.heldout.ece;
  mm["heldout_pairs"] = static_cast<double>(result.heldout.n);
  mm["train_pairs"] = static_cast<double>(r.train.size());
  mm["best_step"] = static_cast<double>(result.best_step);
  mm["steps"] = static_cast<double>(result.steps);
  mm["score_offset"] = offset;
  result.wall_seconds = r.elapsed();
  result.manifest = r.manifest;  // the stage layer writes it (pipelines/stage_record.h)
  r.metrics->write(r.state.step(), {{"final/heldout_accuracy", result.heldout.accuracy},
                                    {"final/score_offset", offset}});
  return result;
}

// The finished run already in the folder (same fingerprint): its numbers from the manifest.
TrainResult finished_result(const RewardRun& r) {
  TrainResult result;
  auto m = read_manifest(r.out);
  auto metric = [&](const char* k) { return m->metrics().count(k) ? m->metrics().at(k) : 0.0; };
  result.heldout.accuracy = metric("heldout_accuracy");
  result.heldout.loss = metric("heldout_loss");
  result.heldout.mean_margin = metric("heldout_mean_margin");
  result.heldout.ece = metric("heldout_ece");
  result.heldout.n = static_cast<int64_t>(metric("heldout_pairs"));
  result.best_step = static_cast<int64_t>(metric("best_step"));
  result.steps = static_cast<int64_t>(metric("steps"));
  result.score_offset = metric("score_offset");
  result.model_dir = r.out + "/model";
  result.already_complete = true;
  return result;
}

}  // namespace

TrainResult train_reward_model(const proto::RewardTrainConfig& config,
                               const StageStarted& on_start) {
  RewardRun r;
  r.on_start = on_start;
  prepare(r, config);
  make_dirs(r.out);
  if (resume_or_start(r)) return finished_result(r);

  std::optional<Progress> progress;
  if (r.comm->is_root()) progress.emplace("reward train", r.total_steps, "step");
  bool time_up = false;
  while (r.state.step() < r.total_steps && !time_up) {
    const auto batches = make_batches(r.train, r.cfg.batch_pairs(),
                                      r.cfg.seed() + static_cast<uint64_t>(r.state.epoch()));
    for (auto bi = r.state.batch_in_epoch(); bi < static_cast<int64_t>(batches.size()); ++bi) {
      const std::string extra = train_step(r, batches[static_cast<size_t>(bi)]);
      r.state.set_batch_in_epoch(bi + 1);
      if (progress) progress->update(r.state.step(), extra);
      const bool last = r.state.step() == r.total_steps;
      time_up = r.cfg.time_limit_seconds() > 0 &&
                r.comm->sum(r.elapsed() >= r.cfg.time_limit_seconds() ? 1.0 : 0.0) > 0;
      if (r.state.step() % r.cfg.eval_every() == 0 || last || time_up) evaluate_and_keep_best(r);
      if (r.state.step() % r.cfg.save_every() == 0 || last || time_up) save_state(r);
      if (last || time_up) break;
    }
    if (r.state.step() < r.total_steps && !time_up) {
      r.state.set_epoch(r.state.epoch() + 1);
      r.state.set_batch_in_epoch(0);
    }
  }
  if (progress) progress->finish();
  if (time_up && r.comm->is_root())
    std::fprintf(stderr, "reward train: time limit %.0fs reached at step %lld of %lld\n",
                 r.cfg.time_limit_seconds(), static_cast<long long>(r.state.step()),
                 static_cast<long long>(r.total_steps));
  // Rank 0's view decides (it writes best/), so every rank makes the same collective calls.
  if (r.comm->sum(r.comm->is_root() && !fs::exists(r.best_dir) ? 1.0 : 0.0) > 0)
    evaluate_and_keep_best(r);
  return write_outputs(r);
}

}  // namespace rlhf::reward
