// The `ppo` stage end to end with real files: a trained tokenizer, a native policy checkpoint,
// a reward model folder, text prompts and a pbtxt config -> model, manifest, rollouts, resume.
#include "pipelines/ppo_stage.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "annotation/sqlite_store.h"
#include "common/error.h"
#include "common/files.h"
#include "common/manifest.h"
#include "common/text_config.h"
#include "pipelines/memory_plans.h"
#include "policy/model/checkpoint.h"
#include "policy/model/safetensors.h"
#include "policy/ppo/ppo_config.h"
#include "policy/ppo/ppo_replay.h"
#include "policy/ppo/rollout_file.h"
#include "policy/tokenizer/chat_template.h"
#include "policy/tokenizer/tokenizer.h"
#include "reward/reward_model.h"
#include "reward/scorer.h"
#include "tests/fixtures/chat_data.h"
#include "tests/fixtures/tiny_model.h"
#include "tests/test_support.h"

using namespace rlhf;
using rlhf::testing::TempDir;

namespace {
// The tiny model (tests/fixtures/tiny_model.h) with one layer, full attention heads, 96
// positions and the tokenizer's vocabulary and special ids.
policy::ModelConfig tiny(int vocab, const policy::Tokenizer& tok) {
  policy::ModelConfig c = policy::testing::tiny_config(96);
  c.vocab_size = vocab;
  c.n_layers = 1;
  c.n_kv_heads = 4;
  c.bos_id = tok.bos_id();
  c.eos_id = tok.eos_id();
  c.pad_id = tok.pad_id() >= 0 ? tok.pad_id() : 0;
  return c;
}
}  // namespace

// dtype bf16 with LoRA from folders: the stage reads the policy's frozen base (and a reference
// folder) in bfloat16 and a separate critic as a float32 copy read again; a separate reference
// read so equals the policy's base (the KL of the first rollout is exactly 0, with it and
// without it); the final model/ is float32.
TEST(PpoStage, Bf16LoraReadsFrozenBasesInBf16) {
  TempDir dir("ppo_stage_bf16");
  {
    std::ofstream corpus(dir / "corpus.txt");
    for (int i = 0; i < 200; ++i) corpus << "tom has " << i % 20 << " apples and more\n";
  }
  policy::TokenizerTrainOptions t;
  t.input = dir / "corpus.txt";
  t.vocab_size = 60;
  t.byte_fallback = false;
  t.out_dir = dir / "tok";
  const std::string tok_path = policy::train_tokenizer(t);
  auto tok = policy::Tokenizer::load(tok_path);
  torch::manual_seed(3);
  policy::Transformer pol(tiny(tok.vocab_size(), tok));
  policy::init_weights(pol);
  policy::CheckpointInfo info;
  info.tokenizer_sha256 = tok.sha256();
  policy::save_checkpoint(pol, dir / "sft", info);
  policy::Transformer rm(tiny(tok.vocab_size(), tok));
  policy::init_weights(rm);
  rm->add_value_head();
  proto::RewardModelMeta meta;
  meta.set_schema_version(1);
  meta.set_max_prompt_tokens(32);
  meta.set_max_answer_tokens(32);
  reward::save_reward_model(rm, tok_path, meta, dir / "reward", 1);
  {
    std::ofstream p(dir / "prompts.jsonl");
    for (int i = 0; i < 4; ++i) p << "{\"prompt\": \"tom has " << i << " apples\"}\n";
  }
  for (const std::string& reference : {std::string(), "reference: \"" + dir / "sft" + "\"\n"}) {
    const std::string out = dir / (reference.empty() ? "ppo" : "ppo_ref");
    std::ofstream(dir / "ppo.pbtxt")
        << "policy: \"" << dir / "sft"
        << "\"\nreward_model: \"" << dir / "reward"
        << "\"\nprompts: \"" << dir / "prompts.jsonl"
        << "\"\ntokenizer: \"" << tok_path << "\"\n"
        << reference
        << "iterations: 1 batch_size: 4 minibatch_size: 4 ppo_epochs: 1 max_new_tokens: 4\n"
        << "dtype: \"bf16\" lora { rank: 4 } checkpoint_every: 0\n";
    pipelines::PpoStageOptions o;
    o.config_path = dir / "ppo.pbtxt";
    o.out_dir = out;
    auto stats = pipelines::run_ppo_stage(o);
    EXPECT_EQ(stats.at("kl/mean"), 0.0) << out;
    auto final_model = policy::load_checkpoint(out + "/model");
    const policy::SafetensorsFile written(out + "/model/model.safetensors");
    for (const auto& [name, e] : written.entries()) EXPECT_EQ(e.dtype_name, "F32") << name;
  }
}

