// The DPO trainer on synthetic preference pairs (answers with the marker word "zebra" are
// preferred) from a tiny SFT policy: accuracy and margin grow; a run stopped and resumed ends
// bit for bit where an uninterrupted one does; LoRA trains the adapters only; 2 ranks (this
// binary spawned twice, c10d Gloo on loopback) train as 1 rank, with a rank holding no pair in
// the last batch; bad config values and data lines are named.
#include "policy/dpo/dpo_trainer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/files.h"
#include "common/launch.h"
#include "common/manifest.h"
#include "common/process.h"
#include "pipelines/stage_record.h"
#include "policy/dpo/dpo_config.h"
#include "policy/model/checkpoint.h"
#include "policy/model/safetensors.h"
#include "policy/tokenizer/tokenizer.h"
#include "policy/training/sft_config.h"
#include "policy/training/training.h"
#include "tests/fixtures/chat_data.h"
#include "tests/fixtures/preference_data.h"
#include "tests/test_support.h"

namespace rlhf::policy::dpo {
namespace {

using json = nlohmann::json;

// Pairs where every pair is its own group (so batches can hold any number of pairs).
void write_single_pairs(const std::string& path, int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::ofstream f(path);
  for (int i = 0; i < n; ++i) {
    const std::string prompt = "question: " + reward::random_text(rng, 3, 6, false) + " ?";
    f << json{{"prompt", prompt},
              {"chosen", reward::random_text(rng, 3, 8, true)},
              {"rejected", reward::random_text(rng, 3, 8, false)},
              {"task_id", "s" + std::to_string(seed) + "-" + std::to_string(i)}}
             .dump()
      << "\n";
  }
}

class DpoTraining : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new rlhf::testing::TempDir("dpotrain");
    const rlhf::testing::TempDir& d = *dir_;
    reward::write_synthetic(d / "train.jsonl", 120, 1);
    write_single_pairs(d / "single.jsonl", 31, 3);
    write_single_pairs(d / "single_eval.jsonl", 8, 4);
    // SFT data: every answer, preferred or not, so the policy starts without the preference.
    std::ifstream in(d / "train.jsonl");
    std::ofstream sft(d / "sft.jsonl"), text(d / "corpus.txt");
    std::string line;
    while (std::getline(in, line)) {
      auto j = json::parse(line);
      for (const char* k : {"chosen", "rejected"})
        sft << json{{"prompt", j["prompt"]}, {"response", j[k]}}.dump() << "\n";
      text << j["prompt"].get<std::string>() << "\n"
           << j["chosen"].get<std::string>() << "\n"
           << j["rejected"].get<std::string>() << "\n";
    }
    sft.close();
    text.close();
    TokenizerTrainOptions t;
    t.input = d / "corpus.txt";
    t.vocab_size = 120;
    t.byte_fallback = false;
    t.out_dir = d / "tok";
    const std::string tok = train_tokenizer(t);
    auto s = parse_sft_config("train_file: \"" + (d / "sft.jsonl") + "\"\ntokenizer: \"" + tok +
                                  "\"\nmodel { dim: 48 n_layers: 2 n_heads: 4 n_kv_heads: 2 "
                                  "max_seq_len: 64 }\nseq_len: 64 steps: 30 batch_size: 16 "
                                  "optimizer { lr: 3e-3 } heldout_fraction: 0 threads: 1\n",
                              "sft.pbtxt");
    s.set_out_dir(d / "sft");
    pipelines::run_sft_stage(s);
  }
  static void TearDownTestSuite() { delete dir_; }

