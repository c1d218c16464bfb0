// Safetensors reader/writer, native checkpoints, Hugging Face import/export, and bad input.
#include "policy/model/checkpoint.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"
#include "policy/model/safetensors.h"
#include "tests/fixtures/tiny_model.h"
#include "tests/test_support.h"

namespace rlhf::policy {
namespace {

namespace fs = std::filesystem;
using rlhf::testing::TempDir;

// The tiny model (tests/fixtures/tiny_model.h) with vocab 48 and a SwiGLU size off the rule (40).
Transformer tiny_model(bool tied = false, uint64_t seed = 1) {
  ModelConfig c = testing::tiny_config();
  c.vocab_size = 48;
  c.hidden_dim = 40;
  c.tie_embeddings = tied;
  torch::manual_seed(seed);
  Transformer m(c);
  init_weights(m);
  torch::NoGradGuard g;
  for (auto& p : m->parameters())
    if (p.dim() == 1) p.uniform_(0.5, 1.5);
  return m;
}

// Hand-built safetensors file (independent of write_safetensors).
void write_raw_safetensors(const std::string& path, const nlohmann::json& header,
                           const std::string& data) {
  std::string h = header.dump();
  uint64_t n = h.size();
  std::string buf;
  for (int i = 0; i < 8; ++i) buf.push_back(char((n >> (8 * i)) & 0xff));
  std::ofstream(path, std::ios::binary) << buf << h << data;
}

std::string bytes_of(const torch::Tensor& t) {
  auto c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const rlhf::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("NOT an rlhf::Error: ") + e.what();
  }
  return "no error";
}

TEST(SafetensorsTest, RoundTripF32) {
  TempDir dir("st");
  std::map<std::string, torch::Tensor> t = {
      {"b", torch::randn({3, 4})},
      {"a", torch::arange(5).to(torch::kFloat)},
      {"scalar", torch::tensor(2.5f).reshape(std::vector<int64_t>{})}};
  write_safetensors(dir / "x.safetensors", t);
  auto r = read_safetensors(dir / "x.safetensors");
  ASSERT_EQ(r.size(), 3u);
  for (auto& [k, v] : t) EXPECT_TRUE(torch::equal(r.at(k), v)) << k;
  // Header length is a multiple of 8 and the header parses as JSON with our dtype.
  std::string raw = read_file(dir / "x.safetensors");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(raw[i]);
  EXPECT_EQ(n % 8, 0u);
  auto j = nlohmann::json::parse(raw.substr(8, n));
  EXPECT_EQ(j["b"]["dtype"], "F32");
  EXPECT_EQ(j["b"]["shape"], nlohmann::json({3, 4}));
}

TEST(SafetensorsTest, ReadsF16AndBF16) {
  TempDir dir("st");
  auto values = torch::tensor({1.0f, -2.5f, 0.15625f, 1024.0f});
  auto f16 = values.to(torch::kHalf), bf16 = values.to(torch::kBFloat16);
  nlohmann::json h;
  h["h"] = {{"dtype", "F16"}, {"shape", {2, 2}}, {"data_offsets", {0, 8}}};
  h["bf"] = {{"dtype", "BF16"}, {"shape", {4}}, {"data_offsets", {8, 16}}};
  write_raw_safetensors(dir / "m.safetensors", h, bytes_of(f16) + bytes_of(bf16));
  auto r = read_safetensors(dir / "m.safetensors");
  EXPECT_TRUE(torch::equal(r.at("h"), values.view({2, 2})));
  EXPECT_TRUE(torch::equal(r.at("bf"), values));
  EXPECT_EQ(r.at("h").scalar_type(), torch::kFloat);
}

TEST(SafetensorsTest, BadFiles) {
  TempDir dir("st");
  std::string p = dir / "bad.safetensors";
  nlohmann::json h;
  h["w"] = {{"dtype", "F64"}, {"shape", {2}}, {"data_offsets", {0, 16}}};
  write_raw_safetensors(p, h, std::string(16, '\0'));
  auto msg = error_of([&] { read_safetensors(p); });
  EXPECT_NE(msg.find(p), std::string::npos) << msg;
  EXPECT_NE(msg.find("tensor w"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unsupported dtype 'F64'"), std::string::npos) << msg;

  h["w"] = {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {0, 16}}};
  write_raw_safetensors(p, h, std::string(10, '\0'));
  msg = error_of([&] { read_safetensors(p); });
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  EXPECT_NE(msg.find("tensor w"), std::string::npos) << msg;

  std::ofstream(p, std::ios::binary) << "abc";
  msg = error_of([&] { read_safetensors(p); });
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;

  std::string junk(8, '\0');
  junk[0] = 100;
  std::ofstream(p, std::ios::binary) << junk << std::string(100, '{');
  msg = error_of([&] { read_safetensors(p); });
  EXPECT_NE(msg.find("not JSON"), std::string::npos) << msg;
}

TEST(CheckpointTest, SaveLoadRoundTripIsExact) {
  TempDir dir("ck");
  auto m = tiny_model(false, 2);
  m->add_value_head();
  CheckpointInfo info;
  info.tokenizer_sha256 = "abc123";
  info.kind = "reward";
  info.created_by = "test";
  info.step = 17;
  std::string ck = dir / "run/ckpt";
  save_checkpoint(m, ck, info);
  save_checkpoint(m, ck, info);  // over an existing folder
  for (auto& e : fs::directory_iterator(dir / "run"))
    EXPECT_EQ(e.path().filename(), "ckpt") << "left-over temp folder " << e.path();
  EXPECT_TRUE(fs::exists(ck + "/config.json"));
  EXPECT_TRUE(fs::exists(ck + "/model.safetensors"));
  EXPECT_TRUE(fs::exists(ck + "/checkpoint.pb"));

  auto loaded = load_checkpoint(ck);
  EXPECT_FALSE(loaded.from_hf);
  EXPECT_EQ(loaded.info.tokenizer_sha256, "abc123");
  EXPECT_EQ(loaded.info.kind, "reward");
  EXPECT_EQ(loaded.info.step, 17);
  EXPECT_TRUE(loaded.model->config().value_head);
  auto a = m->hf_named_parameters(), b = loaded.model->hf_named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
  }
}

TEST(CheckpointTest, ExportHfThenLoadGivesIdenticalLogits) {
  for (bool tied : {false, true}) {
    TempDir dir("hf");
    auto m = tiny_model(tied, 3);
    export_hf(m, dir / "hf");
    EXPECT_FALSE(fs::exists(dir / "hf/checkpoint.pb"));
    auto cfg = nlohmann::json::parse(read_file(dir / "hf/config.json"));
    EXPECT_EQ(cfg["model_type"], "llama");
    EXPECT_EQ(cfg["num_key_value_heads"], 2);
    EXPECT_EQ(cfg["tie_word_embeddings"], tied);
    auto names = read_safetensors(dir / "hf/model.safetensors");
    EXPECT_TRUE(names.count("model.layers.1.self_attn.q_proj.weight"));
    EXPECT_TRUE(names.count("model.layers.0.mlp.down_proj.weight"));
    EXPECT_EQ(names.count("lm_head.weight"), tied ? 0u : 1u);

    auto loaded = load_checkpoint(dir / "hf");
    EXPECT_TRUE(loaded.from_hf);
    torch::NoGradGuard g;
    auto ids = torch::randint(0, 48, {2, 9}, torch::kLong);
    EXPECT_TRUE(torch::equal(m->forward(ids), loaded.model->forward(ids))) << "tied " << tied;
  }
}

class BadCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto m = tiny_model();
    ck_ = dir_ / "hf";
    export_hf(m, ck_);
    weights_ = read_safetensors(ck_ + "/model.safetensors");
  }
  TempDir dir_{"bad"};
  std::string ck_;
  std::map<std::string, torch::Tensor> weights_;
};

