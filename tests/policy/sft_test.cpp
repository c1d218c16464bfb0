// SFT: training lowers held-out loss; a killed run resumes to bit-identical weights (full and
// LoRA with dropout); LoRA SFT lowers the loss and writes adapters + a merged model; config and
// data errors name the file, line and field; text/packed data; Hugging Face init; the CLI.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "common/files.h"
#include "common/manifest.h"
#include "pipelines/stage_record.h"
#include "policy/model/checkpoint.h"
#include "policy/model/lora.h"
#include "policy/model/safetensors.h"
#include "policy/tokenizer/tokenizer.h"
#include "policy/training/lr_schedule.h"
#include "policy/training/optimizer_config.h"
#include "policy/training/sft_trainer.h"
#include "policy/training/training.h"
#include "tests/fixtures/optimizer_state.h"
#include "tests/fixtures/sft_data.h"
#include "tests/test_support.h"

namespace rlhf::policy {
namespace {

using rlhf::testing::TempDir;

class SftTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("sft");
    tokenizer_ = new std::string(rlhf::testing::tiny_tokenizer(*dir_));
    rlhf::testing::write_sft_jsonl(*dir_ / "train.jsonl", 600);
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete dir_;
  }

  // A tiny from-scratch config (d=32, 2 layers) over the synthetic corpus.
  static proto::SftConfig base_config(const std::string& out, const std::string& extra = "") {
    const std::string text =
        "train_file: \"" + (*dir_ / "train.jsonl") +
        "\"\n"
        "tokenizer: \"" +
        *tokenizer_ +
        "\"\n"
        "model { dim: 32 n_layers: 2 n_heads: 4 n_kv_heads: 2 max_seq_len: 48 }\n"
        "batch_size: 8\noptimizer { lr: 0.003 }\nheldout_fraction: 0.1\neval_batches: 4\nseed: 5\n"
        "device: \"" +
        rlhf::testing::test_device_name() +
        "\"\n"
        "out_dir: \"" +
        out + "\"\n" + extra;
    return parse_sft_config(text, "test.pbtxt");
  }

  static TempDir* dir_;
  static std::string* tokenizer_;
};
TempDir* SftTest::dir_ = nullptr;
std::string* SftTest::tokenizer_ = nullptr;

TEST_F(SftTest, LowersHeldOutLossAndWritesOutputs) {
  TempDir out("sft_run");
  auto cfg = base_config(out.path(), "steps: 60\neval_every: 20\n");
  const SftResult r = rlhf::pipelines::run_sft_stage(cfg);
  EXPECT_EQ(r.steps, 60);
  EXPECT_LT(r.final_eval_loss, r.first_eval_loss - 1.0)
      << "first " << r.first_eval_loss << " final " << r.final_eval_loss;
  std::printf("sft: eval loss %.3f -> %.3f (ppl %.2f), %.0f tok/s\n", r.first_eval_loss,
              r.final_eval_loss, r.final_eval_ppl, r.tokens_per_second);

  auto loaded = load_checkpoint(out / "model");
  EXPECT_EQ(loaded.info.tokenizer_sha256, sha256_file(*tokenizer_));
  EXPECT_EQ(loaded.info.step, 60);
  EXPECT_TRUE(file_exists(out / "model/tokenizer.model"));
  const auto m = require_complete_manifest(out.path(), "sft");
  EXPECT_EQ(m.metrics().at("steps"), 60);
  EXPECT_NEAR(m.metrics().at("final_eval_loss"), r.final_eval_loss, 1e-6);
  EXPECT_TRUE(file_exists(out / "manifest.json"));
  // metrics.jsonl: one line per step plus the evaluations (0, 20, 40, 60).
  std::ifstream in(out / "metrics.jsonl");
  std::string line;
  int lines = 0, evals = 0;
  while (std::getline(in, line)) {
    ++lines;
    if (line.find("eval_loss") != std::string::npos) ++evals;
  }
  EXPECT_EQ(lines, 64);
  EXPECT_EQ(evals, 4);

  // Running the same config again finds the finished run.
  EXPECT_TRUE(rlhf::pipelines::run_sft_stage(cfg).already_complete);
}