  static proto::DpoConfig config(const std::string& out, const std::string& extra = "") {
    const rlhf::testing::TempDir& d = *dir_;
    auto cfg = parse_dpo_config("train_file: \"" + (d / "train.jsonl") + "\"\ninit_from: \"" +
                                    (d / "sft/model") +
                                    "\"\nmax_prompt_tokens: 16 max_answer_tokens: 24\n"
                                    "steps: 30 batch_pairs: 16 optimizer { lr: 2e-3 "
                                    "warmup_steps: 2 } eval_every: 10 heldout_fraction: 0.15 "
                                    "beta: 0.1 seed: 5 threads: 1\n" +
                                    extra,
                                "dpo.pbtxt");
    cfg.set_out_dir(out);
    cfg.set_device(rlhf::testing::test_device_name());
    return cfg;
  }

  static std::vector<json> metric_lines(const std::string& out, const std::string& key) {
    std::vector<json> v;
    std::ifstream in(out + "/metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      auto j = json::parse(line);
      if (j.contains(key)) v.push_back(j);
    }
    return v;
  }

  static training::NamedTensors weights(const std::string& model_dir) {
    auto m = load_checkpoint(model_dir).model;
    return training::module_tensors(*m);
  }

  static rlhf::testing::TempDir* dir_;
};
rlhf::testing::TempDir* DpoTraining::dir_ = nullptr;

TEST_F(DpoTraining, AccuracyRisesAndMarginGrows) {
  const std::string out = *dir_ / "run";
  const auto cfg = config(out, "steps: 60 eval_every: 20\n");
  const auto r = pipelines::run_dpo_stage(cfg);
  EXPECT_EQ(r.steps, 60);
  const auto train = metric_lines(out, "train/loss");
  ASSERT_EQ(train.size(), 60u);
  // Step 1: the policy is the reference, so every implicit reward is ~0 and the loss log 2.
  EXPECT_NEAR(train[0]["train/loss"].get<double>(), std::log(2.0), 1e-3);
  EXPECT_NEAR(train[0]["train/margin"].get<double>(), 0.0, 1e-3);
  double late_acc = 0, late_margin = 0;
  for (size_t i = 55; i < 60; ++i) {
    late_acc += train[i]["train/accuracy"].get<double>() / 5;
    late_margin += train[i]["train/margin"].get<double>() / 5;
  }
  EXPECT_GT(late_acc, 0.8);
  EXPECT_GT(late_margin, 0.2);
  EXPECT_LT(train[59]["train/loss"].get<double>(), std::log(2.0) - 0.1);
  const auto eval = metric_lines(out, "eval/margin");
  ASSERT_EQ(eval.size(), 3u);  // steps 20, 40, 60
  EXPECT_LT(eval[0]["eval/margin"].get<double>() + 0.3, eval[2]["eval/margin"].get<double>());
  EXPECT_LT(eval[0]["eval/accuracy"].get<double>(), eval[2]["eval/accuracy"].get<double>());
  EXPECT_GT(r.heldout.accuracy, 0.8);
  EXPECT_GT(r.heldout.n, 10);
  EXPECT_NEAR(r.heldout.margin, r.heldout.chosen_reward - r.heldout.rejected_reward, 1e-9);
  // The outputs: the policy with its tokenizer, the stage record, TensorBoard events.
  EXPECT_TRUE(file_exists(out + "/model/model.safetensors"));
  auto m = read_manifest(out);
  ASSERT_TRUE(m);
  EXPECT_TRUE(m->complete());
  EXPECT_EQ(m->stage(), "dpo");
  EXPECT_NEAR(m->metrics().at("heldout_accuracy"), r.heldout.accuracy, 1e-9);
  bool events = false;
  for (const auto& e : std::filesystem::directory_iterator(out))
    events |= e.path().filename().string().rfind("events.out.tfevents", 0) == 0;
  EXPECT_TRUE(events);
  // Run again: the finished run is kept.
  EXPECT_TRUE(pipelines::run_dpo_stage(cfg).already_complete);
  // Killed after the last state save but before the stage record: the rerun trains nothing and
  // records the same held-out numbers.
  std::filesystem::remove(out + "/manifest.pb");
  std::filesystem::remove(out + "/manifest.json");
  const auto again = pipelines::run_dpo_stage(cfg);
  EXPECT_FALSE(again.already_complete);
  EXPECT_EQ(again.steps, 60);
  EXPECT_EQ(again.heldout.n, r.heldout.n);
  EXPECT_EQ(again.heldout.loss, r.heldout.loss);
  EXPECT_EQ(again.heldout.margin, r.heldout.margin);
  ASSERT_TRUE(read_manifest(out));
  EXPECT_TRUE(read_manifest(out)->complete());
}

