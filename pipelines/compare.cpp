#include "pipelines/compare.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "common/error.h"
#include "common/files.h"
#include "common/text_config.h"
#include "pipelines/compare_report.h"
#include "pipelines/internal/run.h"
#include "pipelines/internal/subprocess.h"
#include "pipelines/policy_sampling.h"
#include "policy/decoding/generation.h"
#include "policy/dpo/dpo_config.h"
#include "policy/model/checkpoint.h"
#include "policy/model/logprobs.h"
#include "policy/ppo/ppo_config.h"
#include "policy/runtime/device.h"
#include "policy/tokenizer/prompt_format.h"
#include "policy/tokenizer/tokenizer.h"
#include "reward/scorer.h"

namespace rlhf::pipelines {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

bool is_rl(const std::string& method) { return method != "dpo"; }

bool known_method(const std::string& m) {
  const auto& all = compare_method_names();
  return std::find(all.begin(), all.end(), m) != all.end();
}

std::string known_list() {
  std::string list;
  for (const auto& n : compare_method_names()) list += (list.empty() ? "" : ", ") + n;
  return list;
}

// The methods to compare: --methods, else the config's compare.methods, else all six.
std::vector<std::string> resolve_methods(const CompareOptions& o, const proto::PipelineConfig& c) {
  std::vector<std::string> methods = o.methods;
  if (methods.empty()) methods.assign(c.compare().methods().begin(), c.compare().methods().end());
  if (methods.empty()) methods = compare_method_names();
  std::set<std::string> seen;
  for (const auto& m : methods) {
    if (!known_method(m))
      throw UsageError("pipeline compare: unknown method '" + m + "' (methods: " + known_list() +
                       ")");
    if (!seen.insert(m).second)
      throw UsageError("pipeline compare: method '" + m + "' is listed twice");
  }
  return methods;
}

const proto::CompareMethodConfig* method_override(const proto::PipelineConfig& c,
                                                  const std::string& method) {
  for (const auto& m : c.compare().method())
    if (m.name() == method) return &m;
  return nullptr;
}

uint64_t method_seed(const Run& run, uint64_t seed) { return run.config.seed() + 1 + seed; }

// The RL method's PpoConfig (see compare.h), wired like the pipeline's ppo stage.
proto::PpoConfig rl_config(const Run& run, const std::string& method, uint64_t seed,
                           const std::string& dir) {
  proto::PpoConfig cfg = run.config.ppo();
  if (method != "ppo") {
    cfg.set_advantage_estimator(method);
    cfg.set_samples_per_prompt(run.config.compare().samples_per_prompt());
    cfg.clear_value_model();  // critic-free: no critic is loaded
    cfg.clear_critic_warmup_iterations();
    cfg.set_kl_in_loss(method == "grpo" || method == "dr_grpo");
  }
  if (const auto* m = method_override(run.config, method)) cfg.MergeFrom(m->ppo());
  return wire_ppo_config(run, cfg, seed, dir);
}

// The dpo method's DpoConfig: built-in settings for the run's model sizes, CompareConfig.dpo and
// the method's override over them, then the wiring.
proto::DpoConfig dpo_config(const Run& run, uint64_t seed, const std::string& dir) {
  proto::DpoConfig cfg;
  cfg.set_max_prompt_tokens(run.config.reward().max_prompt_tokens());
  cfg.set_max_answer_tokens(run.config.reward().max_answer_tokens());
  cfg.MergeFrom(run.config.compare().dpo());
  if (const auto* m = method_override(run.config, "dpo")) cfg.MergeFrom(m->dpo());
  cfg.set_train_file(run.path("annotate/pairs.jsonl"));
  cfg.set_format("pairs");
  cfg.set_init_from(run.path("sft/model"));
  cfg.set_tokenizer(run.tokenizer_model());
  cfg.set_seed(method_seed(run, seed));
  cfg.set_device(run.config.ppo().device());
  cfg.set_dtype(run.config.ppo().dtype());
  cfg.set_out_dir(dir);
  return cfg;
}

// ---- evaluation ---------------------------------------------------------------------------------

// Evaluates policies against the SFT student and the reward model on the held-out problems.
class Evaluator {
 public:
  explicit Evaluator(const Run& run)
      : run_(run),
        tok_(policy::Tokenizer::load(run.tokenizer_model())),
        device_(policy::resolve_device(run.config.sample().device(), "sample: device")),
        precision_(policy::parse_precision(run.config.sample().dtype(), "sample: dtype")),
        ref_(load(run.path("sft/model"))),
        scorer_(run.path("reward"), scorer_options(run)),
        held_(heldout_problems(run)) {}