// bf16 mixed precision (autocast forward/backward, float32 master weights and optimizer state)
// learns like float32: the same 60 steps lower the held-out loss by more than 1 nat too, and the
// checkpoint holds float32 weights. On CPU this runs libtorch's CPU autocast.
// SFT with a tokenizer.json given by its folder: the model's special ids come from
// tokenizer_config.json, model/ carries tokenizer.json + tokenizer_config.json (not a .model), and
// a run that starts from model/ without a tokenizer field finds that tokenizer there.
TEST_F(SftTest, TokenizerJsonFolderTravelsWithTheModel) {
  TempDir out("sft_hf");
  const std::string json = rlhf::testing::write_byte_level_tokenizer(out / "hf");
  auto cfg = base_config(out / "run", "steps: 3\n");
  cfg.set_tokenizer(out / "hf");
  rlhf::pipelines::run_sft_stage(cfg);
  const auto loaded = load_checkpoint(out / "run/model");
  EXPECT_EQ(loaded.info.tokenizer_sha256, sha256_file(json));
  EXPECT_EQ(loaded.model->config().vocab_size, 259);
  EXPECT_EQ(loaded.model->config().bos_id, 256);
  EXPECT_EQ(loaded.model->config().eos_id, 257);
  EXPECT_EQ(loaded.model->config().pad_id, 258);
  EXPECT_EQ(read_file(out / "run/model/tokenizer.json"), read_file(json));
  EXPECT_TRUE(file_exists(out / "run/model/tokenizer_config.json"));
  EXPECT_FALSE(file_exists(out / "run/model/tokenizer.model"));

  auto again = base_config(out / "run2", "steps: 2\n");
  again.clear_tokenizer();
  again.clear_model();
  again.set_init_from(out / "run/model");
  rlhf::pipelines::run_sft_stage(again);
  EXPECT_EQ(load_checkpoint(out / "run2/model").info.tokenizer_sha256, sha256_file(json));
}

TEST_F(SftTest, Bf16LowersHeldOutLossWithFloat32Weights) {
  TempDir out("sft_bf16");
  auto cfg = base_config(out.path(), "steps: 60\neval_every: 30\ndtype: \"bf16\"\n");
  const SftResult r = rlhf::pipelines::run_sft_stage(cfg);
  EXPECT_EQ(r.steps, 60);
  EXPECT_LT(r.final_eval_loss, r.first_eval_loss - 1.0)
      << "first " << r.first_eval_loss << " final " << r.final_eval_loss;
  std::printf("sft bf16: eval loss %.3f -> %.3f, %.0f tok/s\n", r.first_eval_loss,
              r.final_eval_loss, r.tokens_per_second);
  auto loaded = load_checkpoint(out / "model");
  for (const auto& p : loaded.model->parameters()) EXPECT_EQ(p.scalar_type(), torch::kFloat);
  // dtype is not part of the run's identity: the finished run is found in fp32 as well.
  cfg.set_dtype("fp32");
  EXPECT_TRUE(rlhf::pipelines::run_sft_stage(cfg).already_complete);
}

TEST_F(SftTest, TextFormatPackedRows) {
  TempDir tmp("sft_text");
  rlhf::testing::write_text_corpus(tmp / "text.txt", 400);
  auto cfg = base_config(tmp / "out", "steps: 30\neval_every: 30\npacked: true\nseq_len: 16\n");
  cfg.set_train_file(tmp / "text.txt");  // not .jsonl: raw text, loss on every token
  const SftResult r = rlhf::pipelines::run_sft_stage(cfg);
  EXPECT_LT(r.final_eval_loss, r.first_eval_loss - 1.0)
      << "first " << r.first_eval_loss << " final " << r.final_eval_loss;
  const auto m = require_complete_manifest(tmp / "out", "sft");
  EXPECT_NE(m.resolved_config().find("format: \"text\""), std::string::npos) << m.resolved_config();
  // Packed rows are full (16 input tokens) except the last row of the data and the micro-batch
  // at the end of a pass, which never spans two passes.
  EXPECT_LE(m.metrics().at("tokens_seen"), 30 * 8 * 16);
  EXPECT_GT(m.metrics().at("tokens_seen"), 0.9 * 30 * 8 * 16);
}

