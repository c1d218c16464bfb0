// Training on a synthetic preference (answers containing the marker word are preferred): the
// model must learn it (> 95% held-out), and the saved model must score like the trained one.
#include "reward/trainer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "annotation/import_export.h"
#include "common/error.h"
#include "common/files.h"
#include "common/manifest.h"
#include "pipelines/annotation_pairs.h"
#include "pipelines/stage_record.h"
#include "policy/model/checkpoint.h"
#include "policy/model/model.h"
#include "policy/model/safetensors.h"
#include "policy/tokenizer/tokenizer.h"
#include "policy/training/training.h"
#include "reward/comparisons.h"
#include "reward/scorer.h"
#include "reward/train_config.h"
#include "tests/fixtures/optimizer_state.h"
#include "tests/fixtures/preference_data.h"
#include "tests/fixtures/tiny_model.h"
#include "tests/test_support.h"

namespace rlhf::reward {
namespace {

class SyntheticTraining : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new rlhf::testing::TempDir("rwtrain");
    write_synthetic(*dir_ / "train.jsonl", 300, 1);
    write_synthetic(*dir_ / "test.jsonl", 100, 2);
    {
      std::ifstream in(*dir_ / "train.jsonl");
      std::ofstream text(*dir_ / "corpus.txt");
      std::string line;
      while (std::getline(in, line)) {
        auto j = nlohmann::json::parse(line);
        text << j["prompt"].get<std::string>() << "\n"
             << j["chosen"].get<std::string>() << "\n"
             << j["rejected"].get<std::string>() << "\n";
      }
    }
    policy::TokenizerTrainOptions t;
    t.input = *dir_ / "corpus.txt";
    t.vocab_size = 120;
    t.byte_fallback = false;
    t.out_dir = *dir_ / "tok";
    tokenizer_ = new std::string(policy::train_tokenizer(t));
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete tokenizer_;
  }

  static proto::RewardTrainConfig config(const std::string& out) {
    auto cfg = parse_train_config(
        "train_file: \"" + *dir_ / "train.jsonl" +
            "\"\n"
            "tokenizer: \"" +
            *tokenizer_ +
            "\"\n"
            "model { dim: 48 n_layers: 2 n_heads: 4 n_kv_heads: 2 }\n"
            "max_prompt_tokens: 24  max_answer_tokens: 32\n"
            "steps: 40  batch_pairs: 16  optimizer { lr: 3e-3  warmup_steps: 5 }  eval_every: 20\n"
            "heldout_fraction: 0.15  seed: 5  threads: 1\n",
        "synthetic.pbtxt");
    cfg.set_out_dir(out);
    cfg.set_device(rlhf::testing::test_device_name());
    return cfg;
  }

  static rlhf::testing::TempDir* dir_;
  static std::string* tokenizer_;
};
rlhf::testing::TempDir* SyntheticTraining::dir_ = nullptr;
std::string* SyntheticTraining::tokenizer_ = nullptr;