TEST(PpoStage, RunsFromConfigFilesAndResumes) {
  TempDir dir("ppo_stage");
  {
    std::ofstream corpus(dir / "corpus.txt");
    for (int i = 0; i < 200; ++i)
      corpus << "tom has " << i % 20 << " apples and buys " << (i * 7) % 13 << " more\n"
             << "he has " << (i % 20 + (i * 7) % 13) << " apples\n";
  }
  policy::TokenizerTrainOptions t;
  t.input = dir / "corpus.txt";
  t.vocab_size = 80;
  t.byte_fallback = false;
  t.out_dir = dir / "tok";
  const std::string tok_path = policy::train_tokenizer(t);
  auto tok = policy::Tokenizer::load(tok_path);

  torch::manual_seed(3);
  policy::Transformer pol(tiny(tok.vocab_size(), tok));
  policy::init_weights(pol);
  policy::CheckpointInfo info;
  info.tokenizer_sha256 = tok.sha256();
  policy::save_checkpoint(pol, dir / "sft", info);

  policy::Transformer rm(tiny(tok.vocab_size(), tok));
  policy::init_weights(rm);
  rm->add_value_head();
  proto::RewardModelMeta meta;
  meta.set_schema_version(1);
  meta.set_max_prompt_tokens(32);
  meta.set_max_answer_tokens(32);
  reward::save_reward_model(rm, tok_path, meta, dir / "reward", 1);

  {
    std::ofstream p(dir / "prompts.jsonl");
    for (int i = 0; i < 6; ++i)
      p << "{\"prompt\": \"tom has " << i << " apples and buys 2 more\"}\n";
    std::ofstream c(dir / "ppo.pbtxt");
    c << "policy: \"" << dir / "sft"
      << "\"\n"
      << "reward_model: \"" << dir / "reward"
      << "\"\n"
      << "value_model: \"" << dir / "reward"
      << "\"\n"
      << "prompts: \"" << dir / "prompts.jsonl"
      << "\"\n"
      << "tokenizer: \"" << tok_path << "\"\n"
      << "iterations: 2 batch_size: 8 minibatch_size: 4 ppo_epochs: 2\n"
      << "max_new_tokens: 8 optimizer { lr: 1e-3 } critic_lr: 1e-3 checkpoint_every: 1\n"
      << "missing_eos_penalty: 0.5 score_clip: 5 adaptive_kl: true\n";
  }
  pipelines::PpoStageOptions o;
  o.config_path = dir / "ppo.pbtxt";
  o.out_dir = dir / "ppo";
  auto stats = pipelines::run_ppo_stage(o);
  EXPECT_TRUE(stats.count("score/mean"));
  auto m = require_complete_manifest(dir / "ppo", "ppo");
  EXPECT_EQ(m.metrics().at("iterations"), 2.0);
  EXPECT_EQ(m.tokenizer_sha256(), tok.sha256());
  auto final_model = policy::load_checkpoint(dir / "ppo/model");
  EXPECT_EQ(final_model.info.tokenizer_sha256, tok.sha256());
  // The final model carries its tokenizer, as sft's model/ does.
  EXPECT_EQ(policy::Tokenizer::load(dir / "ppo/model").sha256(), tok.sha256());

  auto recs = policy::read_rollouts(dir / "ppo/rollouts/iter-0002.pb");
  ASSERT_EQ(recs.size(), 8u);
  EXPECT_FALSE(recs[0].prompt_text().empty());
  for (const auto& r : recs) {
    EXPECT_EQ(policy::recompute_sample(r, {}).mismatches, 0);
    // The missing-EOS penalty and the clip shape the score that entered the rewards.
    float expect = r.raw_score() - (r.ended_with_eos() ? 0.f : 0.5f);
    expect = std::max(-5.f, std::min(5.f, expect));
    EXPECT_FLOAT_EQ(r.score(), expect);
  }
  // Replay with the checkpoint that sampled iteration 2's rollouts (the one saved after 1):
  // log-probs agree (no train/inference mismatch).
  auto checks = policy::recompute_logprobs(policy::read_rollouts(dir / "ppo/rollouts/iter-0001.pb"),
                                           dir / "sft");
  for (auto& c : checks) EXPECT_LT(c.max_abs_diff, 1e-4) << "sample " << c.index;

  // Resume: two more iterations continue from iteration 2.
  o.iterations = 4;
  pipelines::run_ppo_stage(o);
  EXPECT_EQ(require_complete_manifest(dir / "ppo", "ppo").metrics().at("iterations"), 4.0);
  EXPECT_TRUE(file_exists(dir / "ppo/rollouts/iter-0004.pb"));

  // Prompts straight from an annotation database.
  {
    annotation::Store store(dir / "annotation.db");
    for (int i = 0; i < 3; ++i) {
      annotation::TaskInput task;
      task.prompt = "tom has " + std::to_string(i) + " apples";
      task.answers = {"he has 1 apples", "he has 2 apples"};
      store.add_task(task, 1);
    }
  }
  {
    std::string text = read_file(dir / "ppo.pbtxt");
    text.replace(text.find("prompts.jsonl"), 13, "annotation.db");
    write_file_atomic(dir / "ppo_db.pbtxt", text);
  }
  pipelines::PpoStageOptions odb;
  odb.config_path = dir / "ppo_db.pbtxt";
  odb.out_dir = dir / "ppo_db";
  odb.iterations = 1;
  pipelines::run_ppo_stage(odb);
  auto db_recs = policy::read_rollouts(dir / "ppo_db/rollouts/iter-0001.pb");
  ASSERT_EQ(db_recs.size(), 8u);
  EXPECT_EQ(db_recs[0].prompt_text().rfind("tom has ", 0), 0u) << db_recs[0].prompt_text();

  // A config error names the file and line.
  std::ofstream(dir / "bad.pbtxt") << "policy: \"x\"\nbatch_sise: 3\n";
  o.config_path = dir / "bad.pbtxt";
  try {
    pipelines::run_ppo_stage(o);
    FAIL();
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("bad.pbtxt"), std::string::npos) << msg;
    EXPECT_NE(msg.find("batch_sise"), std::string::npos) << msg;
  }
}