TEST_F(SftTest, EarlyStopWhenEvalLossStopsImproving) {
  TempDir tmp("sft_early");
  // A learning rate far too high: the held-out loss gets worse than at the start.
  auto cfg = base_config(tmp / "out", "steps: 40\neval_every: 5\nearly_stop_patience: 2\n");
  cfg.mutable_optimizer()->set_lr(3.0);
  cfg.mutable_optimizer()->set_warmup_steps(0);  // no warm-up
  const SftResult r = rlhf::pipelines::run_sft_stage(cfg);
  EXPECT_TRUE(r.early_stopped);
  EXPECT_EQ(r.steps, 10);
  const auto m = require_complete_manifest(tmp / "out", "sft");
  EXPECT_EQ(m.metrics().at("early_stopped"), 1.0);
  EXPECT_TRUE(file_exists(tmp / "out/model/model.safetensors"));
}

// Runs `cfg` straight, and again killed after `kill_at` steps then resumed; compares weights.
void expect_bit_identical_resume(proto::SftConfig cfg, const TempDir& tmp, int64_t kill_at) {
  cfg.set_out_dir(tmp / "straight");
  const SftResult straight = rlhf::pipelines::run_sft_stage(cfg);
  ASSERT_FALSE(straight.interrupted);

  cfg.set_out_dir(tmp / "killed");
  cfg.set_stop_after(kill_at);
  const SftResult first = rlhf::pipelines::run_sft_stage(cfg);
  ASSERT_TRUE(first.interrupted);
  EXPECT_FALSE(file_exists(tmp / "killed/model/model.safetensors"));
  EXPECT_FALSE(read_manifest(tmp / "killed").value().complete());

  cfg.clear_stop_after();  // "the same command" (stop_after is not part of the run's identity)
  const SftResult resumed = rlhf::pipelines::run_sft_stage(cfg);
  EXPECT_GT(resumed.resumed_from, 0);
  EXPECT_LT(resumed.resumed_from, kill_at);
  EXPECT_EQ(resumed.steps, straight.steps);
  EXPECT_EQ(sha256_file(tmp / "killed/model/model.safetensors"),
            sha256_file(tmp / "straight/model/model.safetensors"));
  EXPECT_EQ(resumed.final_eval_loss, straight.final_eval_loss);
}

TEST_F(SftTest, KilledRunResumesBitIdentical) {
  TempDir tmp("sft_resume");
  // Warm-up + cosine over 14 steps, grad accumulation, a save every 4 steps, killed after 10
  // (the last save was at 8, so steps 9-10 are redone).
  auto cfg = base_config("",
                         "steps: 14\ngrad_accum: 2\noptimizer { warmup_steps: 3 }\n"
                         "eval_every: 5\nsave_every: 4\n");
  expect_bit_identical_resume(cfg, tmp, 10);
}

TEST_F(SftTest, LoraWithDropoutResumesBitIdentical) {
  // The torch RNG (LoRA dropout masks) is part of the saved state.
  TempDir tmp("sft_resume_lora");
  auto cfg = base_config("",
                         "steps: 9\neval_every: 3\nsave_every: 3\n"
                         "lora { rank: 4 alpha: 8 dropout: 0.2 targets: \"q\" targets: \"v\" "
                         "targets: \"down\" }\n");
  expect_bit_identical_resume(cfg, tmp, 5);
}

TEST_F(SftTest, LoraBf16KeepsFrozenMatricesBf16AndResumesBitIdentical) {
  TempDir tmp("sft_lora_bf16");
  auto cfg = base_config("",
                         "steps: 6\neval_every: 3\nsave_every: 3\ndtype: \"bf16\"\n"
                         "lora { rank: 4 targets: \"q\" targets: \"v\" }\n");
  expect_bit_identical_resume(cfg, tmp, 4);
  // The resumable state holds the model as it trained: frozen matrices bfloat16, the rest float32.
  std::string state;
  for (auto& e : std::filesystem::recursive_directory_iterator(tmp / "straight/state"))
    if (e.path().filename() == "model.pt") state = e.path().string();
  ASSERT_FALSE(state.empty());
  torch::serialize::InputArchive ar;
  ar.load_from(state);
  const std::vector<std::pair<std::string, torch::ScalarType>> expected = {
      {"layers.0.q_proj.weight", torch::kBFloat16},
      {"layers.1.down_proj.weight", torch::kBFloat16},  // frozen, not a LoRA target
      {"embed_tokens.weight", torch::kBFloat16},        // frozen too: no float32 copy
      {"layers.0.input_layernorm", torch::kFloat},
      {"lora.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", torch::kFloat}};
  for (const auto& [name, dtype] : expected) {
    torch::Tensor t;
    ar.read(name, t);
    EXPECT_EQ(t.scalar_type(), dtype) << name;
  }
  // The merged model is written in float32.
  auto loaded = load_checkpoint(tmp / "straight/model");
  for (const auto& p : loaded.model->parameters()) EXPECT_EQ(p.scalar_type(), torch::kFloat);
  const SafetensorsFile written(tmp / "straight/model/model.safetensors");
  for (const auto& [name, e] : written.entries()) EXPECT_EQ(e.dtype_name, "F32") << name;
}