// DPO with label smoothing (cDPO), IPO, and LoRA with adapter dropout.
TEST_F(DpoTraining, StoppedAndResumedEqualsUninterrupted) {
  const std::vector<std::pair<std::string, std::string>> runs = {
      {"cdpo", "loss: \"sigmoid\" label_smoothing: 0.1"},
      {"ipo", "loss: \"ipo\""},
      {"lora", "lora { rank: 4 dropout: 0.1 }"}};  // dropout: the RNG state is resumed too
  for (const auto& [tag, loss] : runs) {
    const std::string extra = loss + "\nsteps: 9 save_every: 4 max_pairs: 96 batch_pairs: 8\n";
    const std::string one = *dir_ / ("whole_" + tag), two = *dir_ / ("resumed_" + tag);
    pipelines::run_dpo_stage(config(one, extra));
    auto stopped = config(two, extra);
    stopped.set_stop_after(6);  // the last save was at step 4: steps 5 and 6 are redone
    EXPECT_TRUE(pipelines::run_dpo_stage(stopped).interrupted);
    EXPECT_FALSE(file_exists(two + "/model/model.safetensors"));
    const auto r = pipelines::run_dpo_stage(config(two, extra));
    EXPECT_EQ(r.steps, 9);
    const auto a = weights(one + "/model"), b = weights(two + "/model");
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << tag << " " << a[i].first;
    const auto la = metric_lines(one, "train/loss"), lb = metric_lines(two, "train/loss");
    EXPECT_EQ(la.back()["train/loss"], lb.back()["train/loss"]) << tag;
  }
}

TEST_F(DpoTraining, LoraTrainsTheAdaptersOnly) {
  const std::string out = *dir_ / "lora";
  const auto r = pipelines::run_dpo_stage(
      config(out,
             "steps: 40 eval_every: 20 lora { rank: 4 targets: \"q\" targets: \"v\" "
             "targets: \"o\" }\noptimizer { lr: 1e-2 }\n"));
  EXPECT_EQ(r.steps, 40);
  EXPECT_TRUE(file_exists(out + "/adapter/adapter_model.safetensors"));
  const auto eval = metric_lines(out, "eval/margin");
  ASSERT_EQ(eval.size(), 2u);
  // The adapters learn the preference, more slowly than full fine-tuning does.
  EXPECT_GT(r.heldout.margin, 0.05);
  EXPECT_LT(r.heldout.loss, std::log(2.0) - 0.02);
  // Untargeted weights (the MLP, the embeddings) are those of the initial policy.
  const auto base = weights(*dir_ / "sft/model"), merged = weights(out + "/model");
  int same = 0, changed = 0;
  for (size_t i = 0; i < base.size(); ++i) {
    const bool eq = torch::equal(base[i].second, merged[i].second);
    const std::string& n = base[i].first;
    if (n.find("wq") != std::string::npos || n.find("q_proj") != std::string::npos) {
      changed += eq ? 0 : 1;
    } else if (n.find("embed") != std::string::npos || n.find("norm") != std::string::npos) {
      EXPECT_TRUE(eq) << n;
      ++same;
    }
  }
  EXPECT_GT(same, 0);
  EXPECT_GT(changed, 0);
}