TEST_F(SyntheticTraining, LearnsTheMarkerPreference) {
  std::string out = *dir_ / "run";
  auto result = pipelines::run_reward_stage(config(out));
  EXPECT_GT(result.heldout.accuracy, 0.95) << to_json(result.heldout);
  EXPECT_GT(result.heldout.n, 50);

  // The saved model (out/model via the stage folder) on fresh data.
  RewardScorer scorer(out);
  auto fresh = read_pairs_jsonl(*dir_ / "test.jsonl");
  auto m = scorer.evaluate(fresh);
  EXPECT_GT(m.accuracy, 0.95) << to_json(m);
  EXPECT_GE(m.ece, 0.0);
  EXPECT_LE(m.ece, 1.0);

  // Scores are shifted so the mean over the training answers is ~0.
  auto train = read_pairs_jsonl(*dir_ / "train.jsonl");
  std::map<std::string, std::pair<std::string, std::string>> uniq;
  for (const auto& c : train) {
    uniq[c.prompt + "\x1f" + c.chosen] = {c.prompt, c.chosen};
    uniq[c.prompt + "\x1f" + c.rejected] = {c.prompt, c.rejected};
  }
  std::vector<std::string> ps, as;
  for (auto& [k, v] : uniq) {
    ps.push_back(v.first);
    as.push_back(v.second);
  }
  auto scores = scorer.score(ps, as);
  double mean = 0;
  for (float s : scores) mean += s;
  mean /= static_cast<double>(scores.size());
  // The split holds out 15% of the groups, so the mean over all answers is close to, not exactly 0.
  double spread = 0;
  for (float s : scores) spread += (s - mean) * (s - mean);
  spread = std::sqrt(spread / static_cast<double>(scores.size()));
  EXPECT_LT(std::fabs(mean), 0.25 * spread + 1e-3) << "mean " << mean << " sd " << spread;
  EXPECT_TRUE(scorer.meta().offset_folded());

  // Token-id entry point agrees with the text one.
  std::vector<std::vector<int>> pids, aids;
  for (size_t i = 0; i < 5; ++i) {
    pids.push_back(scorer.tokenizer().encode(ps[i]));
    aids.push_back(scorer.tokenizer().encode(as[i]));
  }
  auto by_ids = scorer.score_ids(pids, aids);
  for (size_t i = 0; i < 5; ++i) EXPECT_NEAR(by_ids[i], scores[i], 1e-4);

  // Manifest, metrics.
  auto manifest = require_complete_manifest(out, "reward");
  EXPECT_EQ(manifest.tokenizer_sha256(), scorer.tokenizer_sha256());
  EXPECT_GT(manifest.metrics().at("heldout_accuracy"), 0.95);
  EXPECT_FALSE(manifest.resolved_config().empty());
  EXPECT_TRUE(file_exists(out + "/metrics.jsonl"));

  // The AdamW state the trainer saved: built by the toolkit from the optimizer section (the
  // reward defaults): decay / no-decay groups, weight decay 0.1 on matrices, betas (0.9, 0.95),
  // eps 1e-8.
  const auto state = policy::training::StateFolder(out + "/state").latest();
  ASSERT_TRUE(state);
  const auto groups = policy::testing::saved_adamw_groups(*state + "/optimizer.pt");
  ASSERT_EQ(groups.size(), 2u);
  // (float32 settings: training::applied_settings)
  EXPECT_EQ(groups[0].weight_decay, static_cast<double>(0.1f));
  EXPECT_EQ(groups[1].weight_decay, 0.0);
  for (const auto& g : groups) {
    EXPECT_EQ(g.beta1, static_cast<double>(0.9f));
    EXPECT_EQ(g.beta2, static_cast<double>(0.95f));
    EXPECT_EQ(g.eps, 1e-8);
  }
}

TEST_F(SyntheticTraining, ResumesFromSavedState) {
  std::string out = *dir_ / "resume";
  auto cfg = config(out);
  cfg.set_steps(20);
  cfg.set_eval_every(10);
  cfg.set_time_limit_seconds(1e-6f);  // stops after the first step, state saved
  auto first = pipelines::run_reward_stage(cfg);
  EXPECT_EQ(first.steps, 1);
  cfg.set_time_limit_seconds(0);
  auto second = pipelines::run_reward_stage(cfg);
  EXPECT_EQ(second.steps, 20);
  // The resumed run logged steps 2..20 only (step 1 came from the first run).
  std::ifstream in(out + "/metrics.jsonl");
  std::string line;
  int step1 = 0, train_lines = 0;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (!j.contains("train/loss")) continue;
    ++train_lines;
    if (j["step"] == 1) ++step1;
  }
  EXPECT_EQ(step1, 1);
  EXPECT_EQ(train_lines, 20);
  // A changed config is refused, and the refusal leaves the finished run's manifest as it was.
  const std::string manifest_before = rlhf::read_file(out + "/manifest.pb");
  require_complete_manifest(out, "reward");
  cfg.mutable_optimizer()->set_lr(1e-3);
  EXPECT_THROW(pipelines::run_reward_stage(cfg), rlhf::Error);
  EXPECT_EQ(rlhf::read_file(out + "/manifest.pb"), manifest_before);
  require_complete_manifest(out, "reward");
}