TEST_F(SftTest, LoraSftLowersLossAndWritesAdapterAndMergedModel) {
  // LoRA fine-tunes a trained model: the real stories260K (Hugging Face layout, 512 ids; our
  // 300-piece tokenizer's ids fit inside). A freshly initialised tiny model is no good base: with
  // its embeddings, head and norms frozen at init scale, its logits cannot leave about +-0.6.
  RLHF_REQUIRE_DATA(hf, "stories260K-hf");
  TempDir tmp("sft_lora");
  const std::string text =
      "train_file: \"" + (*dir_ / "train.jsonl") +
      "\"\n"
      "tokenizer: \"" +
      *tokenizer_ +
      "\"\n"
      "init_from: \"" +
      hf +
      "\"\n"
      "steps: 40\neval_every: 20\nbatch_size: 8\noptimizer { lr: 0.01 }\nseed: 3\n"
      "heldout_fraction: 0.1\neval_batches: 4\nseq_len: 48\n"
      "lora { rank: 8 targets: \"q\" targets: \"k\" targets: \"v\" "
      "targets: \"o\" targets: \"gate\" targets: \"up\" targets: \"down\" }\n"
      "out_dir: \"" +
      (tmp / "lora") + "\"\n";
  const SftResult r = rlhf::pipelines::run_sft_stage(parse_sft_config(text, "lora.pbtxt"));
  std::printf("lora sft: eval loss %.3f -> %.3f\n", r.first_eval_loss, r.final_eval_loss);
  EXPECT_LT(r.final_eval_loss, r.first_eval_loss - 1.0)
      << "first " << r.first_eval_loss << " final " << r.final_eval_loss;
  EXPECT_TRUE(file_exists(tmp / "lora/adapter/adapter_model.safetensors"));

  // model/ is the merged plain checkpoint: it reproduces base + adapters.
  auto merged = load_checkpoint(tmp / "lora/model");
  auto base_model = load_checkpoint(hf);
  torch::NoGradGuard g;
  const auto ids = torch::randint(4, 300, {2, 16}, torch::kInt64);
  const auto base_out = base_model.model->forward(ids).clone();
  LoraAdapters lora(base_model.model, LoraAdapters::read_options(tmp / "lora/adapter"));
  lora.load(tmp / "lora/adapter");
  const auto adapted = base_model.model->forward(ids);
  EXPECT_LT((merged.model->forward(ids) - adapted).abs().max().item<float>(), 1e-4f);
  EXPECT_GT((adapted - base_out).abs().max().item<float>(), 1e-2f);  // the adapters do something
}

TEST_F(SftTest, HuggingFaceInit) {
  RLHF_REQUIRE_DATA(hf, "stories260K-hf");
  TempDir out("sft_hf");
  // stories260K has 512 ids; our 300-piece tokenizer's ids fit inside.
  const std::string text = "train_file: \"" + (*dir_ / "train.jsonl") +
                           "\"\n"
                           "tokenizer: \"" +
                           *tokenizer_ +
                           "\"\n"
                           "init_from: \"" +
                           hf +
                           "\"\nsteps: 3\nbatch_size: 4\nseq_len: 32\n"
                           "out_dir: \"" +
                           out.path() + "\"\n";
  const SftResult r = rlhf::pipelines::run_sft_stage(parse_sft_config(text, "hf.pbtxt"));
  EXPECT_EQ(r.steps, 3);
  auto loaded = load_checkpoint(out / "model");
  EXPECT_EQ(loaded.model->config().vocab_size, 512);
  EXPECT_EQ(loaded.model->config().dim, 64);
}