  policy::LoadedModel load(const std::string& dir) const {
    auto loaded = policy::load_checkpoint(dir);
    loaded.model->to(device_);
    loaded.model->eval();
    return loaded;
  }

  // gold_accuracy (greedy), final_kl and teacher_score (sampled answers) of `model`.
  json evaluate(policy::Transformer& model) {
    const auto& sc = run_.config.sample();
    const auto gold =
        evaluate_gold(model, tok_, held_, sc.max_new_tokens(), sc.batch_size(), precision_);
    json r = {{"gold_accuracy", gold.accuracy}, {"heldout_problems", held_.size()}};
    const auto sampled = sampled_figures(model);
    r["final_kl"] = sampled.first;
    r["teacher_score"] = sampled.second;
    return r;
  }

  policy::Transformer& reference() { return ref_.model; }

 private:
  static reward::ScorerOptions scorer_options(const Run& run) {
    reward::ScorerOptions o;
    o.device = run.config.sample().device();
    return o;
  }

  std::pair<double, double> sampled_figures(policy::Transformer& model);

  const Run& run_;
  policy::Tokenizer tok_;
  torch::Device device_;
  policy::Precision precision_;
  policy::LoadedModel ref_;
  reward::RewardScorer scorer_;
  std::vector<quickstart::Problem> held_;
};

// Mean over sampled answers of the per-answer KL sum to the SFT student and of the teacher score.
std::pair<double, double> Evaluator::sampled_figures(policy::Transformer& model) {
  torch::NoGradGuard no_grad;
  const int k = run_.config.compare().eval_samples();
  const int batch = run_.config.sample().batch_size();
  std::vector<std::vector<int64_t>> prompts;
  for (const auto& p : held_)
    for (int j = 0; j < k; ++j) prompts.push_back(policy::encode_prompt(tok_, p.prompt()));
  const int64_t bos = model->config().bos_id;
  double kl_sum = 0, score_sum = 0;
  for (size_t start = 0; start < prompts.size(); start += static_cast<size_t>(batch)) {
    const size_t end = std::min(prompts.size(), start + static_cast<size_t>(batch));
    const std::vector<std::vector<int64_t>> ids(prompts.begin() + start, prompts.begin() + end);
    policy::SamplingOptions o;
    o.temperature = 1.0f;
    o.max_new_tokens = run_.config.ppo().max_new_tokens();
    o.seed = 4242 + start;  // the same draws for every method
    o.precision = precision_;
    const auto gen = policy::generate(model, ids, o);
    const auto full = torch::cat({gen.prompt_ids, gen.response_ids}, 1);
    const auto mask = torch::cat({gen.prompt_mask, gen.response_mask}, 1);
    const int64_t P = gen.prompt_ids.size(1), N = gen.response_ids.size(1);
    auto answer_lp = [&](policy::Transformer& m) {
      return policy::token_logprobs(m, full, mask).logprobs.slice(1, P - 1, P - 1 + N);
    };
    const auto rmask = gen.response_mask.to(torch::kFloat);
    kl_sum += ((answer_lp(model) - answer_lp(ref_.model)) * rmask).sum().item<double>();
    std::vector<std::vector<int>> p, r;
    for (const auto& one : ids) p.emplace_back(one.begin() + (one[0] == bos ? 1 : 0), one.end());
    for (const auto& one : gen.responses) r.emplace_back(one.begin(), one.end());
    for (float s : scorer_.score_ids(p, r)) score_sum += s;
  }
  const double n = static_cast<double>(prompts.size());
  return {kl_sum / n, score_sum / n};
}

// ---- one method, one seed ----------------------------------------------------------------------

// From an RL method's metrics.jsonl: generated tokens (sum over iterations of mean length x
// batch) and the last iteration's kl/mean.
void add_training_figures(const std::string& dir, int batch_size, json* result) {
  std::ifstream in(dir + "/metrics.jsonl");
  std::string line;
  double tokens = 0;
  while (std::getline(in, line)) {
    const json m = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!m.is_object()) continue;
    if (m.contains("response/length_mean") && m["response/length_mean"].is_number())
      tokens += m["response/length_mean"].get<double>() * batch_size;
    if (m.contains("kl/mean") && m["kl/mean"].is_number()) (*result)["train_kl"] = m["kl/mean"];
  }
  (*result)["tokens_generated"] = tokens;
}

struct MethodRun {
  std::string method;
  uint64_t seed = 0;
  std::string dir, config_text, config_file;
  std::vector<std::string> inputs, command;
  int processes = 1;
  int batch_size = 0;  // RL: answers per iteration
};