// critic "reward_base" through the stage: the critic is built on the teacher's reward model (no
// policy LoRA: the critic's adapters take rank 8). Every rollout's raw score equals, bit for bit,
// what a separately loaded reward model gives the same ids (the teacher scores with the plain
// reward model while the critic's adapters train on its base); critic.pt holds the head and the
// adapters alone; an interrupted run resumed to iteration 3 logs what an uninterrupted one does
// (a constant lr: extending a finished run stretches a decaying schedule).
TEST(PpoStage, RewardBaseCriticSharesTheTeachersBase) {
  TempDir dir("ppo_stage_rb");
  {
    std::ofstream corpus(dir / "corpus.txt");
    for (int i = 0; i < 100; ++i) corpus << "tom has " << i % 20 << " apples and buys 3 more\n";
  }
  policy::TokenizerTrainOptions t;
  t.input = dir / "corpus.txt";
  t.vocab_size = 60;
  t.byte_fallback = false;
  t.out_dir = dir / "tok";
  const std::string tok_path = policy::train_tokenizer(t);
  auto tok = policy::Tokenizer::load(tok_path);
  torch::manual_seed(5);
  policy::Transformer pol(tiny(tok.vocab_size(), tok));
  policy::init_weights(pol);
  policy::CheckpointInfo info;
  info.tokenizer_sha256 = tok.sha256();
  policy::save_checkpoint(pol, dir / "sft", info);
  policy::Transformer rm(tiny(tok.vocab_size(), tok));
  policy::init_weights(rm);
  rm->add_value_head();
  proto::RewardModelMeta meta;
  meta.set_schema_version(1);
  meta.set_max_prompt_tokens(32);
  meta.set_max_answer_tokens(32);
  reward::save_reward_model(rm, tok_path, meta, dir / "reward", 1);
  {
    std::ofstream p(dir / "prompts.jsonl");
    for (int i = 0; i < 6; ++i) p << "{\"prompt\": \"tom has " << i << " apples\"}\n";
    std::ofstream c(dir / "ppo.pbtxt");
    c << "policy: \"" << dir / "sft"
      << "\"\nreward_model: \"" << dir / "reward"
      << "\"\nprompts: \"" << dir / "prompts.jsonl"
      << "\"\ntokenizer: \"" << tok_path << "\"\ncritic: \"reward_base\"\n"
      << "iterations: 3 batch_size: 8 minibatch_size: 4 ppo_epochs: 2 max_new_tokens: 6\n"
      << "optimizer { lr: 1e-3 schedule: \"constant\" } critic_lr: 1e-2 checkpoint_every: 1\n";
  }
  pipelines::PpoStageOptions o;
  o.config_path = dir / "ppo.pbtxt";
  o.out_dir = dir / "full";
  pipelines::run_ppo_stage(o);

  reward::RewardScorer plain(dir / "reward");
  for (int it = 1; it <= 3; ++it) {
    auto recs =
        policy::read_rollouts(dir / ("full/rollouts/iter-000" + std::to_string(it) + ".pb"));
    ASSERT_EQ(recs.size(), 8u);
    std::vector<std::vector<int>> ps, rs;
    for (const auto& r : recs) {
      const int skip = r.prompt_ids_size() > 0 && r.prompt_ids(0) == tok.bos_id() ? 1 : 0;
      ps.emplace_back(r.prompt_ids().begin() + skip, r.prompt_ids().end());
      rs.emplace_back(r.response_ids().begin(), r.response_ids().end());
    }
    auto scores = plain.score_ids(ps, rs);
    for (size_t i = 0; i < recs.size(); ++i)
      EXPECT_EQ(recs[i].raw_score(), scores[i]) << "iteration " << it << " sample " << i;
  }
  {
    torch::serialize::InputArchive ar;
    ar.load_from(dir / "full/checkpoints/iter-0003/critic.pt");
    for (const auto& k : ar.keys())
      EXPECT_TRUE(k.rfind("lora.", 0) == 0 || k.rfind("value_head.", 0) == 0) << k;
    torch::Tensor a;
    ASSERT_TRUE(
        ar.try_read("lora.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", a));
    EXPECT_EQ(a.size(0), 8);
  }

  o.out_dir = dir / "resumed";
  o.iterations = 2;
  pipelines::run_ppo_stage(o);
  o.iterations = 3;
  pipelines::run_ppo_stage(o);
  auto last = [](const std::string& path) {
    std::ifstream in(path);
    std::string line, prev;
    while (std::getline(in, line))
      if (!line.empty()) prev = line;
    return prev;
  };
  auto a = nlohmann::json::parse(last(dir / "full/metrics.jsonl"));
  auto b = nlohmann::json::parse(last(dir / "resumed/metrics.jsonl"));
  for (const char* k : {"score/mean", "loss/value", "loss/policy", "kl/mean", "values/mean"})
    if (a.contains(k)) {
      EXPECT_EQ(a[k].get<double>(), b[k].get<double>()) << k;
    }
  EXPECT_EQ(a["step"].get<int>(), 3);
}