TEST(LrScheduleTest, LinearWarmupThenCosine) {
  WarmupCosine s;
  s.peak_lr = 1.0;
  s.min_lr = 0.1;
  s.warmup_steps = 4;
  s.total_steps = 14;  // cosine over steps 4..13 (9 intervals)
  EXPECT_DOUBLE_EQ(s.at(0), 0.25);
  EXPECT_DOUBLE_EQ(s.at(3), 1.0);
  EXPECT_DOUBLE_EQ(s.at(4), 1.0);
  EXPECT_NEAR(s.at(7), 0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * 3 / 9)), 1e-12);
  EXPECT_DOUBLE_EQ(s.at(13), 0.1);
  EXPECT_DOUBLE_EQ(s.at(20), 0.1);  // past the end: the floor
  for (int t = 4; t < 13; ++t) EXPECT_GT(s.at(t), s.at(t + 1));
  s.warmup_steps = 0;
  EXPECT_DOUBLE_EQ(s.at(0), 1.0);
}

TEST_F(SftTest, ConfigErrorsNameFileLineAndField) {
  try {
    parse_sft_config("steps: 3\nbatch_size: 2\nno_such_field: 1\n", "cfg.pbtxt");
    FAIL();
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("cfg.pbtxt:3"), std::string::npos) << m;
    EXPECT_NE(m.find("no_such_field"), std::string::npos) << m;
  }
  try {
    parse_sft_config("steps: 3\n\noptimizer { lr: -0.1 }\n", "cfg.pbtxt");
    FAIL();
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("cfg.pbtxt:3: field 'optimizer.lr'"), std::string::npos) << m;
  }
  try {
    parse_sft_config("format: \"csv\"\n", "cfg.pbtxt");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cfg.pbtxt:1: field 'format'"), std::string::npos)
        << e.what();
  }
  try {
    parse_sft_config("lora { rank: 4 targets: \"qq\" }\n", "cfg.pbtxt");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("qq"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_sft_config("steps: \"many\"\n", "cfg.pbtxt"), Error);
}

// The standard message shape, read from a real file: "<file>:<line>: field '<name>': <expected>,
// got <value>", for a top-level field, a nested one, and a value set after parsing (no line).
TEST(SftConfigTest, BadValuesReadFileLineFieldExpectedAndGot) {
  TempDir tmp("sft_cfg");
  const std::string path = tmp / "bad.pbtxt";
  auto error_of = [&](const std::string& text) {
    write_file_atomic(path, text);
    try {
      load_sft_config(path);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(error_of("steps: 3\n\noptimizer { lr: -0.1 }\n"),
            path + ":3: field 'optimizer.lr': expected > 0, got -0.1");
  EXPECT_EQ(error_of("steps: 3\nlora {\n  rank: 4\n  dropout: 1.5\n}\n"),
            path + ":4: field 'lora.dropout': expected a value in [0, 1), got 1.5");
  EXPECT_EQ(error_of("# comment\noptimizer {\n  weight_decay: -1\n}\n"),
            path + ":3: field 'optimizer.weight_decay': expected >= 0 (0 = none), got -1");
  EXPECT_EQ(error_of("optimizer { schedule: \"step\" }\n"),
            path +
                ":1: field 'optimizer.schedule': expected \"cosine\", \"linear\" or \"constant\", "
                "got \"step\"");
  EXPECT_EQ(error_of("format: \"csv\"\n"),
            path + ":1: field 'format': expected \"auto\", \"jsonl\" or \"text\", got \"csv\"");
  proto::SftConfig c;
  c.set_batch_size(0);  // e.g. from a command-line flag: not in the file, so no line
  try {
    validate_sft_config(c, path);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), path + ": field 'batch_size': expected >= 1, got 0");
  }
}