TEST_F(BadCheckpointTest, MissingFolder) {
  auto msg = error_of([&] { load_checkpoint(dir_ / "nope"); });
  EXPECT_NE(msg.find("checkpoint folder not found: " + (dir_ / "nope")), std::string::npos) << msg;
}

TEST_F(BadCheckpointTest, UnsupportedModelType) {
  auto cfg = nlohmann::json::parse(read_file(ck_ + "/config.json"));
  cfg["model_type"] = "gpt2";
  write_file_atomic(ck_ + "/config.json", cfg.dump());
  auto msg = error_of([&] { load_checkpoint(ck_); });
  EXPECT_NE(msg.find(ck_ + "/config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unsupported model_type 'gpt2', expected one of llama, mistral, qwen2, qwen3"),
            std::string::npos)
      << msg;
}

TEST_F(BadCheckpointTest, MissingTensor) {
  weights_.erase("model.layers.1.mlp.up_proj.weight");
  write_safetensors(ck_ + "/model.safetensors", weights_);
  auto msg = error_of([&] { load_checkpoint(ck_); });
  EXPECT_NE(msg.find(ck_ + "/model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing tensor model.layers.1.mlp.up_proj.weight (expected shape [40, 32])"),
            std::string::npos)
      << msg;
}

TEST_F(BadCheckpointTest, WrongShape) {
  weights_["model.layers.0.self_attn.k_proj.weight"] = torch::zeros({32, 32});
  write_safetensors(ck_ + "/model.safetensors", weights_);
  auto msg = error_of([&] { load_checkpoint(ck_); });
  EXPECT_NE(
      msg.find(
          "tensor model.layers.0.self_attn.k_proj.weight: expected shape [16, 32], found [32, 32]"),
      std::string::npos)
      << msg;
}