MethodRun plan_method(const Run& run, const std::string& method, uint64_t seed) {
  MethodRun m;
  m.method = method;
  m.seed = seed;
  m.dir = compare_seed_dir(run.dir, method, seed);
  if (is_rl(method)) {
    const auto cfg = rl_config(run, method, seed, m.dir);
    policy::validate_ppo_config(cfg, run.config_path + " (compare method " + method + ")");
    m.config_text = to_text_format(cfg);
    m.config_file = m.dir + "/ppo.pbtxt";
    m.inputs = {run.path("sft/model/model.safetensors"), run.path("reward/model/model.safetensors"),
                run.path("data/ppo_prompts.jsonl")};
    m.command = {"ppo", "--config", m.config_file, "--out", m.dir, "--gold-task", "quickstart"};
    m.processes = run.config.processes().ppo();
    m.batch_size = cfg.batch_size();
  } else {
    const auto cfg = dpo_config(run, seed, m.dir);
    policy::dpo::validate_dpo_config(cfg, run.config_path + " (compare method dpo)");
    m.config_text = to_text_format(cfg);
    m.config_file = m.dir + "/dpo.pbtxt";
    m.inputs = {run.path("sft/model/model.safetensors"), run.path("annotate/pairs.jsonl")};
    m.command = {"dpo", "--config", m.config_file, "--out", m.dir};
    m.processes = run.config.processes().reward();
  }
  return m;
}

// Trains (or resumes, or skips) one method for one seed and evaluates it; returns result.json.
json run_method(const Run& run, const MethodRun& m, Evaluator& eval) {
  // The config's paths into the run folder count relative to it (as the stages' inputs), so a
  // copied run folder keeps its finished methods.
  std::string relative_text = m.config_text;
  for (size_t at = 0; (at = relative_text.find(run.dir + "/", at)) != std::string::npos;)
    relative_text.replace(at, run.dir.size() + 1, "<run>/");
  const std::string fp = hash_inputs(relative_text, m.inputs, run.dir);
  const std::string result_path = m.dir + "/result.json";
  if (file_exists(result_path)) {
    json done = json::parse(read_file(result_path), nullptr, /*allow_exceptions=*/false);
    if (done.is_object() && done.value("fingerprint", "") == fp) {
      std::printf("== compare %s seed %llu: unchanged, skipped\n", m.method.c_str(),
                  static_cast<unsigned long long>(m.seed));
      return done;
    }
  }
  // attempts.json: the fingerprint being trained and the seconds spent on it so far. Another
  // fingerprint (or a finished run with other inputs) starts afresh.
  const std::string attempts_path = m.dir + "/attempts.json";
  json attempts = file_exists(attempts_path)
                      ? json::parse(read_file(attempts_path), nullptr, /*allow_exceptions=*/false)
                      : json();
  if (!attempts.is_object() || attempts.value("fingerprint", "") != fp ||
      file_exists(result_path)) {
    std::error_code ec;
    fs::remove_all(m.dir, ec);
    attempts = {{"fingerprint", fp}, {"seconds", 0.0}};
  }
  make_dirs(m.dir);
  write_file_atomic(attempts_path, attempts.dump(2));
  write_file_atomic(m.config_file, m.config_text);
  std::printf("== compare %s seed %llu\n", m.method.c_str(),
              static_cast<unsigned long long>(m.seed));
  std::fflush(stdout);
  const double t0 = now_s();
  try {
    run_or_throw(trainer_argv(run.exe, m.processes, m.command),
                 "compare " + m.method + " seed " + std::to_string(m.seed));
  } catch (...) {
    attempts["seconds"] = attempts["seconds"].get<double>() + (now_s() - t0);
    write_file_atomic(attempts_path, attempts.dump(2));
    throw;
  }
  attempts["seconds"] = attempts["seconds"].get<double>() + (now_s() - t0);
  write_file_atomic(attempts_path, attempts.dump(2));

  auto model = eval.load(m.dir + "/model");
  json r = eval.evaluate(model.model);
  r["method"] = m.method;
  r["seed"] = m.seed;
  r["fingerprint"] = fp;
  r["wall_seconds"] = attempts["seconds"];
  r["tokens_generated"] = 0.0;  // DPO generates nothing
  if (is_rl(m.method)) add_training_figures(m.dir, m.batch_size, &r);
  r["finished_at"] = utc_now_iso8601();
  write_file_atomic(result_path, r.dump(2));
  std::printf("compare %s seed %llu: gold %.1f%%, KL %.3f, teacher score %.3f, %.0f s\n",
              m.method.c_str(), static_cast<unsigned long long>(m.seed),
              100 * r["gold_accuracy"].get<double>(), r["final_kl"].get<double>(),
              r["teacher_score"].get<double>(), r["wall_seconds"].get<double>());
  return r;
}