// An empty config resolves to the defaults documented in proto/sft.proto.
TEST(SftConfigTest, EmptyConfigResolvesToDocumentedDefaults) {
  const proto::SftConfig c = resolved_sft_config(parse_sft_config("", "empty.pbtxt"));
  EXPECT_EQ(c.schema_version(), 1u);
  EXPECT_EQ(c.format(), "text");  // "auto" and no .jsonl file name
  EXPECT_FLOAT_EQ(c.heldout_fraction(), 0.05f);
  EXPECT_FALSE(c.has_seq_len());  // the model's max_seq_len
  EXPECT_FALSE(c.packed());
  EXPECT_FALSE(c.has_steps());  // from epochs
  EXPECT_FLOAT_EQ(c.epochs(), 1.0f);
  EXPECT_EQ(c.batch_size(), 8);
  EXPECT_EQ(c.grad_accum(), 1);
  // The optimizer section: the SFT column of proto/optimizer.proto.
  const proto::OptimizerConfig& o = c.optimizer();
  testing::expect_supervised_optimizer_defaults(o);
  EXPECT_EQ(c.eval_every(), 50);
  EXPECT_EQ(c.save_every(), 50);  // = eval_every
  EXPECT_EQ(c.eval_batches(), 0);
  EXPECT_EQ(c.early_stop_patience(), 0);
  EXPECT_EQ(c.device(), "cpu");
  EXPECT_FALSE(c.has_lora());
  EXPECT_FALSE(c.has_model());
  EXPECT_EQ(training::resolved_warmup_steps(o, 100), 5);  // 5% of the steps, rounded down
  EXPECT_EQ(training::resolved_warmup_steps(o, 39), 1);
  // Every resolved value is visible in the text written to manifests.
  const std::string text = to_text_format(c);
  for (const char* needle :
       {"lr: 0.0003", "weight_decay: 0.1", "eps: 1e-08", "save_every: 50", "device: \"cpu\""})
    EXPECT_NE(text.find(needle), std::string::npos) << needle << " in\n" << text;

  // Values that depend on other fields, and zeros that now mean zero.
  const proto::SftConfig d = resolved_sft_config(
      parse_sft_config("train_file: \"x.jsonl\"\neval_every: 20\n"
                       "optimizer { weight_decay: 0 warmup_steps: 0 min_lr_ratio: 0 }\n"
                       "lora { rank: 4 }\n",
                       "d.pbtxt"));
  EXPECT_EQ(d.format(), "jsonl");
  EXPECT_EQ(d.save_every(), 20);
  EXPECT_EQ(d.optimizer().weight_decay(), 0.0);
  EXPECT_EQ(d.optimizer().min_lr_ratio(), 0.0);
  EXPECT_EQ(d.optimizer().lr(), 3e-4);  // the rest of the section keeps the SFT defaults
  EXPECT_EQ(training::resolved_warmup_steps(d.optimizer(), 100), 0);
  EXPECT_FLOAT_EQ(d.lora().alpha(), 4.0f);  // alpha = rank
  ASSERT_EQ(d.lora().targets_size(), 2);
  EXPECT_EQ(d.lora().targets(0), "q");
  EXPECT_EQ(d.lora().targets(1), "v");
}

// The optimizer fields moved into `optimizer { }`: a config with an old name is refused with a
// message naming the file, the line, the old field and where it went.
TEST(SftConfigTest, OldOptimizerFieldNamesAreRefusedWithTheReplacement) {
  for (const char* name : {"lr", "min_lr_ratio", "warmup_steps", "warmup_ratio", "weight_decay",
                           "grad_clip", "beta1", "beta2"}) {
    try {
      parse_sft_config("steps: 3\n" + std::string(name) + ": 0.5\n", "sft.pbtxt");
      ADD_FAILURE() << name << " was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()), std::string("sft.pbtxt:2: field '") + name +
                                           "' of SftConfig moved to 'optimizer { " + name + " }'");
    }
  }
}

// The AdamW state the trainer saved: built by the toolkit from the optimizer section, decay /
// no-decay groups with the section's weight decay, betas and eps.
TEST_F(SftTest, AdamWComesFromTheOptimizerSection) {
  TempDir tmp("sft_adamw");
  auto cfg = base_config(tmp / "out", "steps: 2\neval_every: 2\n");
  proto::OptimizerConfig* o = cfg.mutable_optimizer();
  o->set_beta1(0.8);
  o->set_beta2(0.9);
  o->set_eps(1e-6);
  o->set_weight_decay(0.05);
  rlhf::pipelines::run_sft_stage(cfg);
  const auto state = training::StateFolder(tmp / "out/state").latest();
  ASSERT_TRUE(state);
  const auto groups = testing::saved_adamw_groups(*state + "/optimizer.pt");
  ASSERT_EQ(groups.size(), 2u);
  // (float32 settings: training::applied_settings; eps stays a double)
  EXPECT_EQ(groups[0].weight_decay, static_cast<double>(0.05f));
  EXPECT_EQ(groups[1].weight_decay, 0.0);
  EXPECT_GT(groups[0].params, 0u);
  EXPECT_GT(groups[1].params, 0u);
  for (const auto& g : groups) {
    EXPECT_EQ(g.beta1, static_cast<double>(0.8f));
    EXPECT_EQ(g.beta2, static_cast<double>(0.9f));
    EXPECT_EQ(g.eps, 1e-6);
  }
}