// dtype bf16 with critic "reward_base": the teacher's reward model is read with its matrices and
// embedding table in bfloat16 and scores under bf16 autocast (every rollout's raw score equals,
// bit for bit, what a bf16 RewardScorer gives the same ids, and they are not the float32 scores);
// the critic trains its adapters and head on that bfloat16 base under autocast. The memory plan
// counts what is loaded: its "reward model" weights row is the bytes of the reward model's
// parameters as the scorer holds them (bf16 and fp32), and the critic's fused cache (its q/k/v
// and gate/up matrices concatenated) takes 2 bytes per element under bf16, 4 under fp32.
TEST(PpoStage, Bf16TeacherAndRewardBaseCriticHoldTheRewardModelInBf16) {
  TempDir dir("ppo_stage_bf16_rb");
  {
    std::ofstream corpus(dir / "corpus.txt");
    for (int i = 0; i < 100; ++i) corpus << "tom has " << i % 20 << " apples and buys 3 more\n";
  }
  policy::TokenizerTrainOptions t;
  t.input = dir / "corpus.txt";
  t.vocab_size = 60;
  t.byte_fallback = false;
  t.out_dir = dir / "tok";
  const std::string tok_path = policy::train_tokenizer(t);
  auto tok = policy::Tokenizer::load(tok_path);
  torch::manual_seed(9);
  policy::Transformer pol(tiny(tok.vocab_size(), tok));
  policy::init_weights(pol);
  policy::CheckpointInfo info;
  info.tokenizer_sha256 = tok.sha256();
  policy::save_checkpoint(pol, dir / "sft", info);
  policy::Transformer rm(tiny(tok.vocab_size(), tok));
  policy::init_weights(rm);
  rm->add_value_head();
  proto::RewardModelMeta meta;
  meta.set_schema_version(1);
  meta.set_max_prompt_tokens(32);
  meta.set_max_answer_tokens(32);
  reward::save_reward_model(rm, tok_path, meta, dir / "reward", 1);
  const std::string base = "policy: \"" + dir / "sft" + "\"\nreward_model: \"" + dir / "reward" +
                           "\"\nprompts: \"" + dir / "prompts.jsonl" + "\"\ntokenizer: \"" +
                           tok_path + "\"\ncritic: \"reward_base\"\n" +
                           "iterations: 1 batch_size: 8 minibatch_size: 4 ppo_epochs: 1 " +
                           "max_new_tokens: 6 lora { rank: 4 } checkpoint_every: 1\n";
  {
    std::ofstream p(dir / "prompts.jsonl");
    for (int i = 0; i < 6; ++i) p << "{\"prompt\": \"tom has " << i << " apples\"}\n";
    std::ofstream(dir / "bf16.pbtxt") << base << "dtype: \"bf16\"\n";
    std::ofstream(dir / "fp32.pbtxt") << base;
  }
  pipelines::PpoStageOptions o;
  o.config_path = dir / "bf16.pbtxt";
  o.out_dir = dir / "run";
  const auto stats = pipelines::run_ppo_stage(o);
  EXPECT_TRUE(std::isfinite(stats.at("loss/value"))) << "the critic trained on the bf16 base";
  EXPECT_TRUE(file_exists(dir / "run/checkpoints/iter-0001/critic.pt"));

  reward::ScorerOptions bf16_options;
  bf16_options.precision = policy::Precision::kBf16;
  reward::RewardScorer bf16(dir / "reward", bf16_options), fp32(dir / "reward");
  auto recs = policy::read_rollouts(dir / "run/rollouts/iter-0001.pb");
  ASSERT_EQ(recs.size(), 8u);
  std::vector<std::vector<int>> ps, rs;
  for (const auto& r : recs) {
    const int skip = r.prompt_ids_size() > 0 && r.prompt_ids(0) == tok.bos_id() ? 1 : 0;
    ps.emplace_back(r.prompt_ids().begin() + skip, r.prompt_ids().end());
    rs.emplace_back(r.response_ids().begin(), r.response_ids().end());
  }
  const auto want = bf16.score_ids(ps, rs), fp = fp32.score_ids(ps, rs);
  int differ = 0;
  for (size_t i = 0; i < recs.size(); ++i) {
    EXPECT_EQ(recs[i].raw_score(), want[i]) << "sample " << i;
    differ += recs[i].raw_score() != fp[i];
  }
  EXPECT_GT(differ, 0) << "the teacher scored in float32";

  // The plan's rows against the models as loaded.
  auto bytes = [](policy::Transformer& m, bool fused_only) {
    int64_t n = 0;
    for (const auto& p : m->named_parameters()) {
      const std::string& k = p.key();
      const bool fused =
          k.find("weight") != std::string::npos &&
          (k.find("q_proj") != std::string::npos || k.find("k_proj") != std::string::npos ||
           k.find("v_proj") != std::string::npos || k.find("gate_proj") != std::string::npos ||
           k.find("up_proj") != std::string::npos);
      if (!fused_only || fused) n += p.value().numel() * p.value().element_size();
    }
    return n;
  };
  auto row = [](const policy::MemoryPlan& plan, const std::string& component,
                const std::string& part) {
    for (const auto& r : plan.rows)
      if (r.component == component && r.part == part) return r.bytes;
    ADD_FAILURE() << "no row " << component << " / " << part << " in\n" << plan.table();
    return int64_t{-1};
  };
  for (auto* scorer : {&bf16, &fp32}) {
    const bool half = scorer == &bf16;
    const auto plan = pipelines::ppo_memory_plan(policy::resolved_ppo_config(
        policy::load_ppo_config(dir / (half ? "bf16.pbtxt" : "fp32.pbtxt"))));
    EXPECT_EQ(row(plan, "reward model", "weights"), bytes(scorer->model(), false)) << plan.table();
    EXPECT_EQ(row(plan, "critic", "fused cache"), bytes(scorer->model(), true)) << plan.table();
  }
}