// dtype bf16 with LoRA: init_from is read with its frozen base in bfloat16 (matrices and the
// embedding table: no float32 copy), the adapters train, and model/ is written in float32; its
// untargeted weights are the initial policy's rounded to bfloat16 (what the run held).
TEST_F(DpoTraining, LoraBf16HoldsTheBaseInBf16AndWritesFloat32) {
  const std::string out = *dir_ / "lora_bf16";
  const auto r = pipelines::run_dpo_stage(
      config(out, "steps: 10 eval_every: 10 dtype: \"bf16\" lora { rank: 4 targets: \"q\" }\n"));
  EXPECT_EQ(r.steps, 10);
  EXPECT_TRUE(std::isfinite(r.heldout.loss));
  const SafetensorsFile written(out + "/model/model.safetensors");
  for (const auto& [name, e] : written.entries()) EXPECT_EQ(e.dtype_name, "F32") << name;
  const auto base = weights(*dir_ / "sft/model"), merged = weights(out + "/model");
  ASSERT_EQ(base.size(), merged.size());
  int rounded = 0;
  for (size_t i = 0; i < base.size(); ++i) {
    const std::string& n = base[i].first;
    if (n.find("embed") == std::string::npos && n.find("k_proj") == std::string::npos) continue;
    EXPECT_TRUE(
        torch::equal(merged[i].second, base[i].second.to(torch::kBFloat16).to(torch::kFloat)))
        << n;
    rounded += torch::equal(merged[i].second, base[i].second) ? 0 : 1;
  }
  EXPECT_GT(rounded, 0);  // the float32 values did not survive: the run held bfloat16
}

// ---- two ranks --------------------------------------------------------------------------------

rlhf::process::Child spawn_rank(int rank, int port, const std::string& config) {
  rlhf::process::Options o;
  o.argv = {"/proc/self/exe", "--gtest_filter=DpoWorker.Train"};
  o.clear_env = true;
  o.env = {{"WORLD_SIZE", "2"},
           {"RANK", std::to_string(rank)},
           {"LOCAL_RANK", std::to_string(rank)},
           {"LOCAL_WORLD_SIZE", "2"},
           {"MASTER_ADDR", "127.0.0.1"},
           {"MASTER_PORT", std::to_string(port)},
           {"RLHF_DIST_TIMEOUT_S", "60"},
           {"OMP_NUM_THREADS", "1"},
           {"RLHF_DPO_WORKER_CONFIG", config}};
  return rlhf::process::Child::start(o);
}

TEST_F(DpoTraining, TwoRanksEqualOneRank) {
  // 31 single-pair groups in batches of 3 pairs: the 11th batch holds 1 pair, so rank 1 has none.
  const std::string extra = "train_file: \"" + (*dir_ / "single.jsonl") + "\"\neval_file: \"" +
                            (*dir_ / "single_eval.jsonl") +
                            "\"\nbatch_pairs: 3 epochs: 1 eval_every: 100\n";
  auto cfg = config(*dir_ / "one_rank", extra);
  cfg.clear_steps();
  const auto one = pipelines::run_dpo_stage(cfg);
  EXPECT_EQ(one.steps, 11);
  cfg.set_out_dir(*dir_ / "two_ranks");
  const std::string cfg_path = *dir_ / "two_ranks.pbtxt";
  write_file_atomic(cfg_path, to_text_format(cfg));
  const int port = rlhf::launch::free_loopback_port();
  auto a = spawn_rank(0, port, cfg_path);
  auto b = spawn_rank(1, port, cfg_path);
  EXPECT_EQ(a.wait().code(), 0);
  EXPECT_EQ(b.wait().code(), 0);
  const auto la = metric_lines(*dir_ / "one_rank", "train/loss");
  const auto lb = metric_lines(*dir_ / "two_ranks", "train/loss");
  ASSERT_EQ(la.size(), 11u);
  ASSERT_EQ(lb.size(), 11u);
  for (size_t i = 0; i < la.size(); ++i) {
    EXPECT_NEAR(la[i]["train/loss"].get<double>(), lb[i]["train/loss"].get<double>(), 1e-5) << i;
    EXPECT_EQ(la[i]["train/pairs"], lb[i]["train/pairs"]) << i;
  }
  EXPECT_EQ(lb.back()["train/pairs"].get<double>(), 1.0);
  const auto wa = weights(*dir_ / "one_rank/model"), wb = weights(*dir_ / "two_ranks/model");
  ASSERT_EQ(wa.size(), wb.size());
  for (size_t i = 0; i < wa.size(); ++i)
    EXPECT_TRUE(torch::allclose(wa[i].second, wb[i].second, 1e-4, 1e-5)) << wa[i].first;
  // Gradient accumulation over passes of 2 pairs steps as the whole batch does.
  auto micro = cfg;
  micro.set_out_dir(*dir_ / "micro");
  micro.set_micro_batch_pairs(2);
  pipelines::run_dpo_stage(micro);
  const auto lm = metric_lines(*dir_ / "micro", "train/loss");
  ASSERT_EQ(lm.size(), 11u);
  for (size_t i = 0; i < la.size(); ++i)
    EXPECT_NEAR(la[i]["train/loss"].get<double>(), lm[i]["train/loss"].get<double>(), 1e-5) << i;
  auto m = read_manifest(*dir_ / "two_ranks");
  ASSERT_TRUE(m);
  EXPECT_TRUE(m->complete());
  EXPECT_NEAR(m->metrics().at("heldout_loss"), one.heldout.loss, 1e-4);
}