TEST_F(BadCheckpointTest, TruncatedWeights) {
  std::string data = read_file(ck_ + "/model.safetensors");
  write_file_atomic(ck_ + "/model.safetensors", data.substr(0, data.size() - 100));
  auto msg = error_of([&] { load_checkpoint(ck_); });
  EXPECT_NE(msg.find(ck_ + "/model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  // The last tensor in name order is the one cut off.
  EXPECT_NE(msg.find("tensor model.norm.weight"), std::string::npos) << msg;
}

TEST_F(BadCheckpointTest, UnknownDtype) {
  std::string data = read_file(ck_ + "/model.safetensors");
  auto pos = data.find("\"F32\"");
  ASSERT_NE(pos, std::string::npos);
  data.replace(pos, 5, "\"I32\"");  // same length: the header stays valid
  write_file_atomic(ck_ + "/model.safetensors", data);
  auto msg = error_of([&] { load_checkpoint(ck_); });
  EXPECT_NE(msg.find("unsupported dtype 'I32', expected F32, F16 or BF16"), std::string::npos)
      << msg;
  EXPECT_NE(msg.find("tensor lm_head.weight"), std::string::npos) << msg;  // first in name order
}

// The CLI turns each of these into one stderr line and a non-zero exit code.
TEST_F(BadCheckpointTest, CliExitCodes) {
  std::string bin = rlhf::testing::rlhf_binary();
  ASSERT_TRUE(fs::exists(bin)) << bin;
  std::string out;
  int rc = rlhf::testing::run_command(
      bin + " generate --model " + (dir_ / "nope") + " --prompt-ids 1 --max-new-tokens 3 --ids",
      &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("checkpoint folder not found"), std::string::npos) << out;
  // --prompt TEXT needs a tokenizer: this folder has none and no --tokenizer is given.
  rc = rlhf::testing::run_command(
      bin + " generate --model " + ck_ + " --prompt hi --max-new-tokens 3", &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("holds no tokenizer.model or tokenizer.json"), std::string::npos) << out;

  rc = rlhf::testing::run_command(bin + " generate --model " + ck_ +
                                      " --prompt-ids \"1 2\" --max-new-tokens 3 --ids --ignore-eos",
                                  &out, /*merge_stderr=*/false);
  EXPECT_EQ(rc, 0) << out;
  std::istringstream words(out);
  int64_t id, count = 0;
  while (words >> id) ++count;
  EXPECT_EQ(count, 3) << out;

  weights_["model.layers.0.self_attn.k_proj.weight"] = torch::zeros({32, 32});
  write_safetensors(ck_ + "/model.safetensors", weights_);
  rc = rlhf::testing::run_command(
      bin + " generate --model " + ck_ + " --prompt-ids 1 --max-new-tokens 3 --ids", &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("expected shape [16, 32], found [32, 32]"), std::string::npos) << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
}

}  // namespace
}  // namespace rlhf::policy