// Conversation prompts through the stage: the rollouts' prompts are the chat template's
// renderings, and generation_config.json's eos_token_id list stops generation. Here it lists
// every byte token, so each response is one token long and counts as ended with EOS (the policy's
// own eos is <|im_end|>): no missing-EOS penalty enters the score.
TEST(PpoStage, MessagesPromptsRenderWithTheTemplateAndStopAtItsIds) {
  TempDir dir("ppo_stage_msg");
  const std::string tok_path = rlhf::testing::write_chatml_tokenizer(dir / "tok");
  nlohmann::json stops = nlohmann::json::array();
  for (int id = 0; id < 256; ++id) stops.push_back(id);
  write_file_atomic(dir / "tok/generation_config.json",
                    nlohmann::json{{"eos_token_id", stops}}.dump());
  auto tok = policy::Tokenizer::load(tok_path);
  ASSERT_EQ(tok.eos_id(), rlhf::testing::kImEndId);
  torch::manual_seed(5);
  policy::Transformer pol(tiny(tok.vocab_size(), tok));
  policy::init_weights(pol);
  policy::CheckpointInfo info;
  info.tokenizer_sha256 = tok.sha256();
  policy::save_checkpoint(pol, dir / "sft", info);
  policy::Transformer rm(tiny(tok.vocab_size(), tok));
  policy::init_weights(rm);
  rm->add_value_head();
  proto::RewardModelMeta meta;
  meta.set_schema_version(1);
  meta.set_max_prompt_tokens(64);
  meta.set_max_answer_tokens(16);
  reward::save_reward_model(rm, tok_path, meta, dir / "reward", 1);
  {
    std::ofstream p(dir / "prompts.jsonl");
    for (int i = 0; i < 4; ++i)
      p << R"({"messages": [{"role": "user", "content": "hi )" << i << R"("}]})"
        << "\n";
    std::ofstream c(dir / "ppo.pbtxt");
    c << "policy: \"" << dir / "sft"
      << "\"\nreward_model: \"" << dir / "reward"
      << "\"\nprompts: \"" << dir / "prompts.jsonl"
      << "\"\ntokenizer: \"" << dir / "tok"
      << "\"\niterations: 1 batch_size: 4 minibatch_size: 2 ppo_epochs: 1\n"
      << "max_new_tokens: 8 optimizer { lr: 1e-3 } critic_lr: 1e-3\n"
      << "missing_eos_penalty: 0.5\n";
  }
  pipelines::PpoStageOptions o;
  o.config_path = dir / "ppo.pbtxt";
  o.out_dir = dir / "ppo";
  pipelines::run_ppo_stage(o);
  // The prompts' ids: the renderings' ids, no BOS added.
  const auto chat = policy::ChatTemplate::load(dir / "tok/tokenizer_config.json");
  std::set<std::vector<int64_t>> rendered;
  for (int i = 0; i < 4; ++i) {
    const nlohmann::ordered_json conv = {
        {{"role", "user"}, {"content", "hi " + std::to_string(i)}}};
    std::vector<int64_t> ids;
    for (int id : tok.encode(chat.render(conv, true))) ids.push_back(id);
    rendered.insert(ids);
  }
  auto recs = policy::read_rollouts(dir / "ppo/rollouts/iter-0001.pb");
  ASSERT_EQ(recs.size(), 4u);
  for (const auto& r : recs) {
    const std::vector<int64_t> prompt(r.prompt_ids().begin(), r.prompt_ids().end());
    EXPECT_TRUE(rendered.count(prompt)) << r.prompt_text();
    // The rollout's text: every id decoded (<|im_end|>, the tokenizer's EOS, is skipped).
    EXPECT_EQ(r.prompt_text().rfind("<|im_start|>user\nhi ", 0), 0u) << r.prompt_text();
    EXPECT_NE(r.prompt_text().find("\n<|im_start|>assistant\n"), std::string::npos)
        << r.prompt_text();
    ASSERT_EQ(r.response_ids_size(), 1);
    EXPECT_LT(r.response_ids(0), 256);
    EXPECT_TRUE(r.ended_with_eos());
    EXPECT_FLOAT_EQ(r.score(), r.raw_score());
  }
}