// LoRA: the backbone stays frozen (bit-identical), only the adapters and the scalar head train,
// the preference is still learnt, and <out>/model is the merged plain checkpoint.
TEST_F(SyntheticTraining, LoraTrainsOnlyAdaptersAndHead) {
  // A base checkpoint to start from (random init, same architecture as config()).
  auto tok = policy::Tokenizer::load(*tokenizer_);
  policy::ModelConfig mc = policy::testing::tiny_config();  // tests/fixtures/tiny_model.h
  mc.dim = 48;
  mc.vocab_size = tok.vocab_size();
  mc.bos_id = tok.bos_id();
  mc.eos_id = tok.eos_id();
  mc.pad_id = tok.pad_id() >= 0 ? tok.pad_id() : 0;
  torch::manual_seed(11);
  policy::Transformer base(mc);
  policy::init_weights(base);
  policy::CheckpointInfo info;
  info.tokenizer_sha256 = tok.sha256();
  const std::string base_dir = *dir_ / "lora_base";
  policy::save_checkpoint(base, base_dir, info);

  const std::string out = *dir_ / "lora";
  auto cfg = config(out);
  cfg.clear_model();
  cfg.set_init_from(base_dir);
  cfg.mutable_optimizer()->set_lr(1e-2);
  cfg.mutable_lora()->set_rank(8);
  cfg.mutable_lora()->add_targets("q");
  cfg.mutable_lora()->add_targets("k");
  cfg.mutable_lora()->add_targets("v");
  cfg.mutable_lora()->add_targets("o");
  auto result = pipelines::run_reward_stage(cfg);
  EXPECT_GT(result.heldout.accuracy, 0.85) << to_json(result.heldout);

  // Training loss went down (mean of the first vs the last 5 steps).
  std::vector<double> losses;
  {
    std::ifstream in(out + "/metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line);
      if (j.contains("train/loss")) losses.push_back(j["train/loss"].get<double>());
    }
  }
  ASSERT_EQ(losses.size(), 40u);
  double first = 0, last = 0;
  for (int i = 0; i < 5; ++i) {
    first += losses[static_cast<size_t>(i)] / 5;
    last += losses[losses.size() - 1 - static_cast<size_t>(i)] / 5;
  }
  std::printf("LoRA reward: train loss first 5 steps %.4f, last 5 %.4f, held-out accuracy %.4f\n",
              first, last, result.heldout.accuracy);
  EXPECT_LT(last, 0.7 * first) << "first " << first << " last " << last;

  // The saved reward model is merged: every weight the adapters do not touch is bit-identical to
  // the base, and each adapted projection is exactly base + scale * B A (the base stayed frozen).
  auto params = [](policy::Transformer m) {
    std::map<std::string, torch::Tensor> out;
    for (auto& np : m->named_parameters()) out[np.key()] = np.value().detach().to(torch::kCPU);
    return out;
  };
  auto before = params(policy::load_checkpoint(base_dir).model);
  auto merged = params(policy::load_checkpoint(out + "/model").model);
  ASSERT_TRUE(merged.count("value_head.weight"));
  const auto adapters = policy::read_safetensors(out + "/best/adapter/adapter_model.safetensors");
  int adapted = 0;
  for (auto& [name, t] : before) {
    std::string target;
    for (const char* p : {"q_proj", "k_proj", "v_proj", "o_proj"})
      if (name.find(std::string(".") + p + ".weight") != std::string::npos) target = p;
    if (target.empty()) {
      EXPECT_TRUE(torch::equal(t, merged.at(name))) << name << " changed in the frozen backbone";
      continue;
    }
    ++adapted;
    // "layers.N.q_proj.weight" -> "base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight"
    const std::string layer = name.substr(0, name.find("." + target));
    const std::string prefix = "base_model.model.model." + layer + ".self_attn." + target;
    const auto& A = adapters.at(prefix + ".lora_A.weight");
    const auto& B = adapters.at(prefix + ".lora_B.weight");
    EXPECT_GT(B.abs().max().item<float>(), 0.0f) << prefix << ": B did not train";
    EXPECT_TRUE(torch::allclose(merged.at(name), t + torch::matmul(B, A), 1e-5, 1e-6))
        << name << " is not base + B A";  // alpha = rank: scale 1
  }
  EXPECT_EQ(adapted, 4 * mc.n_layers);
  EXPECT_FALSE(file_exists(out + "/model/adapter_model.safetensors"));

  // It scores like the trained model, with plain loading.
  RewardScorer scorer(out);
  auto m = scorer.evaluate(read_pairs_jsonl(*dir_ / "test.jsonl"));
  EXPECT_GT(m.accuracy, 0.85) << to_json(m);
  EXPECT_NEAR(m.accuracy, result.heldout.accuracy, 0.1);
}

}  // namespace
}  // namespace rlhf::reward

