#include "reward/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <unordered_map>

#include "annotation/import_export.h"
#include "common/error.h"
#include "common/files.h"
#include "common/manifest.h"
#include "common/metrics.h"
#include "common/progress.h"
#include "policy/checkpoint.h"
#include "policy/lora.h"
#include "policy/tokenizer.h"
#include "reward/comparisons.h"
#include "reward/reward_model.h"
#include "reward/train_config.h"

namespace rlhf::reward {

namespace fs = std::filesystem;

double warmup_cosine_lr(int64_t step, int64_t total_steps, int64_t warmup, double lr,
                        double min_ratio) {
  if (warmup > 0 && step < warmup) return lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  int64_t decay = std::max<int64_t>(1, total_steps - warmup);
  double t = std::min(1.0, static_cast<double>(step - warmup) / static_cast<double>(decay));
  double cosine = 0.5 * (1.0 + std::cos(M_PI * t));
  return lr * (min_ratio + (1.0 - min_ratio) * cosine);
}

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

PairMetrics evaluate_encoded(policy::Transformer& model, const EncodedComparisons& enc,
                             const torch::Device& device, double margin) {
  auto scores = score_sequences(model, enc.sequences, 32, device);
  std::vector<float> ch, rj;
  for (const auto& [a, b] : enc.pairs) {
    ch.push_back(scores[a]);
    rj.push_back(scores[b]);
  }
  return pair_metrics(ch, rj, margin);
}

policy::ModelConfig scratch_config(const proto::ModelConfig& p, const policy::Tokenizer& tok,
                                   int seq_len) {
  policy::ModelConfig mc;
  if (p.dim()) mc.dim = p.dim();
  if (p.n_layers()) mc.n_layers = p.n_layers();
  if (p.n_heads()) mc.n_heads = p.n_heads();
  mc.n_kv_heads = p.n_kv_heads() ? p.n_kv_heads() : mc.n_heads;
  if (p.hidden_dim()) mc.hidden_dim = p.hidden_dim();
  mc.max_seq_len = p.max_seq_len() ? p.max_seq_len() : seq_len;
  if (p.norm_eps() > 0) mc.norm_eps = p.norm_eps();
  if (p.rope_theta() > 0) mc.rope_theta = p.rope_theta();
  mc.tie_embeddings = p.tie_embeddings();
  mc.vocab_size = p.vocab_size() ? p.vocab_size() : tok.vocab_size();
  mc.bos_id = tok.bos_id();
  mc.eos_id = tok.eos_id();
  mc.pad_id = tok.pad_id() >= 0 ? tok.pad_id() : 0;
  mc.value_head = true;
  return mc;
}

std::string config_fingerprint(proto::RewardTrainConfig c) {
  // Fields that may change between a run and its resumption.
  c.clear_out_dir();
  c.clear_time_limit_seconds();
  c.clear_threads();
  c.clear_device();
  return sha256_hex(to_text(c));
}

void save_text_proto(const google::protobuf::Message& m, const std::string& path) {
  std::string bin;
  m.SerializeToString(&bin);
  write_file_atomic(path, bin);
}

}  // namespace