// A spawned rank (only with RLHF_DPO_WORKER_CONFIG).
TEST(DpoWorker, Train) {
  const char* cfg = std::getenv("RLHF_DPO_WORKER_CONFIG");
  if (!cfg) GTEST_SKIP() << "runs as a spawned rank only";
  pipelines::run_dpo_stage(load_dpo_config(cfg));
}

// ---- errors -----------------------------------------------------------------------------------

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(DpoConfig, TheExampleParses) {
  const auto c = resolved_dpo_config(
      load_dpo_config(std::string(RLHF_SOURCE_DIR) + "/examples/dpo/dpo.pbtxt"));
  EXPECT_EQ(c.loss(), "sigmoid");
  EXPECT_EQ(c.save_every(), c.eval_every());
  EXPECT_FLOAT_EQ(c.optimizer().lr(), 5e-5f);
}

TEST(DpoConfigErrors, NameTheFileLineAndField) {
  auto has = [](const std::string& s, const std::string& part) {
    return s.find(part) != std::string::npos;
  };
  std::string e = error_of([] { parse_dpo_config("steps: 3\nbeta: 0\n", "x.pbtxt"); });
  EXPECT_TRUE(has(e, "x.pbtxt:2") && has(e, "beta") && has(e, "> 0")) << e;
  e = error_of([] { parse_dpo_config("loss: \"ipo\"\nlabel_smoothing: 0.1\n", "x.pbtxt"); });
  EXPECT_TRUE(has(e, "x.pbtxt:2") && has(e, "label_smoothing")) << e;
  e = error_of([] { parse_dpo_config("loss: \"dpo\"\n", "x.pbtxt"); });
  EXPECT_TRUE(has(e, "x.pbtxt:1") && has(e, "loss") && has(e, "\"dpo\"")) << e;
  e = error_of([] { parse_dpo_config("label_smoothing: 0.5\n", "x.pbtxt"); });
  EXPECT_TRUE(has(e, "label_smoothing") && has(e, "[0, 0.5)")) << e;
  e = error_of([] { parse_dpo_config("betta: 1\n", "x.pbtxt"); });
  EXPECT_TRUE(has(e, "x.pbtxt:1") && has(e, "betta")) << e;
  e = error_of([] { parse_dpo_config("format: \"csv\"\n", "x.pbtxt"); });
  EXPECT_TRUE(has(e, "format") && has(e, "\"csv\"")) << e;
}