// Bad values stop the stage with "<file>:<line>: field '<name>': <expected>, got <value>" before
// any model, tokenizer or prompt file is read (the paths below do not exist).
TEST(PpoStage, BadConfigValuesStopBeforeAnyModelIsRead) {
  TempDir dir("ppo_bad_values");
  const std::string path = dir / "ppo.pbtxt";
  const std::string inputs = "policy: \"" + dir / "no_policy" + "\"\nreward_model: \"" +
                             dir / "no_reward" + "\"\nprompts: \"" + dir / "no_prompts.jsonl" +
                             "\"\n";  // lines 1-3
  auto error_of = [&](const std::string& extra) {
    write_file_atomic(path, inputs + extra);
    pipelines::PpoStageOptions o;
    o.config_path = path;
    o.out_dir = dir / "out";
    try {
      pipelines::run_ppo_stage(o);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(error_of("top_k: 5\n"),
            path +
                ":4: field 'top_k': expected 0 (PPO samples from the full softmax; top-k would "
                "bias the ratio and KL), got 5");
  EXPECT_EQ(error_of("\ntop_p: 0.9\n"),
            path +
                ":5: field 'top_p': expected 1 (PPO samples from the full softmax; nucleus "
                "sampling would bias the ratio and KL), got 0.9");
  EXPECT_EQ(error_of("temperature: 0\n"),
            path +
                ":4: field 'temperature': expected > 0 (PPO log-probs and KL use the full "
                "softmax at this temperature; greedy sampling is not supported), got 0");
  EXPECT_EQ(error_of("lora {\n  rank: 4\n  dropout: 0.1\n}\n"),
            path +
                ":6: field 'lora.dropout': expected 0 for PPO (rollout log-probs are computed "
                "without dropout, so the first minibatch's ratio would not be 1), got 0.1");
  EXPECT_EQ(error_of("batch_size: 8\nminibatch_size: 16\n"),
            path + ":5: field 'minibatch_size': expected a value in [1, batch_size = 8], got 16");
  // A required input missing (not in the file: no line).
  write_file_atomic(path, "prompts: \"p.jsonl\"\nreward_model: \"r\"\n");
  pipelines::PpoStageOptions o;
  o.config_path = path;
  try {
    pipelines::run_ppo_stage(o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              path + ": field 'policy': expected a path (required), got \"\"");
  }
  EXPECT_FALSE(file_exists(dir / "out"));  // nothing was started
}

// An empty PPO config resolves to the defaults documented in proto/ppo.proto, and they pass
// validation (the sampling settings included).
TEST(PpoConfig, EmptyConfigHasDocumentedDefaults) {
  proto::PpoConfig c = policy::parse_ppo_config("", "empty.pbtxt");
  fill_defaults(&c);
  EXPECT_EQ(c.device(), "cpu");
  EXPECT_EQ(c.iterations(), 100);
  EXPECT_EQ(c.batch_size(), 64);
  EXPECT_EQ(c.minibatch_size(), 16);
  EXPECT_DOUBLE_EQ(c.critic_lr(), 1e-5);
  // The optimizer section: PPO's column of proto/optimizer.proto once resolved.
  EXPECT_DOUBLE_EQ(policy::resolved_ppo_config(c).optimizer().lr(), 1e-5);
  EXPECT_DOUBLE_EQ(policy::resolved_ppo_config(c).optimizer().eps(), 1e-5);
  EXPECT_DOUBLE_EQ(c.clip_range(), 0.2);
  EXPECT_FLOAT_EQ(c.temperature(), 1.0f);
  EXPECT_EQ(c.top_k(), 0);
  EXPECT_FLOAT_EQ(c.top_p(), 1.0f);
  EXPECT_EQ(c.keep_checkpoints(), 1);
  const std::string text = to_text_format(c);
  EXPECT_NE(text.find("kl_coef: 0.05"), std::string::npos) << text;
  EXPECT_NO_THROW(policy::validate_ppo_config(c, "empty.pbtxt"));
}