// The SFT student's figures (<run>/compare/sft.json), once per SFT model and reward model.
void evaluate_student(const Run& run, Evaluator& eval) {
  const std::string path = run.path("compare/sft.json");
  const std::string fp = hash_inputs(
      "compare sft " + std::to_string(run.config.compare().eval_samples()),
      {run.path("sft/model/model.safetensors"), run.path("reward/model/model.safetensors")},
      run.dir);
  if (file_exists(path)) {
    json done = json::parse(read_file(path), nullptr, /*allow_exceptions=*/false);
    if (done.is_object() && done.value("fingerprint", "") == fp) return;
  }
  json r = eval.evaluate(eval.reference());
  r["fingerprint"] = fp;
  make_dirs(run.path("compare"));
  write_file_atomic(path, r.dump(2));
  std::printf("compare: SFT student: gold %.1f%%, teacher score %.3f\n",
              100 * r["gold_accuracy"].get<double>(), r["teacher_score"].get<double>());
}

}  // namespace

const std::vector<std::string>& compare_method_names() {
  static const std::vector<std::string> names = {
      "ppo", "grpo", "dr_grpo", "rloo", "reinforce_baseline", "dpo"};
  return names;
}

void validate_compare_config(const proto::CompareConfig& c, const ConfigErrors& errors) {
  if (c.samples_per_prompt() < 2)
    errors.fail("samples_per_prompt", "expected >= 2 (the group estimators need a group)",
                std::to_string(c.samples_per_prompt()));
  if (c.eval_samples() < 1)
    errors.fail("eval_samples", "expected >= 1", std::to_string(c.eval_samples()));
  if (c.has_dpo()) policy::dpo::validate_dpo_config(c.dpo(), errors.nested("dpo"));
  std::set<std::string> seen;
  for (int i = 0; i < c.methods_size(); ++i)
    if (!known_method(c.methods(i)) || !seen.insert(c.methods(i)).second)
      errors.fail("methods", "expected distinct methods among " + known_list(),
                  config_quoted(c.methods(i)));
  seen.clear();
  for (int i = 0; i < c.method_size(); ++i) {
    const auto& m = c.method(i);
    const std::string field = "method[" + std::to_string(i) + "]";
    if (!known_method(m.name()) || !seen.insert(m.name()).second)
      errors.fail(field + ".name", "expected a method among " + known_list() + ", at most once",
                  config_quoted(m.name()));
    if (m.has_ppo() && !is_rl(m.name()))
      errors.fail(field + ".ppo", "applies to the RL methods (use dpo { } for dpo)", "set");
    if (m.has_dpo() && is_rl(m.name()))
      errors.fail(field + ".dpo", "applies to method \"dpo\" only", "set");
  }
}

std::string run_compare(const CompareOptions& o) {
  const auto config = load_pipeline_config(o.run.config_path);
  if (config.task() != "quickstart")
    throw UsageError("pipeline compare: needs task \"quickstart\" (its gold teacher measures)");
  const auto methods = resolve_methods(o, config);
  const std::vector<uint64_t> seeds = o.seeds.empty() ? std::vector<uint64_t>{0} : o.seeds;
  if (!o.run.from_stage.empty() || !o.run.only_stage.empty())
    throw UsageError("pipeline compare: --from and --only apply to pipeline run");
  // Every method's resolved config is checked before anything runs (a bad value in a method's
  // override would otherwise surface only when its turn comes, after the others trained).
  Run probe;
  probe.config = config;
  probe.config_path = o.run.config_path;
  probe.dir = o.run.run_dir.empty() ? "runs/" + config.name() : o.run.run_dir;
  for (const auto& method : methods) plan_method(probe, method, seeds.front());
  // The shared stages: tokenizer, SFT, sampling, annotation and the reward model.
  RunOptions through_reward = o.run;
  through_reward.last_stage = "reward";
  const std::string dir = run_pipeline(through_reward);

  RunOptions same = o.run;
  same.run_dir = dir;
  const Run run = open_run(same);
  const StopOnSignals stop_on_signals(o.run.stop_timeout_s);
  Evaluator eval(run);
  evaluate_student(run, eval);
  write_compare_report(run.dir, methods, seeds);
  size_t done = 0;
  for (const auto& method : methods)
    for (uint64_t seed : seeds) {
      throw_if_stopped();
      std::printf("== compare: %s seed %llu (%zu of %zu)\n", method.c_str(),
                  static_cast<unsigned long long>(seed), ++done, methods.size() * seeds.size());
      try {
        run_method(run, plan_method(run, method, seed), eval);
      } catch (...) {
        rethrow_with_context("pipeline compare, method " + method + " seed " +
                             std::to_string(seed));
      }
      write_compare_report(run.dir, methods, seeds);
    }
  return run.dir;
}

}  // namespace rlhf::pipelines