TEST_F(DpoTraining, BadInputIsNamed) {
  const std::string bad = *dir_ / "bad.jsonl";
  write_file_atomic(bad,
                    "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n"
                    "{\"prompt\": \"a\", \"chosen\": 3}\n");
  auto cfg = config(*dir_ / "bad_run");
  cfg.set_train_file(bad);
  std::string e = error_of([&] { train_dpo(cfg); });
  EXPECT_NE(e.find(bad + ":2"), std::string::npos) << e;
  cfg = config(*dir_ / "bad_run");
  cfg.clear_init_from();
  e = error_of([&] { train_dpo(cfg); });
  EXPECT_NE(e.find("init_from"), std::string::npos) << e;
  cfg = config(*dir_ / "bad_run");
  cfg.set_train_file(*dir_ / "missing.jsonl");
  e = error_of([&] { train_dpo(cfg); });
  EXPECT_NE(e.find("missing.jsonl"), std::string::npos) << e;
  // Rows longer than the policy's context name the fields that size them.
  cfg = config(*dir_ / "bad_run", "max_answer_tokens: 100\n");
  e = error_of([&] { train_dpo(cfg); });
  EXPECT_NE(e.find("max_prompt_tokens + max_answer_tokens"), std::string::npos) << e;
  // Conversations need a chat template beside the tokenizer; this SentencePiece one has none.
  cfg = config(*dir_ / "bad_run");
  cfg.set_format("messages");
  e = error_of([&] { train_dpo(cfg); });
  EXPECT_NE(e.find("tokenizer_config.json"), std::string::npos) << e;
}

// Conversation pairs (format "messages", as `rlhf annotate export --format messages` writes),
// rendered with the chat template beside the policy's tokenizer.
TEST(DpoMessages, LearnsFromRenderedConversations) {
  rlhf::testing::TempDir d("dpomsg");
  const std::string tok = rlhf::testing::write_chatml_tokenizer(d / "tok");
  rlhf::testing::write_messages_pairs(d / "train.jsonl", 160, 1);
  rlhf::testing::write_messages_pairs(d / "eval.jsonl", 24, 2);
  {
    std::ofstream sft(d / "sft.jsonl");
    for (int i = 0; i < 16; ++i)
      sft << json{{"prompt", "river stone ?"}, {"response", "apple music"}}.dump() << "\n";
  }
  auto s = parse_sft_config("train_file: \"" + (d / "sft.jsonl") + "\"\ntokenizer: \"" + tok +
                                "\"\nmodel { dim: 48 n_layers: 2 n_heads: 4 n_kv_heads: 2 "
                                "max_seq_len: 80 }\nsteps: 3 batch_size: 8 heldout_fraction: 0 "
                                "threads: 1\n",
                            "sft.pbtxt");
  s.set_out_dir(d / "sft");
  pipelines::run_sft_stage(s);
  auto cfg = parse_dpo_config("train_file: \"" + (d / "train.jsonl") + "\"\neval_file: \"" +
                                  (d / "eval.jsonl") + "\"\nformat: \"messages\"\ninit_from: \"" +
                                  (d / "sft/model") +
                                  "\"\nmax_prompt_tokens: 24 max_answer_tokens: 48 steps: 30 "
                                  "batch_pairs: 16 optimizer { lr: 3e-3 warmup_steps: 2 } "
                                  "eval_every: 30 threads: 1\n",
                              "dpo.pbtxt");
  cfg.set_out_dir(d / "dpo");
  cfg.set_device(rlhf::testing::test_device_name());
  const auto r = pipelines::run_dpo_stage(cfg);
  EXPECT_EQ(r.heldout.n, 24);
  EXPECT_GT(r.heldout.margin, 0.1);
  EXPECT_GT(r.heldout.accuracy, 0.7);
}

}  // namespace
}  // namespace rlhf::policy::dpo