TEST_F(SftTest, DataErrorsNameFileAndLine) {
  TempDir tmp("sft_bad");
  { std::ofstream(tmp / "empty.jsonl") << "\n\n"; }
  auto cfg = base_config(tmp / "out", "steps: 1\n");
  cfg.set_train_file(tmp / "empty.jsonl");
  try {
    rlhf::pipelines::run_sft_stage(cfg);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(tmp / "empty.jsonl"), std::string::npos) << e.what();
  }
  {
    std::ofstream(tmp / "bad.jsonl")
        << "{\"prompt\": \"a\", \"response\": \"b\"}\n{\"prompt\": oops}\n";
  }
  cfg.set_train_file(tmp / "bad.jsonl");
  try {
    rlhf::pipelines::run_sft_stage(cfg);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(tmp / "bad.jsonl:2"), std::string::npos) << e.what();
  }
  { std::ofstream(tmp / "fields.jsonl") << "{\"prompt\": \"a\", \"answer\": \"b\"}\n"; }
  cfg.set_train_file(tmp / "fields.jsonl");
  try {
    rlhf::pipelines::run_sft_stage(cfg);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(tmp / "fields.jsonl:1"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("response"), std::string::npos) << e.what();
  }
}

TEST_F(SftTest, CommandLine) {
  const std::string rlhf = rlhf::testing::rlhf_binary();
  if (!file_exists(rlhf)) GTEST_SKIP() << "rlhf executable not built: " << rlhf;
  TempDir tmp("sft_cli");
  auto cfg = base_config("", "steps: 50\n");
  write_file_atomic(tmp / "sft.pbtxt", cfg.DebugString());
  std::string out;
  // Flag overrides: fewer steps, an output folder.
  ASSERT_EQ(rlhf::testing::run_command(rlhf + " sft --config " + (tmp / "sft.pbtxt") + " --out " +
                                           (tmp / "run") + " --steps 4 --eval-every 2",
                                       &out),
            0)
      << out;
  const auto m = require_complete_manifest(tmp / "run", "sft");
  EXPECT_EQ(m.metrics().at("steps"), 4);
  // generate --prompt TEXT without --tokenizer: the tokenizer the model folder carries; with --ids
  // the prompt's ids (BOS + the text's) come back first, then the 3 new ones.
  ASSERT_EQ(rlhf::testing::run_command(rlhf + " generate --model " + (tmp / "run/model") +
                                           " --prompt hello --max-new-tokens 3 --ignore-eos --ids",
                                       &out, /*merge_stderr=*/false),
            0)
      << out;
  const auto tok = Tokenizer::load(tmp / "run/model");
  std::istringstream ids(out);
  int64_t id = 0, n = 0;
  while (ids >> id) ++n;
  EXPECT_GE(n, 3) << out;
  EXPECT_LE(n, 3 + 1 + static_cast<int64_t>(tok.encode("hello").size())) << out;
  // A bad field: non-zero exit, the message names the file and line.
  write_file_atomic(tmp / "bad.pbtxt", "steps: 4\nwarmup: 3\n");
  EXPECT_NE(rlhf::testing::run_command(rlhf + " sft --config " + (tmp / "bad.pbtxt"), &out), 0);
  EXPECT_NE(out.find(tmp / "bad.pbtxt:2"), std::string::npos) << out;
  // A field under its old name: the message names the replacement.
  write_file_atomic(tmp / "old.pbtxt", "steps: 4\nbeta2: 0.99\n");
  EXPECT_NE(rlhf::testing::run_command(rlhf + " sft --config " + (tmp / "old.pbtxt"), &out), 0);
  EXPECT_NE(
      out.find(tmp / "old.pbtxt:2: field 'beta2' of SftConfig moved to 'optimizer { beta2 }'"),
      std::string::npos)
      << out;
}

}  // namespace
}  // namespace rlhf::policy