namespace rlhf::reward {
namespace {

// bf16 with LoRA: the frozen base trains in bfloat16 (matrices and embedding table; the norms,
// scalar head and adapters float32), and <out>/model is the merged float32 reward model, scoring
// the held-out pairs as the in-memory model did during training (bf16 autocast).
TEST_F(SyntheticTraining, LoraBf16KeepsFrozenBaseBf16AndSavesFloat32) {
  auto tok = policy::Tokenizer::load(*tokenizer_);
  policy::ModelConfig mc = policy::testing::tiny_config();  // tests/fixtures/tiny_model.h
  mc.dim = 48;
  mc.vocab_size = tok.vocab_size();
  mc.bos_id = tok.bos_id();
  mc.eos_id = tok.eos_id();
  mc.pad_id = tok.pad_id() >= 0 ? tok.pad_id() : 0;
  torch::manual_seed(12);
  policy::Transformer base(mc);
  policy::init_weights(base);
  policy::CheckpointInfo info;
  info.tokenizer_sha256 = tok.sha256();
  const std::string base_dir = *dir_ / "lora_bf16_base";
  policy::save_checkpoint(base, base_dir, info);

  const std::string out = *dir_ / "lora_bf16";
  auto cfg = config(out);
  cfg.clear_model();
  cfg.set_init_from(base_dir);
  cfg.set_eval_file(*dir_ / "test.jsonl");
  cfg.set_dtype("bf16");
  cfg.set_steps(12);
  cfg.set_eval_every(6);
  cfg.mutable_optimizer()->set_lr(1e-2);
  cfg.mutable_lora()->set_rank(4);
  cfg.mutable_lora()->add_targets("q");
  cfg.mutable_lora()->add_targets("v");
  auto result = pipelines::run_reward_stage(cfg);
  EXPECT_EQ(result.steps, 12);

  // The resumable state holds the model as it trained.
  std::string state;
  for (auto& e : std::filesystem::recursive_directory_iterator(out + "/state"))
    if (e.path().filename() == "model.pt") state = e.path().string();
  ASSERT_FALSE(state.empty());
  torch::serialize::InputArchive ar;
  ar.load_from(state);
  const std::vector<std::pair<std::string, torch::ScalarType>> expected = {
      {"layers.0.q_proj.weight", torch::kBFloat16},
      {"layers.1.down_proj.weight", torch::kBFloat16},  // frozen, not a LoRA target
      {"embed_tokens.weight", torch::kBFloat16},        // frozen too: no float32 copy
      {"layers.0.input_layernorm", torch::kFloat},
      {"value_head.weight", torch::kFloat},
      {"lora.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", torch::kFloat}};
  for (const auto& [name, dtype] : expected) {
    torch::Tensor t;
    ar.read(name, t);
    EXPECT_EQ(t.scalar_type(), dtype) << name;
  }

  // model/ is float32 and loads as a plain reward model.
  const policy::SafetensorsFile written(out + "/model/model.safetensors");
  for (const auto& [name, e] : written.entries()) EXPECT_EQ(e.dtype_name, "F32") << name;
  for (const auto& p : policy::load_checkpoint(out + "/model").model->parameters())
    EXPECT_EQ(p.scalar_type(), torch::kFloat);

  // It scores the held-out pairs as the trained model did: its metrics, and the in-memory bf16
  // model's eval/loss at the best step (bfloat16 rounding apart; the shift leaves pair losses).
  double live_loss = -1;
  {
    std::ifstream in(out + "/metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line);
      if (j.contains("eval/loss") && j["step"].get<int64_t>() == result.best_step)
        live_loss = j["eval/loss"].get<double>();
    }
  }
  ASSERT_GE(live_loss, 0) << "no eval/loss at step " << result.best_step;
  RewardScorer scorer(out);
  const auto comparisons = read_pairs_jsonl(*dir_ / "test.jsonl");
  auto m = scorer.evaluate(comparisons);
  EXPECT_TRUE(std::isfinite(m.loss) && std::isfinite(m.mean_margin)) << to_json(m);
  EXPECT_EQ(m.n, static_cast<int64_t>(comparisons.size()));
  EXPECT_NEAR(m.loss, result.heldout.loss, 1e-4) << to_json(m);
  EXPECT_NEAR(m.loss, live_loss, 0.02 + 0.02 * live_loss) << to_json(m);
  std::printf("LoRA bf16 reward: held-out loss %.5f saved, %.5f in-memory bf16\n", m.loss,
              live_loss);
}

// LoRA from scratch with a resume: the frozen base is rebuilt from the seed, the head and the
// adapters come from the state; the result matches an uninterrupted run.
TEST_F(SyntheticTraining, LoraResumesFromSavedState) {
  auto lora_cfg = [&](const std::string& out) {
    auto cfg = config(out);
    cfg.set_steps(12);
    cfg.set_eval_every(6);
    cfg.mutable_optimizer()->set_lr(1e-2);
    cfg.mutable_lora()->set_rank(4);
    return cfg;
  };
  auto full = pipelines::run_reward_stage(lora_cfg(*dir_ / "lora_full"));
  auto cfg = lora_cfg(*dir_ / "lora_resume");
  cfg.set_time_limit_seconds(1e-6f);  // stops after the first step, state saved
  EXPECT_EQ(pipelines::run_reward_stage(cfg).steps, 1);
  EXPECT_TRUE(file_exists(*dir_ / "lora_resume/state/latest"));
  cfg.set_time_limit_seconds(0);
  auto second = pipelines::run_reward_stage(cfg);
  EXPECT_EQ(second.steps, 12);
  std::printf("LoRA reward resume: held-out loss %.6f (uninterrupted %.6f), accuracy %.4f\n",
              second.heldout.loss, full.heldout.loss, second.heldout.accuracy);
  EXPECT_NEAR(second.heldout.loss, full.heldout.loss, 1e-3 + 1e-3 * full.heldout.loss);
  EXPECT_EQ(second.heldout.accuracy, full.heldout.accuracy);
}

TEST_F(SyntheticTraining, TrainsFromAnAnnotationDatabase) {
  std::string db = *dir_ / "annotation.db";
  {
    annotation::Store store(db);
    auto imported = annotation::import_preferences(store, *dir_ / "train.jsonl", "pairs");
    (void)imported;
  }
  std::string out = *dir_ / "fromdb";
  auto cfg = config(out);
  cfg.clear_train_file();
  cfg.set_annotation_db(db);
  cfg.set_steps(3);
  cfg.set_eval_every(3);
  pipelines::export_annotation_pairs(&cfg);  // the CLI / pipeline layer; reward/ reads files only
  auto r = pipelines::run_reward_stage(cfg);
  EXPECT_EQ(r.steps, 3);
  auto exported = read_pairs_jsonl(out + "/comparisons.jsonl");
  EXPECT_EQ(exported.size(), read_pairs_jsonl(*dir_ / "train.jsonl").size());
}

}  // namespace
}  // namespace rlhf::reward

