#include "pipelines/ppo_stage.h"

#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>

#include "common/error.h"
#include "common/files.h"
#include "common/manifest.h"
#include "common/text_config.h"
#include "pipelines/memory_plans.h"
#include "pipelines/policy_sampling.h"
#include "pipelines/ppo_prompts.h"
#include "pipelines/quickstart_task.h"
#include "pipelines/stage_record.h"
#include "pipelines/teachers.h"
#include "policy/model/checkpoint.h"
#include "policy/ppo/ppo_config.h"
#include "policy/ppo/ppo_trainer.h"
#include "policy/runtime/distributed.h"
#include "policy/tokenizer/prompt_format.h"
#include "policy/tokenizer/tokenizer.h"
#include "reward/reward_model.h"
#include "reward/scorer.h"

namespace rlhf::pipelines {

namespace {

policy::LoadedModel load_model(const std::string& dir, const std::string& what,
                               const policy::LoadOptions& options = {}) {
  try {
    return policy::load_checkpoint(dir, options);
  } catch (...) {
    rethrow_with_context("ppo: loading the " + what + " (" + dir + ")");
  }
}

// The config file with the command's overrides, checked before any model or data file is read
// (values from the file were checked with their lines by load_ppo_config).
proto::PpoConfig resolved_config(const PpoStageOptions& o) {
  proto::PpoConfig cfg = o.config ? *o.config : policy::load_ppo_config(o.config_path);
  if (!o.out_dir.empty()) cfg.set_out_dir(o.out_dir);
  if (cfg.out_dir().empty()) cfg.set_out_dir("ppo");
  if (o.iterations) cfg.set_iterations(*o.iterations);
  if (!o.device.empty()) cfg.set_device(o.device);
  if (!o.dtype.empty()) cfg.set_dtype(o.dtype);
  const ConfigErrors errors(cfg, o.config_path);
  for (auto [field, value] : {std::pair{"policy", cfg.policy()}, {"prompts", cfg.prompts()}})
    if (value.empty()) errors.fail(field, "expected a path (required)", "\"\"");
  const int teachers =
      !cfg.reward_model().empty() + !cfg.teacher().rule().empty() + !cfg.teacher().socket().empty();
  if (teachers != 1)
    errors.fail("reward_model",
                "expected exactly one teacher: reward_model, teacher.rule or teacher.socket",
                std::to_string(teachers) + " given");
  policy::validate_ppo_config(cfg, errors);
  if (!o.gold_task.empty() && o.gold_task != "quickstart")
    throw Error("ppo --gold-task: only \"quickstart\" is known, got \"" + o.gold_task + "\"");
  if (!o.gold_task.empty() && cfg.tokenizer().empty())
    throw Error("ppo --gold-task needs PpoConfig.tokenizer");
  if (!o.gold_prompts.empty() && o.gold_task.empty())
    throw Error("ppo --gold-prompts needs --gold-task");
  return policy::resolved_ppo_config(cfg);  // the optimizer section as the trainer runs it
}

// Policy, reference (a copy of the policy unless given; none with LoRA: the policy's base) and
// critic (a copy of the policy, or e.g. the reward model as in InstructGPT; built by the trainer
// on the policy's base with critic "policy_base"; made with the teacher on the reward model's base
// with critic "reward_base", make_stage_teacher; none for a critic-free advantage_estimator),
// checked against the tokenizer.
policy::PpoModels load_models(const proto::PpoConfig& cfg,
                              const std::optional<policy::Tokenizer>& tok,
                              std::string* tokenizer_sha) {
  // dtype bf16 with LoRA: the frozen base is read straight into bfloat16 (no float32 copy).
  const bool lora = cfg.has_lora() && cfg.lora().rank() > 0, bf16 = cfg.dtype() == "bf16";
  auto loaded = load_model(cfg.policy(), "policy", policy::frozen_base_load_options(bf16, lora));
  *tokenizer_sha = loaded.info.tokenizer_sha256;
  if (tok && !tokenizer_sha->empty() && *tokenizer_sha != tok->sha256())
    throw Error("ppo: tokenizer " + cfg.tokenizer() + " (sha256 " + tok->sha256() +
                ") is not the one the policy " + cfg.policy() + " was trained with (" +
                *tokenizer_sha + ")");
  if (tok) *tokenizer_sha = tok->sha256();
  policy::PpoModels models;
  models.policy = loaded.model;
  // With LoRA and no reference folder the policy's frozen base is the reference (no copy).
  if (!cfg.reference().empty()) {
    policy::LoadOptions ref =
        policy::frozen_base_load_options(bf16, lora);  // as the trainer keeps it
    if (bf16) ref.matrix_dtype = torch::kBFloat16;
    models.reference = load_model(cfg.reference(), "reference", ref).model;
  } else if (!lora && bf16)  // its matrices bfloat16 as the trainer keeps them: read so, no copy
    models.reference =
        load_model(cfg.policy(), "reference (a copy of the policy)", {torch::kBFloat16}).model;
  else if (!lora)
    models.reference = policy::clone_model(loaded.model);
  if (cfg.critic() == "policy_base" && policy::uses_critic(cfg))
    return models;                                   // the trainer puts it on the policy's base
  torch::manual_seed(cfg.seed());                    // the fresh value head's initialisation
  if (!policy::uses_critic(cfg)) return models;      // critic-free estimator: no critic at all
  if (cfg.critic() == "reward_base") return models;  // on the teacher's base: make_stage_teacher
  // A copy of the policy's float32 weights: read again when the policy's base is bfloat16 (the
  // same RNG draws as clone_model's).
  const bool narrowed = loaded.model->tok_embeddings->weight.scalar_type() != torch::kFloat;
  models.critic =
      !cfg.value_model().empty()
          ? load_model(reward::resolve_model_dir(cfg.value_model()), "value model").model
      : narrowed ? load_model(cfg.policy(), "critic (a copy of the policy)").model
                 : policy::clone_model(loaded.model);
  if (!models.critic->config().value_head) models.critic->add_value_head();
  return models;
}

// The teacher: the reward model scoring (prompt ids without BOS, response ids).
policy::TeacherFn make_teacher(std::shared_ptr<reward::RewardScorer> scorer, int64_t bos) {
  return [scorer, bos](const std::vector<std::vector<int64_t>>& prompts,
                       const std::vector<std::vector<int64_t>>& responses) {
    // The scorer wants prompt ids without BOS and answer ids without EOS (it drops a trailing one).
    std::vector<std::vector<int>> p, r;
    for (const auto& ids : prompts)
      p.emplace_back(ids.begin() + (!ids.empty() && ids[0] == bos ? 1 : 0), ids.end());
    for (const auto& ids : responses) r.emplace_back(ids.begin(), ids.end());
    return scorer->score_ids(p, r);
  };
}

// The teacher PpoConfig names: the reward model (checked against the policy's tokenizer), a rule
// or an external scorer (pipelines/teachers.h). With critic "reward_base" it also sets
// models.critic: a value head and (in the trainer) adapters on the teacher's own weights, shared,
// while the teacher scores with its plain modules. Under dtype bf16 those weights (matrices and
// embedding table) are bfloat16 (reward::ScorerOptions::precision).
policy::TeacherFn make_stage_teacher(const proto::PpoConfig& cfg,
                                     const std::optional<policy::Tokenizer>& tok,
                                     policy::PpoModels& models,
                                     const std::vector<int64_t>& stop_ids) {
  const int64_t bos = models.policy->config().bos_id;
  if (cfg.reward_model().empty()) {
    TeacherText text;
    text.tok = tok ? &*tok : nullptr;
    text.bos = bos;
    text.eos = models.policy->config().eos_id;
    text.stop_ids = stop_ids;
    if (!cfg.teacher().rule().empty()) return make_rule_teacher(cfg.teacher().rule(), text);
    return make_socket_teacher(cfg.teacher(), text);
  }
  reward::ScorerOptions so;
  so.device = cfg.device();
  // dtype bf16: the frozen teacher is read in bfloat16 (no float32 copy) and scores with its
  // backbone under autocast, its head in float32; with critic "reward_base" the critic's adapters
  // and head then sit on that bfloat16 base.
  if (cfg.dtype() == "bf16") so.precision = policy::Precision::kBf16;
  auto scorer = std::make_shared<reward::RewardScorer>(cfg.reward_model(), so);
  if (tok && scorer->tokenizer_sha256() != tok->sha256())
    throw Error("ppo: the reward model " + cfg.reward_model() + " uses tokenizer sha256 " +
                scorer->tokenizer_sha256() + ", the policy's tokenizer is " + tok->sha256());
  if (cfg.critic() == "reward_base" && policy::uses_critic(cfg))
    models.critic = policy::reward_base_critic(scorer->model());
  return make_teacher(scorer, bos);
}

// The quickstart gold teacher as a monitor (not a reward): gold/accuracy of each iteration's
// rollouts.
policy::ExtraStatsFn gold_monitor(const policy::Tokenizer& tok, int64_t bos) {
  return [&tok, bos](const std::vector<std::vector<int64_t>>& ps,
                     const std::vector<std::vector<int64_t>>& rs) {
    int64_t n = 0, correct = 0;
    for (size_t i = 0; i < ps.size(); ++i) {
      std::vector<int> body(ps[i].begin() + (!ps[i].empty() && ps[i][0] == bos ? 1 : 0),
                            ps[i].end());
      auto problem = quickstart::parse_prompt(tok.decode(body));
      if (!problem) continue;
      ++n;
      if (quickstart::is_correct(*problem, policy::decode_response(tok, rs[i]))) ++correct;
    }
    return std::map<std::string, double>{{"gold/accuracy", n ? double(correct) / n : 0.0}};
  };
}

std::vector<quickstart::Problem> gold_problems(const PpoStageOptions& o,
                                               const std::optional<policy::Tokenizer>& tok) {
  std::vector<quickstart::Problem> held;
  if (o.gold_prompts.empty()) return held;
  for (const auto& t : read_prompt_set(o.gold_prompts, tok).texts)
    if (auto p = quickstart::parse_prompt(t)) held.push_back(*p);
  return held;
}

}  // namespace

std::map<std::string, double> run_ppo_stage(const PpoStageOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  const proto::PpoConfig cfg = resolved_config(o);
  check_stage_memory(cfg, &ppo_memory_plan);  // before any weight is read
  const std::string out = cfg.out_dir();
  make_dirs(out);
  std::optional<policy::Tokenizer> tok;
  if (!cfg.tokenizer().empty()) tok = policy::Tokenizer::load(cfg.tokenizer());
  std::string tok_sha;
  policy::PpoModels models = load_models(cfg, tok, &tok_sha);
  const int64_t bos = models.policy->config().bos_id;
  PromptSet prompts = read_prompt_set(cfg.prompts(), tok);
  const policy::TeacherFn teacher = make_stage_teacher(cfg, tok, models, prompts.stop_ids);
  // Rollout texts. A chat prompt holds the end-of-turn token, often the tokenizer's EOS, where
  // decode_response would stop: those sets decode every id (EOS / BOS / pad skipped).
  policy::DecodeFn decode;
  if (tok && prompts.stop_ids.empty())
    decode = [&](const std::vector<int64_t>& ids) { return policy::decode_response(*tok, ids); };
  else if (tok)
    decode = [&](const std::vector<int64_t>& ids) {
      std::vector<int> known;
      for (int64_t id : ids)
        if (policy::has_token(*tok, id)) known.push_back(static_cast<int>(id));
      return tok->decode(known);
    };
  const auto held = gold_problems(o, tok);

  // Constructing the trainer applies the resume rule; only then is the folder marked unfinished.
  policy::PpoTrainer trainer(cfg, models, teacher, prompts.ids, out, decode);
  trainer.set_stop_ids(prompts.stop_ids);
  if (!o.gold_task.empty()) trainer.set_extra_stats(gold_monitor(*tok, bos));
  // Data parallelism: every rank trains; rank 0 alone evaluates, saves and records the stage.
  const bool root = policy::dist::world().is_root();  // joined by the trainer
  proto::StageManifest manifest = begin_manifest("ppo");
  manifest.set_resolved_config(to_text_format(cfg));
  *manifest.add_inputs() = file_ref(cfg.prompts());
  manifest.set_tokenizer_sha256(tok_sha);
  manifest.set_vocab_size(models.policy->config().vocab_size);
  if (root) mark_stage_running(manifest, out);

  std::map<std::string, double> result;
  auto gold = [&](const char* key) {
    const double acc = evaluate_gold(models.policy, *tok, held, cfg.max_new_tokens(), 64,
                                     policy::parse_precision(cfg.dtype(), "ppo config: dtype"))
                           .accuracy;
    result[key] = acc;
    std::fprintf(stderr, "ppo: %s: %.1f%% (%zu problems)\n", key, 100 * acc, held.size());
  };
  if (root && !held.empty() && trainer.completed_iterations() == 0)
    gold("gold/heldout_accuracy_before");
  trainer.run();
  if (!trainer.history().empty())
    for (auto& kv : trainer.history().back()) result[kv.first] = kv.second;
  if (!root) return result;
  if (!held.empty()) gold("gold/heldout_accuracy_after");

  policy::CheckpointInfo info;
  info.tokenizer_sha256 = tok_sha;
  info.kind = "policy";
  info.created_by = "ppo";
  info.step = trainer.completed_iterations();
  policy::save_checkpoint(models.policy, out + "/model", info);
  if (tok) tok->save(out + "/model");  // as sft's model/: the folder loads with its tokenizer
  *manifest.add_outputs() = file_ref(out + "/model/model.safetensors");
  for (auto& kv : result) (*manifest.mutable_metrics())[kv.first] = kv.second;
  (*manifest.mutable_metrics())["iterations"] = trainer.completed_iterations();
  finish_stage(manifest, out,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return result;
}

}  // namespace rlhf::pipelines