TrainResult train_reward_model(proto::RewardTrainConfig cfg, bool resume) {
  auto t0 = std::chrono::steady_clock::now();
  cfg = resolved_train_config(cfg);
  validate_config(cfg, "reward config");
  if (cfg.out_dir().empty()) throw Error("reward config: out_dir is empty (give --out DIR)");
  const std::string out = cfg.out_dir();
  make_dirs(out);
  if (!cfg.annotation_db().empty()) {
    // Rankings -> pairs through the annotation module's export (ties give no pairs).
    try {
      annotation::StoreOptions so;
      so.create = false;
      annotation::Store store(cfg.annotation_db(), so);
      std::ostringstream pairs;
      annotation::export_jsonl(store, "pairs", pairs);
      write_file_atomic(out + "/comparisons.jsonl", pairs.str());
    } catch (...) {
      rethrow_with_context("exporting comparisons from " + cfg.annotation_db());
    }
    cfg.set_train_file(out + "/comparisons.jsonl");
    cfg.set_format("pairs");
  }
  if (cfg.train_file().empty())
    throw Error("reward config: field 'train_file' (or 'annotation_db') is required");
  const std::string state_dir = out + "/state", best_dir = out + "/best";
  if (cfg.threads() > 0) torch::set_num_threads(cfg.threads());
  torch::manual_seed(cfg.seed());
  torch::Device device(cfg.device());
  if (device.is_cuda() && !torch::cuda::is_available())
    throw Error("reward config: device '" + cfg.device() + "' but CUDA is not available");

  proto::StageManifest manifest = begin_manifest("reward");
  manifest.set_resolved_config(to_text(cfg));

  // ---- data ----
  std::vector<Comparison> train, heldout;
  {
    auto all = read_comparisons(cfg.train_file(), cfg.format());
    if (all.empty()) throw Error(cfg.train_file() + ": no comparisons (empty, or only ties)");
    if (!cfg.eval_file().empty()) {
      train = std::move(all);
      heldout = read_comparisons(cfg.eval_file(), cfg.format());
    } else {
      split_heldout(all, cfg.heldout_fraction(), cfg.split_seed(), &train, &heldout);
    }
    if (cfg.max_pairs() > 0 && static_cast<int64_t>(train.size()) > cfg.max_pairs())
      train.resize(static_cast<size_t>(cfg.max_pairs()));
    if (train.empty()) throw Error(cfg.train_file() + ": no training comparisons after the split");
  }
  manifest.add_inputs()->CopyFrom(file_ref(cfg.train_file()));
  if (!cfg.eval_file().empty()) manifest.add_inputs()->CopyFrom(file_ref(cfg.eval_file()));

  // ---- tokenizer + model ----
  std::string tok_path = cfg.tokenizer();
  if (tok_path.empty() && !cfg.init_from().empty() &&
      file_exists(cfg.init_from() + "/tokenizer.model"))
    tok_path = cfg.init_from() + "/tokenizer.model";
  if (tok_path.empty())
    throw Error("reward config: field 'tokenizer' is required (no tokenizer.model in init_from)");
  policy::Tokenizer tok = policy::Tokenizer::load(tok_path);
  manifest.add_inputs()->CopyFrom(file_ref(tok_path));
  manifest.set_tokenizer_sha256(tok.sha256());

  EncodeOptions enc_opts;
  enc_opts.max_prompt_tokens = cfg.max_prompt_tokens();
  enc_opts.max_answer_tokens = cfg.max_answer_tokens();
  const int seq_len = enc_opts.max_prompt_tokens + enc_opts.max_answer_tokens + 2;

  policy::Transformer model{nullptr};
  if (!cfg.init_from().empty()) {
    try {
      if (auto m = read_manifest(cfg.init_from()); m && !m->complete())
        throw Error("stage '" + m->stage() + "' in " + cfg.init_from() + " is not finished");
      auto loaded = policy::load_checkpoint(cfg.init_from());
      if (!loaded.info.tokenizer_sha256.empty() && loaded.info.tokenizer_sha256 != tok.sha256())
        throw Error("tokenizer " + tok_path + " (sha256 " + tok.sha256() +
                    ") is not the one the checkpoint was trained with (" +
                    loaded.info.tokenizer_sha256 + ")");
      model = loaded.model;
      if (tok.vocab_size() > model->config().vocab_size)
        throw Error("tokenizer vocab " + std::to_string(tok.vocab_size()) +
                    " exceeds the checkpoint's vocab_size " +
                    std::to_string(model->config().vocab_size));
      if (seq_len > model->config().max_seq_len)
        throw Error("max_prompt_tokens + max_answer_tokens + 2 = " + std::to_string(seq_len) +
                    " exceeds the checkpoint's max_seq_len " +
                    std::to_string(model->config().max_seq_len));
      if (!model->config().value_head) model->add_value_head();
      std::string weights = cfg.init_from() + "/model.safetensors";
      if (file_exists(weights)) manifest.add_inputs()->CopyFrom(file_ref(weights));
    } catch (...) {
      rethrow_with_context("initialising from " + cfg.init_from());
    }
  } else {
    auto mc = scratch_config(cfg.model(), tok, seq_len);
    mc.validate();
    model = policy::Transformer(mc);
    policy::init_weights(model);
    if (!model->value_head) model->add_value_head();
  }
  {
    // Scalar head: small random weights, zero bias (Stiennon et al. 2020 init the head with
    // std 1/sqrt(d_model + 1)).
    torch::NoGradGuard ng;
    model->value_head->weight.normal_(0.0, 1.0 / std::sqrt(model->config().dim + 1.0));
    if (model->value_head->bias.defined()) model->value_head->bias.zero_();
  }
  manifest.set_vocab_size(model->config().vocab_size);

  // ---- resume state ----
  proto::RewardTrainState state;
  state.set_schema_version(1);
  state.set_best_accuracy(-1);
  const std::string fingerprint = config_fingerprint(cfg);
  bool resumed = false;
  if (resume && file_exists(state_dir + "/train_state.pb")) {
    if (!state.ParseFromString(read_file(state_dir + "/train_state.pb")))
      throw Error(state_dir + "/train_state.pb: corrupt");
    if (state.config_sha256() != fingerprint)
      throw Error(out + ": cannot resume: the config differs from the one the run started with "
                        "(only out_dir, threads, device and time_limit_seconds may change)");
    auto saved = policy::load_checkpoint(state_dir + "/model").model;
    if (cfg.has_lora() && cfg.lora().rank() > 0) {
      torch::NoGradGuard ng;
      model->value_head->weight.copy_(saved->value_head->weight);
      if (model->value_head->bias.defined()) model->value_head->bias.copy_(saved->value_head->bias);
    } else {
      model = saved;
    }
    resumed = true;
  }
  // Written only now: a refused resume (above) or bad data/config must leave the manifest of a
  // finished run as it was; from here on the folder holds an unfinished run.
  write_manifest(manifest, out);
  model->to(device);
  model->train();

  // ---- LoRA: frozen backbone, trainable adapters + scalar head ----
  // Checkpoints written while adapters are attached hold the effective weights W + scale * B A
  // (merged); the adapters also go to <checkpoint>/adapter. Resuming rebuilds the frozen base
  // exactly as the run started (init_from, or the seeded init) and takes the head and the
  // adapters from the state.
  std::unique_ptr<policy::LoraAdapters> lora;
  const bool use_lora = cfg.has_lora() && cfg.lora().rank() > 0;
  policy::LoraOptions lora_opts;
  if (use_lora) {
    lora_opts = policy::LoraOptions::from_proto(cfg.lora());
    try {
      lora_opts.validate();
    } catch (const Error& e) {
      throw Error(std::string("reward config: field 'lora': ") + e.what());
    }
    lora = std::make_unique<policy::LoraAdapters>(model, lora_opts);  // freezes every parameter
    for (auto& p : model->value_head->parameters()) p.set_requires_grad(true);
    if (resumed) lora->load(state_dir + "/adapter");
  }

  // ---- optimizer: AdamW, decay on matrices only ----
  std::vector<torch::Tensor> decay, no_decay, embed;
  for (auto& np : model->named_parameters()) {
    if (!np.value().requires_grad()) continue;
    if (np.key().find("tok_embeddings") != std::string::npos)
      embed.push_back(np.value());
    else if (np.value().dim() >= 2)
      decay.push_back(np.value());
    else
      no_decay.push_back(np.value());
  }
  if (lora)
    for (auto& p : lora->parameters()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  auto make_opts = [&](double wd) {
    auto o = std::make_unique<torch::optim::AdamWOptions>(cfg.lr());
    o->betas({cfg.beta1(), cfg.beta2()}).weight_decay(wd).eps(1e-8);
    return o;
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  std::vector<double> lr_scale;
  if (!decay.empty()) { groups.emplace_back(decay, make_opts(cfg.weight_decay())); lr_scale.push_back(1.0); }
  if (!no_decay.empty()) { groups.emplace_back(no_decay, make_opts(0.0)); lr_scale.push_back(1.0); }
  if (!embed.empty()) { groups.emplace_back(embed, make_opts(cfg.weight_decay())); lr_scale.push_back(cfg.embedding_lr_scale()); }
  torch::optim::AdamW optimizer(groups, torch::optim::AdamWOptions(cfg.lr()));
  if (resumed) torch::load(optimizer, state_dir + "/optimizer.pt");
  std::vector<torch::Tensor> all_params;  // the trainable ones (grad clipping)
  for (auto& g : groups)
    for (auto& p : g.params()) all_params.push_back(p);

  // ---- encode ----
  int bos = model->config().bos_id, eos = model->config().eos_id;
  auto enc_train = encode_comparisons(train, tok, bos, eos, enc_opts);
  auto enc_held = encode_comparisons(heldout, tok, bos, eos, enc_opts);
  int64_t n_batches = static_cast<int64_t>(make_batches(train, cfg.batch_pairs(), cfg.seed()).size());
  int64_t total = cfg.steps() > 0 ? cfg.steps()
                                  : std::max<int64_t>(1, static_cast<int64_t>(std::ceil(cfg.epochs() * n_batches)));
  int64_t warmup = resolved_warmup_steps(cfg, total);
  std::fprintf(stderr,
               "reward train: %zu train / %zu held-out comparisons, %zu + %zu sequences, "
               "%lld steps, %.2fM parameters%s%s\n",
               train.size(), heldout.size(), enc_train.sequences.size(), enc_held.sequences.size(),
               static_cast<long long>(total), model->config().num_parameters() / 1e6,
               resumed ? " (resumed)" : "",
               lora ? (", LoRA rank " + std::to_string(lora_opts.rank) + ": " +
                       std::to_string(lora->num_parameters()) + " adapter parameters")
                          .c_str()
                    : "");

  MetricsWriter metrics(out, /*append=*/resumed);
  Progress progress("reward train", total, "step");
  const int64_t pad = model->config().pad_id;
  double elapsed_before = state.elapsed_seconds();
  auto elapsed = [&] {
    return elapsed_before +
           std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };

  auto save_state = [&] {
    make_dirs(state_dir);
    if (lora) lora->refresh(false);
    policy::CheckpointInfo info;
    info.kind = "reward";
    info.created_by = "rlhf reward train (state)";
    info.step = state.step();
    info.tokenizer_sha256 = tok.sha256();
    policy::save_checkpoint(model, state_dir + "/model", info);
    if (lora) lora->save(state_dir + "/adapter");
    torch::save(optimizer, state_dir + "/optimizer.pt.tmp");
    rename_atomic(state_dir + "/optimizer.pt.tmp", state_dir + "/optimizer.pt");
    state.set_config_sha256(fingerprint);
    state.set_elapsed_seconds(elapsed());
    save_text_proto(state, state_dir + "/train_state.pb");
  };

  auto evaluate_now = [&] {
    if (lora) lora->refresh(false);  // the weights after the last optimizer step
    PairMetrics m = heldout.empty() ? PairMetrics{} : evaluate_encoded(model, enc_held, device, cfg.margin());
    metrics.write(state.step(), {{"eval/accuracy", m.accuracy}, {"eval/loss", m.loss},
                                 {"eval/mean_margin", m.mean_margin}, {"eval/ece", m.ece}});
    std::fprintf(stderr, "reward train: step %lld held-out accuracy %.4f loss %.4f margin %.3f (n=%lld)\n",
                 static_cast<long long>(state.step()), m.accuracy, m.loss, m.mean_margin,
                 static_cast<long long>(m.n));
    if (m.accuracy > state.best_accuracy() || !fs::exists(best_dir)) {
      state.set_best_accuracy(static_cast<float>(m.accuracy));
      state.set_best_step(state.step());
      policy::CheckpointInfo info;
      info.kind = "reward";
      info.created_by = "rlhf reward train (best)";
      info.step = state.step();
      info.tokenizer_sha256 = tok.sha256();
      policy::save_checkpoint(model, best_dir, info);
      if (lora) lora->save(best_dir + "/adapter");
    }
  };

  // ---- training loop ----
  bool stopped_early = false;
  int64_t last_eval_step = -1;
  while (state.step() < total) {
    auto batches = make_batches(train, cfg.batch_pairs(), cfg.seed() + static_cast<uint64_t>(state.epoch()));
    for (int64_t bi = state.batch_in_epoch(); bi < static_cast<int64_t>(batches.size()) && state.step() < total; ++bi) {
      const auto& batch = batches[static_cast<size_t>(bi)];
      std::unordered_map<size_t, int64_t> local;
      std::vector<std::vector<int64_t>> seqs;
      std::vector<int64_t> ci, ri;
      for (size_t k : batch) {
        auto [a, b] = enc_train.pairs[k];
        for (size_t s : {a, b})
          if (local.emplace(s, static_cast<int64_t>(seqs.size())).second) seqs.push_back(enc_train.sequences[s]);
        ci.push_back(local[a]);
        ri.push_back(local[b]);
      }
      double lr = warmup_cosine_lr(state.step(), total, warmup, cfg.lr(), cfg.min_lr_ratio());
      for (size_t g = 0; g < optimizer.param_groups().size(); ++g)
        static_cast<torch::optim::AdamWOptions&>(optimizer.param_groups()[g].options()).lr(lr * lr_scale[g]);
      auto pb = pad_batch(seqs, pad);
      if (lora) lora->refresh(true);  // fresh graph through the adapters
      auto scores = score_batch(model, pb.ids.to(device), pb.mask.to(device));
      auto d = scores.index_select(0, torch::tensor(ci).to(device)) -
               scores.index_select(0, torch::tensor(ri).to(device));
      auto loss = -torch::log_sigmoid(d - cfg.margin()).mean();
      optimizer.zero_grad();
      loss.backward();
      double gnorm = cfg.grad_clip() > 0 ? torch::nn::utils::clip_grad_norm_(all_params, cfg.grad_clip()) : 0.0;
      optimizer.step();
      state.set_step(state.step() + 1);
      state.set_batch_in_epoch(bi + 1);
      double loss_v = loss.item<double>();
      double acc = (d > 0).to(torch::kFloat).mean().item<double>();
      metrics.write(state.step(), {{"train/loss", loss_v}, {"train/accuracy", acc},
                                   {"train/mean_margin", d.mean().item<double>()},
                                   {"train/lr", lr}, {"train/grad_norm", gnorm},
                                   {"train/pairs", static_cast<double>(batch.size())}});
      char extra[96];
      std::snprintf(extra, sizeof extra, "loss %.4f acc %.2f", loss_v, acc);
      progress.update(state.step(), extra);
      bool time_up = cfg.time_limit_seconds() > 0 && elapsed() >= cfg.time_limit_seconds();
      if (state.step() % cfg.eval_every() == 0 || state.step() == total || time_up) {
        evaluate_now();
        last_eval_step = state.step();
        model->train();
      }
      if (state.step() % cfg.save_every() == 0 || state.step() == total || time_up) save_state();
      if (time_up) {
        stopped_early = true;
        break;
      }
    }
    if (stopped_early) break;
    if (state.step() < total) {
      state.set_epoch(state.epoch() + 1);
      state.set_batch_in_epoch(0);
    }
  }
  if (last_eval_step != state.step() && !fs::exists(best_dir)) evaluate_now();
  progress.finish();
  if (stopped_early)
    std::fprintf(stderr, "reward train: time limit %.0fs reached at step %lld of %lld\n",
                 cfg.time_limit_seconds(), static_cast<long long>(state.step()),
                 static_cast<long long>(total));

  // ---- keep the best, shift scores to mean 0 over the training answers ----
  // With LoRA, checkpoints hold the effective (merged) weights already (save_checkpoint writes
  // the projections' current weights, W + scale * B A), so `best` is a plain model.
  lora.reset();
  policy::Transformer best = policy::load_checkpoint(best_dir).model;
  best->to(device);
  auto train_scores = score_sequences(best, enc_train.sequences, 32, device);
  double offset = 0;
  for (float s : train_scores) offset += s;
  offset /= std::max<size_t>(1, train_scores.size());
  bool folded = best->value_head->bias.defined();
  if (folded) {
    torch::NoGradGuard ng;
    best->value_head->bias.sub_(offset);
  }
  TrainResult result;
  // Differences of scores (all the pairwise metrics use) do not depend on the shift.
  result.heldout = heldout.empty() ? PairMetrics{} : evaluate_encoded(best, enc_held, device, cfg.margin());
  result.best_step = state.best_step();
  result.steps = state.step();
  result.score_offset = offset;
  proto::RewardModelMeta meta;
  meta.set_score_offset(static_cast<float>(offset));
  meta.set_offset_folded(folded);
  meta.set_max_prompt_tokens(enc_opts.max_prompt_tokens);
  meta.set_max_answer_tokens(enc_opts.max_answer_tokens);
  meta.set_heldout_accuracy(static_cast<float>(result.heldout.accuracy));
  meta.set_offset_answers(static_cast<int32_t>(train_scores.size()));
  best->to(torch::kCPU);
  result.model_dir = out + "/model";
  save_reward_model(best, tok_path, meta, result.model_dir, state.best_step());

  for (const char* f : {"model.safetensors", "checkpoint.pb", "config.json", "reward.pb", "tokenizer.model"}) {
    std::string p = result.model_dir + "/" + f;
    if (!file_exists(p)) continue;
    auto ref = file_ref(p);
    ref.set_path(std::string("model/") + f);
    manifest.add_outputs()->CopyFrom(ref);
  }
  auto& mm = *manifest.mutable_metrics();
  mm["heldout_accuracy"] = result.heldout.accuracy;
  mm["heldout_loss"] = result.heldout.loss;
  mm["heldout_mean_margin"] = result.heldout.mean_margin;
  mm["heldout_ece"] = result.heldout.ece;
  mm["heldout_pairs"] = static_cast<double>(result.heldout.n);
  mm["train_pairs"] = static_cast<double>(train.size());
  mm["best_step"] = static_cast<double>(result.best_step);
  mm["steps"] = static_cast<double>(result.steps);
  mm["score_offset"] = offset;
  result.wall_seconds = elapsed();
  finish_manifest(manifest, out, result.wall_seconds);
  metrics.write(state.step(), {{"final/heldout_accuracy", result.heldout.accuracy},
                               {"final/score_offset", offset}});
  return result;
}

}  // namespace rlhf::reward