namespace rlhf::reward {
namespace {

// A finished run of the same config is not trained again; the same folder with another config is
// refused with a message that says how to start afresh.
TEST_F(SyntheticTraining, FinishedRunIsKeptAndAnotherConfigRefused) {
  std::string out = *dir_ / "finished";
  auto cfg = config(out);
  cfg.set_steps(4);
  cfg.set_eval_every(2);
  auto first = pipelines::run_reward_stage(cfg);
  EXPECT_FALSE(first.already_complete);
  const std::string weights = read_file(out + "/model/model.safetensors");
  auto again = pipelines::run_reward_stage(cfg);
  EXPECT_TRUE(again.already_complete);
  EXPECT_EQ(again.steps, 4);
  EXPECT_DOUBLE_EQ(again.heldout.accuracy, first.heldout.accuracy);
  EXPECT_EQ(read_file(out + "/model/model.safetensors"), weights);
  cfg.set_steps(5);
  try {
    pipelines::run_reward_stage(cfg);
    FAIL() << "a different config was not refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("to start afresh delete " + out + "/state"),
              std::string::npos)
        << e.what();
  }
}

// One ranking group: nothing can be held out, so the final model (not the first evaluation's) is
// the one kept.
TEST_F(SyntheticTraining, EmptyHeldOutKeepsTheFinalModel) {
  std::ifstream in(*dir_ / "train.jsonl");
  std::ofstream one(*dir_ / "one_group.jsonl");
  std::string line;
  int n = 0;
  std::string prompt;
  while (std::getline(in, line) && n < 40) {
    auto j = nlohmann::json::parse(line);
    if (prompt.empty()) prompt = j["prompt"].get<std::string>();
    j["prompt"] = prompt;
    j["task_id"] = 7;
    one << j.dump() << "\n";
    ++n;
  }
  one.close();
  std::string out = *dir_ / "one_group";
  auto cfg = config(out);
  cfg.set_train_file(*dir_ / "one_group.jsonl");
  cfg.set_steps(6);
  cfg.set_eval_every(2);
  auto r = pipelines::run_reward_stage(cfg);
  EXPECT_EQ(r.heldout.n, 0);
  EXPECT_EQ(r.best_step, 6);
  auto meta = policy::load_checkpoint(out + "/model").info;
  EXPECT_EQ(meta.step, 6);
}

}  // namespace
}  // namespace rlhf::reward
