// Safetensors reader/writer, native checkpoints, Hugging Face import/export, and bad input.
#include "policy/model/checkpoint.h"

#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"
#include "policy/decoding/generation.h"
#include "policy/model/logprobs.h"
#include "policy/model/lora.h"
#include "policy/model/safetensors.h"
#include "policy/runtime/device.h"
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

// ---- sharded Hugging Face folders, F16 / BF16, export layout -----------------------------------

// The *.safetensors files of a folder, sorted.
std::vector<std::string> safetensors_files(const std::string& dir) {
  std::vector<std::string> out;
  for (auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors") out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// 8000 bytes: the tiny model's 24 tensors (128 B to 6144 B) land in 12 shards.
constexpr uint64_t kSmallShard = 8000;

TEST(HfShardsTest, ParseShardSizeAsTransformers) {
  EXPECT_EQ(parse_shard_size("5GB"), 5000000000ull);
  EXPECT_EQ(parse_shard_size("500MB"), 500000000ull);
  EXPECT_EQ(parse_shard_size("10KB"), 10000ull);
  EXPECT_EQ(parse_shard_size("2GiB"), 2ull << 30);
  EXPECT_EQ(parse_shard_size("3mib"), 3ull << 20);
  EXPECT_EQ(parse_shard_size("5Gb"), 625000000ull);  // bits, as transformers reads a lower-case b
  EXPECT_EQ(parse_shard_size("1000"), 1000ull);
  for (const std::string bad :
       {"", "GB", "5TB", "-1MB", "0", "1.5GB", "5 GB", "999999999999999GiB", "0x10MB"}) {
    auto msg = error_of([&] { parse_shard_size(bad, "--max-shard-size"); });
    EXPECT_NE(msg.find("--max-shard-size = \"" + bad + "\": expected a positive size"),
              std::string::npos)
        << msg;
  }
}

TEST(HfShardsTest, ShardedExportRoundTripGivesIdenticalLogits) {
  TempDir dir("shards");
  auto m = tiny_model(false, 4);
  export_hf(m, dir / "hf", {kSmallShard, ""});
  const auto files = safetensors_files(dir / "hf");
  ASSERT_GT(files.size(), 2u);
  EXPECT_FALSE(fs::exists(dir / "hf/model.safetensors"));
  for (size_t k = 0; k < files.size(); ++k) {
    char want[64];
    std::snprintf(want, sizeof want, "model-%05zu-of-%05zu.safetensors", k + 1, files.size());
    EXPECT_EQ(files[k], want);
    // No shard is over the limit unless it holds one tensor larger than the limit on its own.
    SafetensorsFile shard(dir / ("hf/" + files[k]));
    if (shard.entries().size() > 1) {
      EXPECT_LE(fs::file_size(shard.path()), kSmallShard + 4096);
    }
  }
  auto index = nlohmann::json::parse(read_file(dir / "hf/model.safetensors.index.json"));
  uint64_t total = 0;
  size_t count = 0;
  for (auto& [name, t] : m->hf_named_parameters()) {
    total += uint64_t(t.numel()) * 4;
    ++count;
    ASSERT_TRUE(index["weight_map"].contains(name)) << name;
  }
  EXPECT_EQ(index["weight_map"].size(), count);
  EXPECT_EQ(index["metadata"]["total_size"], total);
  // Model order: the embeddings open the first shard, lm_head closes the last.
  EXPECT_EQ(index["weight_map"]["model.embed_tokens.weight"], files.front());
  EXPECT_EQ(index["weight_map"]["lm_head.weight"], files.back());

  auto loaded = load_checkpoint(dir / "hf");
  EXPECT_TRUE(loaded.from_hf);
  torch::NoGradGuard g;
  auto ids = torch::randint(0, 48, {2, 9}, torch::kLong);
  EXPECT_TRUE(torch::equal(m->forward(ids), loaded.model->forward(ids)));

  // A limit below the largest tensor: that tensor gets a shard of its own.
  export_hf(m, dir / "hf2", {5000, ""});
  auto index2 = nlohmann::json::parse(read_file(dir / "hf2/model.safetensors.index.json"));
  const std::string own = index2["weight_map"]["model.embed_tokens.weight"];
  EXPECT_EQ(SafetensorsFile(dir / ("hf2/" + own)).entries().size(), 1u);
  // The default limit (5 GB) writes one model.safetensors and no index.
  export_hf(m, dir / "hf3");
  EXPECT_EQ(safetensors_files(dir / "hf3"), std::vector<std::string>{"model.safetensors"});
  EXPECT_FALSE(fs::exists(dir / "hf3/model.safetensors.index.json"));
}

TEST(HfShardsTest, WeightFilesForFingerprints) {
  TempDir dir("files");
  auto m = tiny_model(false, 12);
  export_hf(m, dir / "sharded", {kSmallShard, ""});
  auto files = SafetensorsWeights::files_in(dir / "sharded", "model.safetensors");
  const auto shards = safetensors_files(dir / "sharded");
  ASSERT_EQ(files.size(), shards.size() + 1);
  EXPECT_EQ(files[0], dir / "sharded/model.safetensors.index.json");
  for (size_t k = 0; k < shards.size(); ++k)
    EXPECT_EQ(files[k + 1], dir / ("sharded/" + shards[k]));
  export_hf(m, dir / "single");
  EXPECT_EQ(SafetensorsWeights::files_in(dir / "single", "model.safetensors"),
            std::vector<std::string>{dir / "single/model.safetensors"});
  EXPECT_TRUE(SafetensorsWeights::files_in(dir.path(), "model.safetensors").empty());
}

// A source folder as a Hugging Face hub download has it: config keys we do not model, tokenizer and
// generation files.
void add_hub_files(const std::string& src) {
  auto cfg = nlohmann::json::parse(read_file(src + "/config.json"));
  cfg["transformers_version"] = "4.46.0";
  cfg["initializer_range"] = 0.02;
  cfg["attention_dropout"] = 0.0;
  cfg["torch_dtype"] = "bfloat16";
  write_file_atomic(src + "/config.json", cfg.dump(2));
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                           "generation_config.json", "chat_template.jinja"})
    write_file_atomic(src + "/" + name, std::string("{\"file\": \"") + name + "\"}\n");
}

TEST(HfShardsTest, ExportKeepsSourceConfigKeysAndCopiesTokenizerFiles) {
  TempDir dir("hub");
  auto m = tiny_model(true, 5);
  export_hf(m, dir / "src");
  add_hub_files(dir / "src");
  auto src_cfg = nlohmann::json::parse(read_file(dir / "src/config.json"));
  src_cfg["num_hidden_layers"] = 99;  // a key the model defines: rewritten from the model's config
  write_file_atomic(dir / "src/config.json", src_cfg.dump(2));
  export_hf(m, dir / "out", {kSmallShard, dir / "src"});
  auto cfg = nlohmann::json::parse(read_file(dir / "out/config.json"));
  EXPECT_EQ(cfg["model_type"], "llama");
  EXPECT_EQ(cfg["architectures"], nlohmann::json({"LlamaForCausalLM"}));
  EXPECT_EQ(cfg["transformers_version"], "4.46.0");
  EXPECT_EQ(cfg["initializer_range"], 0.02);
  EXPECT_EQ(cfg["attention_dropout"], 0.0);
  EXPECT_EQ(cfg["num_hidden_layers"], 2);
  EXPECT_EQ(cfg["torch_dtype"], "float32");  // the dtype of the written weights
  EXPECT_EQ(cfg["tie_word_embeddings"], true);
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                           "generation_config.json", "chat_template.jinja"})
    EXPECT_EQ(read_file(dir / ("out/" + std::string(name))),
              read_file(dir / ("src/" + std::string(name))))
        << name;
  EXPECT_FALSE(fs::exists(dir / "out/tokenizer.model"));  // absent in the source: not written
  for (auto& e : fs::directory_iterator(dir.path()))
    EXPECT_TRUE(e.path().filename() == "src" || e.path().filename() == "out") << e.path();
}

// tests/policy/hf_layout_check.py reads the export as transformers would (its own safetensors
// reader, the index rules, "format": "pt") and reports each tensor's float32 SHA-256.
TEST(HfShardsTest, IndependentReaderMatchesExportedTensors) {
  if (std::system("python3 --version > /dev/null 2>&1") != 0) GTEST_SKIP() << "no python3";
  TempDir dir("pyread");
  auto m = tiny_model(false, 6);
  for (uint64_t limit : {kSmallShard, uint64_t(5000000000ull)}) {
    const std::string out = dir / ("hf" + std::to_string(limit));
    export_hf(m, out, {limit, ""});
    std::string report;
    int rc = rlhf::testing::run_command(
        "python3 " + std::string(RLHF_SOURCE_DIR) + "/tests/policy/hf_layout_check.py " + out,
        &report, /*merge_stderr=*/false);
    ASSERT_EQ(rc, 0) << report;
    auto j = nlohmann::json::parse(report);
    const auto params = m->hf_named_parameters();
    EXPECT_EQ(j.size(), params.size());
    for (auto& [name, t] : params) {
      ASSERT_TRUE(j.contains(name)) << name;
      EXPECT_EQ(j[name]["dtype"], "F32") << name;
      EXPECT_EQ(j[name]["shape"], nlohmann::json(t.sizes().vec())) << name;
      EXPECT_EQ(j[name]["sha256_f32"], sha256_hex(bytes_of(t))) << name;
    }
  }
}

TEST(HfShardsTest, LoadsF16AndBF16ShardsWithTheirRounding) {
  TempDir dir("half");
  auto m = tiny_model(false, 7);
  export_hf(m, dir / "hf", {kSmallShard, ""});
  // Rewrite the shards alternately as F16 and BF16 (torch's round-to-nearest-even).
  std::map<std::string, torch::ScalarType> stored;
  const auto files = safetensors_files(dir / "hf");
  for (size_t k = 0; k < files.size(); ++k) {
    const std::string path = dir / ("hf/" + files[k]);
    auto tensors = read_safetensors(path);
    const auto type = k % 2 ? torch::kBFloat16 : torch::kHalf;
    for (auto& [name, t] : tensors) t = t.to(type), stored[name] = type;
    write_safetensors(path, tensors);
  }
  auto loaded = load_checkpoint(dir / "hf");
  auto original = m->hf_named_parameters(), got = loaded.model->hf_named_parameters();
  ASSERT_EQ(original.size(), got.size());
  bool rounded = false;
  for (size_t i = 0; i < got.size(); ++i) {
    const auto& name = got[i].first;
    EXPECT_EQ(got[i].second.scalar_type(), torch::kFloat) << name;
    auto expected = original[i].second.to(stored.at(name)).to(torch::kFloat);
    EXPECT_TRUE(torch::equal(got[i].second, expected)) << name;
    rounded = rounded || !torch::equal(got[i].second, original[i].second);
  }
  EXPECT_TRUE(rounded);
}

// Resident memory of this process in bytes (/proc/self/statm).
int64_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * int64_t(::sysconf(_SC_PAGESIZE));
}

// Reads are memory-mapped: one small tensor of a file whose other tensor takes 2 GiB (a sparse
// file, so the test itself writes little) comes out without the file being read whole.
TEST(HfShardsTest, ReadsOneTensorOfAHugeFileWithoutReadingItWhole) {
  TempDir dir("mmap");
  const uint64_t big = 1ull << 31;
  nlohmann::json h;
  h["big"] = {{"dtype", "F32"}, {"shape", {int64_t(big / 4)}}, {"data_offsets", {0ull, big}}};
  h["small"] = {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {big, big + 8}}};
  const std::string path = dir / "huge.safetensors";
  write_raw_safetensors(path, h, "");
  const float tail[2] = {1.5f, -3.0f};
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(0, std::ios::end);
    const auto data_start = int64_t(f.tellp());
    f.seekp(data_start + int64_t(big));
    f.write(reinterpret_cast<const char*>(tail), sizeof tail);
  }
  const int64_t before = resident_bytes();
  SafetensorsFile file(path);
  auto small = file.read("small");
  EXPECT_TRUE(torch::equal(small, torch::tensor({1.5f, -3.0f})));
  EXPECT_LT(resident_bytes() - before, int64_t(64) << 20);
}

TEST(HfShardsTest, ReadsIntoTheModelDtypeRoundingToNearestEven) {
  TempDir dir("rne");
  // 1 + 2^-8 and 1 + 3 * 2^-8 sit halfway between bfloat16 neighbours: ties go to the even one.
  auto values = torch::tensor({1.0f + 1.0f / 256, 1.0f + 3.0f / 256, -2.5f});
  write_safetensors(dir / "x.safetensors", {{"w", values}});
  SafetensorsFile file(dir / "x.safetensors");
  auto bf = file.read("w", torch::kBFloat16);
  EXPECT_EQ(bf.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(bf.to(torch::kFloat), torch::tensor({1.0f, 1.015625f, -2.5f})));
  auto into = torch::empty({3}, torch::kHalf);
  file.read_into("w", into);
  EXPECT_TRUE(torch::equal(into, values.to(torch::kHalf)));
  auto msg = error_of([&] { file.read_into("w", torch::empty({2, 2})); });
  EXPECT_NE(msg.find(dir / "x.safetensors: tensor w: expected shape [2, 2], found [3]"),
            std::string::npos)
      << msg;
}

class BadShardsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    export_hf(model_, ck_, {kSmallShard, ""});
    index_ = nlohmann::json::parse(read_file(index_path_));
  }
  void write_index() { write_file_atomic(index_path_, index_.dump(2)); }
  std::string shard_of(const std::string& name) {
    return ck_ + "/" + index_["weight_map"][name].get<std::string>();
  }
  TempDir dir_{"badshards"};
  Transformer model_ = tiny_model(false, 8);
  std::string ck_ = dir_ / "hf";
  std::string index_path_ = ck_ + "/model.safetensors.index.json";
  nlohmann::json index_;
};

TEST_F(BadShardsTest, MissingShard) {
  const std::string shard = shard_of("model.layers.1.mlp.up_proj.weight");
  fs::remove(shard);
  auto msg = error_of([&] { load_checkpoint(ck_); });
  const std::string file = fs::path(shard).filename().string();
  EXPECT_NE(msg.find(index_path_ + ": shard " + file + " (holding tensor "), std::string::npos)
      << msg;
  EXPECT_NE(msg.find(") not found: " + shard), std::string::npos) << msg;
}

TEST_F(BadShardsTest, IndexNamesATensorItsShardLacks) {
  const std::string shard = shard_of("model.norm.weight");
  index_["weight_map"]["model.layers.0.self_attn.q_proj.bias"] =
      fs::path(shard).filename().string();
  write_index();
  auto msg = error_of([&] { load_checkpoint(ck_); });
  EXPECT_NE(msg.find(shard + ": tensor model.layers.0.self_attn.q_proj.bias named by " +
                     index_path_ + " is not in this shard"),
            std::string::npos)
      << msg;
}

TEST_F(BadShardsTest, IndexLacksAModelTensor) {
  index_["weight_map"].erase("model.layers.1.self_attn.o_proj.weight");
  write_index();
  auto msg = error_of([&] { load_checkpoint(ck_); });
  EXPECT_NE(msg.find(index_path_ +
                     ": missing tensor model.layers.1.self_attn.o_proj.weight (expected shape "
                     "[32, 32])"),
            std::string::npos)
      << msg;
}

TEST_F(BadShardsTest, WrongShapeInAShard) {
  const std::string name = "model.layers.0.self_attn.k_proj.weight";
  const std::string shard = shard_of(name);
  auto tensors = read_safetensors(shard);
  tensors[name] = torch::zeros({16, 31});
  write_safetensors(shard, tensors);
  auto msg = error_of([&] { load_checkpoint(ck_); });
  EXPECT_NE(msg.find(shard + ": tensor " + name + ": expected shape [16, 32], found [16, 31]"),
            std::string::npos)
      << msg;
}

TEST_F(BadShardsTest, WrongDtypeInAShard) {
  const std::string shard = shard_of("model.layers.1.mlp.down_proj.weight");
  std::string data = read_file(shard);
  auto pos = data.find("\"F32\"");
  ASSERT_NE(pos, std::string::npos);
  data.replace(pos, 5, "\"F64\"");
  write_file_atomic(shard, data);
  auto msg = error_of([&] { load_checkpoint(ck_); });
  EXPECT_NE(msg.find(index_path_ + ": shard " + fs::path(shard).filename().string() + ": " + shard +
                     ": tensor model.layers.1."),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("unsupported dtype 'F64', expected F32, F16 or BF16"), std::string::npos)
      << msg;
}

TEST_F(BadShardsTest, BadIndex) {
  index_["weight_map"]["model.norm.weight"] = 3;
  write_index();
  auto msg = error_of([&] { load_checkpoint(ck_); });
  EXPECT_NE(msg.find(index_path_ + ": weight_map['model.norm.weight'] = 3, expected a shard file"),
            std::string::npos)
      << msg;
  index_["weight_map"]["model.norm.weight"] = "../elsewhere.safetensors";
  write_index();
  msg = error_of([&] { load_checkpoint(ck_); });
  EXPECT_NE(msg.find("expected a file name in the same folder"), std::string::npos) << msg;
  write_file_atomic(index_path_, "{\"metadata\": {}}");
  msg = error_of([&] { load_checkpoint(ck_); });
  EXPECT_NE(msg.find(index_path_ + ": missing field 'weight_map'"), std::string::npos) << msg;
  fs::remove(index_path_);
  msg = error_of([&] { load_checkpoint(ck_); });
  EXPECT_NE(msg.find("cannot open " + ck_ + "/model.safetensors (safetensors weights): no such " +
                     "file, and no model.safetensors.index.json"),
            std::string::npos)
      << msg;
}

// `rlhf lora merge --hf --max-shard-size`: a sharded export carrying the base's files; a bad size
// refused as a usage error naming the flag.
TEST(HfShardsTest, LoraMergeCliWritesShards) {
  TempDir dir("mergecli");
  auto m = tiny_model(false, 9);
  export_hf(m, dir / "base");
  add_hub_files(dir / "base");
  {
    LoraOptions o;
    o.rank = 2;
    LoraAdapters lora(m, o);
    lora.save(dir / "adapter");
  }
  const std::string bin = rlhf::testing::rlhf_binary();
  const std::string cmd = bin + " lora merge --base " + (dir / "base") + " --adapter " +
                          (dir / "adapter") + " --out " + (dir / "out") + " --hf";
  std::string out;
  int rc = rlhf::testing::run_command(cmd + " --max-shard-size 8KB", &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_GT(safetensors_files(dir / "out").size(), 2u);
  EXPECT_TRUE(fs::exists(dir / "out/model.safetensors.index.json"));
  EXPECT_EQ(read_file(dir / "out/tokenizer.json"), read_file(dir / "base/tokenizer.json"));
  EXPECT_EQ(nlohmann::json::parse(read_file(dir / "out/config.json"))["initializer_range"], 0.02);
  auto loaded = load_checkpoint(dir / "out");
  torch::NoGradGuard g;
  auto ids = torch::randint(0, 48, {1, 7}, torch::kLong);
  EXPECT_TRUE(torch::allclose(m->forward(ids), loaded.model->forward(ids), 1e-5, 1e-5));

  rc = rlhf::testing::run_command(cmd + " --max-shard-size 5TB", &out);
  EXPECT_EQ(rc, 2) << out;
  EXPECT_NE(out.find("--max-shard-size = \"5TB\": expected a positive size"), std::string::npos)
      << out;
}

// ---- bfloat16 frozen matrices (LoadOptions::matrix_dtype) -------------------------------------

bool is_matrix(const std::string& name) {
  return name == "lm_head.weight" || name.find("_proj.weight") != std::string::npos;
}

TEST(Bf16WeightsTest, MatricesLoadAsBf16AndGiveTheFloat32LogitsUnderAutocast) {
  TempDir dir("bf16w");
  auto m = tiny_model(false, 10);
  export_hf(m, dir / "hf", {kSmallShard, ""});
  auto f32 = load_checkpoint(dir / "hf");
  LoadOptions o;
  o.matrix_dtype = torch::kBFloat16;
  auto bf = load_checkpoint(dir / "hf", o);
  int64_t bytes_f32 = 0, bytes_bf = 0;
  auto a = f32.model->hf_named_parameters(), b = bf.model->hf_named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const auto& name = b[i].first;
    bytes_f32 += a[i].second.numel() * a[i].second.element_size();
    bytes_bf += b[i].second.numel() * b[i].second.element_size();
    EXPECT_EQ(b[i].second.scalar_type(), is_matrix(name) ? torch::kBFloat16 : torch::kFloat)
        << name;
    EXPECT_TRUE(torch::equal(b[i].second.to(torch::kFloat),
                             a[i].second.to(b[i].second.scalar_type()).to(torch::kFloat)))
        << name;
  }
  EXPECT_LT(bytes_bf, bytes_f32 * 3 / 5);  // the matrices are most of the model
  // An export of it writes F32, as its config.json says.
  export_hf(bf.model, dir / "again");
  const SafetensorsFile again(dir / "again/model.safetensors");
  for (const auto& [name, e] : again.entries()) EXPECT_EQ(e.dtype_name, "F32") << name;
  torch::NoGradGuard g;
  auto ids = torch::randint(0, 48, {2, 9}, torch::kLong);
  AutocastScope autocast(torch::Device(torch::kCPU), Precision::kBf16);
  auto want = f32.model->forward(ids), got = bf.model->forward(ids);
  EXPECT_EQ(got.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(want, got)) << (want - got).abs().max().item<float>();
}

TEST(Bf16WeightsTest, LoraOnABf16BaseTrainsFloat32Adapters) {
  TempDir dir("bf16lora");
  auto m = tiny_model(false, 11);
  export_hf(m, dir / "hf");
  LoadOptions o;
  o.matrix_dtype = torch::kBFloat16;
  auto bf = load_checkpoint(dir / "hf", o);
  auto f32 = load_checkpoint(dir / "hf");
  LoraOptions lo;
  lo.rank = 2;
  lo.targets = {"q", "v", "down"};
  torch::manual_seed(3);
  LoraAdapters lora_bf(bf.model, lo);
  torch::manual_seed(3);
  LoraAdapters lora_f32(f32.model, lo);
  for (auto* l : {&lora_bf, &lora_f32}) {
    {
      torch::NoGradGuard g;
      auto gen = torch::make_generator<at::CPUGeneratorImpl>(5);
      for (auto& p : l->parameters()) p.normal_(0, 0.05, gen);
    }
    l->refresh(false);  // records the graph from A, B to the effective weights
  }
  for (auto& p : lora_bf.parameters()) EXPECT_EQ(p.scalar_type(), torch::kFloat);
  auto& layer = *bf.model->layers[0]->as<DecoderLayerImpl>();
  EXPECT_EQ(layer.q_proj->weight.scalar_type(), torch::kBFloat16);

  auto ids = torch::randint(0, 48, {2, 9}, torch::kLong);
  AutocastScope autocast(torch::Device(torch::kCPU), Precision::kBf16);
  auto got = bf.model->forward(ids), want = f32.model->forward(ids);
  EXPECT_TRUE(torch::allclose(got, want, 0.05, 0.05)) << (got - want).abs().max().item<float>();
  got.sum().backward();
  for (auto& p : lora_bf.parameters()) {
    ASSERT_TRUE(p.grad().defined());
    EXPECT_EQ(p.grad().scalar_type(), torch::kFloat);
  }
  EXPECT_GT(lora_bf.parameters()[0].grad().abs().sum().item<float>(), 0.0f);

  // merge() folds the update into a float32 copy of each target: a tiny update survives it.
  const auto base_q = bf.model->named_parameters()["layers.0.q_proj.weight"].detach().clone();
  ASSERT_EQ(base_q.scalar_type(), torch::kBFloat16);
  {
    torch::NoGradGuard g;
    auto params = lora_bf.parameters();
    params[0].fill_(1e-3), params[1].fill_(1e-3);  // q's A and B: update 2 * 1e-6 per element
  }
  lora_bf.merge();
  EXPECT_EQ(layer.q_proj->weight.scalar_type(), torch::kFloat);
  EXPECT_EQ(layer.k_proj->weight.scalar_type(), torch::kBFloat16);  // not a target
  const auto diff = layer.q_proj->weight - base_q.to(torch::kFloat);
  EXPECT_NEAR(diff.min().item<float>(), 2e-6f, 1e-7f);
  EXPECT_NEAR(diff.max().item<float>(), 2e-6f, 1e-7f);
}

// ---- a frozen base read straight into bfloat16 (frozen_base_load_options) ----------------------

// libtorch's CPU allocator wrapped to count the bytes of tensor storage live and their peak.
class CountingAllocator final : public c10::Allocator {
 public:
  explicit CountingAllocator(c10::Allocator* inner) : inner_(inner) {}
  c10::DataPtr allocate(size_t n) const override {
    auto* block = new Block{inner_->allocate(n), static_cast<int64_t>(n), this};
    const int64_t now = live_ += block->bytes;
    int64_t p = peak_.load();
    while (now > p && !peak_.compare_exchange_weak(p, now)) {
    }
    return {block->inner.get(), block, &release, c10::Device(c10::kCPU)};
  }
  int64_t peak() const { return peak_; }

 private:
  struct Block {
    c10::DataPtr inner;
    int64_t bytes;
    const CountingAllocator* owner;
  };
  static void release(void* ctx) {
    auto* b = static_cast<Block*>(ctx);
    b->owner->live_ -= b->bytes;
    delete b;
  }
  c10::Allocator* inner_;
  mutable std::atomic<int64_t> live_{0}, peak_{0};
};

// Installs a CountingAllocator while alive (its blocks may outlive it: the allocator is leaked).
struct CountingScope {
  CountingScope() : previous(c10::GetCPUAllocator()), counting(new CountingAllocator(previous)) {
    c10::SetCPUAllocator(counting, /*priority=*/200);
  }
  ~CountingScope() { c10::SetCPUAllocator(previous, 200); }
  int64_t peak() const { return counting->peak(); }
  c10::Allocator* previous;
  CountingAllocator* counting;
};

int64_t parameter_bytes(Transformer& m) {
  int64_t n = 0;
  for (const auto& p : m->parameters()) n += p.numel() * p.element_size();
  return n;
}

// The model of these tests: 6 layers, so no one tensor is a large share of it.
ModelConfig frozen_base_config() {
  ModelConfig c = testing::tiny_config();
  c.vocab_size = 48;
  c.n_layers = 6;
  return c;
}

// dtype bf16 with LoRA (frozen_base_load_options): matrices and the embedding table are read
// straight into bfloat16, the rest float32; the parameters hold exactly those bytes, and while
// loading at most one float32 tensor lives beside them (never a float32 copy of the model); the
// values are the float32 ones rounded, and the RNG draws are those of a float32 load.
TEST(Bf16WeightsTest, FrozenBaseLoadsBf16WithoutAFloat32Copy) {
  TempDir dir("bf16base");
  auto m = testing::random_model(frozen_base_config(), 12);
  export_hf(m, dir / "hf");
  torch::manual_seed(7);
  int64_t peak_f32 = 0, peak_bf = 0;
  LoadedModel f32, bf;
  {
    CountingScope count;
    f32 = load_checkpoint(dir / "hf");
    peak_f32 = count.peak();
  }
  const auto draw_f32 = torch::rand({4});
  torch::manual_seed(7);
  {
    CountingScope count;
    bf = load_checkpoint(dir / "hf", frozen_base_load_options(true, true));
    peak_bf = count.peak();
  }
  EXPECT_TRUE(torch::equal(draw_f32, torch::rand({4})));  // the same draws as a float32 load
  EXPECT_EQ(frozen_base_load_options(true, false).matrix_dtype, torch::kFloat);  // trained in full
  EXPECT_EQ(frozen_base_load_options(false, true).embedding_dtype, torch::kFloat);

  int64_t want = 0, largest_f32 = 0;
  auto a = f32.model->hf_named_parameters(), b = bf.model->hf_named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const auto& name = b[i].first;
    const bool narrowed = is_matrix(name) || name == "model.embed_tokens.weight";
    EXPECT_EQ(b[i].second.scalar_type(), narrowed ? torch::kBFloat16 : torch::kFloat) << name;
    EXPECT_TRUE(torch::equal(b[i].second, a[i].second.to(b[i].second.scalar_type()))) << name;
    want += b[i].second.numel() * (narrowed ? 2 : 4);
    largest_f32 = std::max<int64_t>(largest_f32, a[i].second.numel() * 4);
  }
  EXPECT_EQ(parameter_bytes(bf.model), want);
  EXPECT_LT(want, parameter_bytes(f32.model) * 11 / 20);
  // Load peak: the bfloat16 parameters, one float32 tensor being initialised (the RNG draws) and
  // small buffers (the rotary table): under the float32 model's bytes, which the float32 load and
  // a build-then-narrow load both reach.
  EXPECT_GE(peak_f32, parameter_bytes(f32.model));
  EXPECT_LE(peak_bf, want + largest_f32 + 4096) << "float32 load peak " << peak_f32;
  EXPECT_LT(peak_bf, parameter_bytes(f32.model) * 3 / 4);
  // A float32 load is unchanged: float32 throughout.
  for (const auto& p : f32.model->parameters()) EXPECT_EQ(p.scalar_type(), torch::kFloat);
}

// The same base with bfloat16 matrices and embedding table generates as the float32 model does
// under bf16 autocast, within bfloat16 rounding of the embedding rows (the matrices round as
// autocast rounds them): logits within 2% of their range, greedy ids identical, token
// log-probabilities within 0.05 (nats; the largest difference here is 0.024).
TEST(Bf16WeightsTest, Bf16FrozenBaseGeneratesAsTheFloat32Model) {
  TempDir dir("bf16gen");
  auto m = testing::random_model(frozen_base_config(), 13);
  export_hf(m, dir / "hf");
  auto f32 = load_checkpoint(dir / "hf");
  auto bf = load_checkpoint(dir / "hf", frozen_base_load_options(true, true));
  {
    torch::NoGradGuard g;
    AutocastScope autocast(torch::Device(torch::kCPU), Precision::kBf16);
    auto ids = torch::randint(3, 48, {2, 9}, torch::kLong);
    auto want = f32.model->forward(ids), got = bf.model->forward(ids);
    const float range = want.abs().max().item<float>();
    EXPECT_LE((want - got).abs().max().item<float>(), 0.02f * range) << "range " << range;
    EXPECT_FALSE(torch::equal(want, got));  // the embedding rows did round
  }
  SamplingOptions o;
  o.max_new_tokens = 12;
  o.temperature = 0;
  o.eos_id = -1;
  o.precision = Precision::kBf16;
  const std::vector<std::vector<int64_t>> prompts = {{1, 5, 9}, {1, 30, 7, 22, 4}, {1, 11}};
  auto want = generate(f32.model, prompts, o), got = generate(bf.model, prompts, o);
  EXPECT_TRUE(torch::equal(want.response_ids, got.response_ids));
  EXPECT_LE((want.response_logprobs - got.response_logprobs).abs().max().item<float>(), 0.05f);
}

// Training through a bfloat16 output matrix (a frozen base's tied embeddings here, three vocabulary
// slices of the log-prob kernel's backward): the adapters' gradients from token_logprobs equal,
// within bfloat16 rounding (2% of the largest), those of a plain log-softmax under autocast.
TEST(Bf16WeightsTest, LogprobGradientsThroughABf16OutputMatrix) {
  TempDir dir("bf16grad");
  ModelConfig c = testing::tiny_config();
  c.vocab_size = 40000;  // > 2 slices of 16384 rows
  c.n_layers = 1;
  c.tie_embeddings = true;
  auto m = testing::random_model(c, 14);
  export_hf(m, dir / "hf");
  auto bf = load_checkpoint(dir / "hf", frozen_base_load_options(true, true));
  LoraOptions lo;
  lo.rank = 2;
  lo.targets = {"q", "v"};
  torch::manual_seed(4);
  LoraAdapters lora(bf.model, lo);
  {
    torch::NoGradGuard g;
    for (auto& p : lora.parameters()) p.normal_(0, 0.1);
  }
  auto ids = torch::randint(3, 40000, {2, 7}, torch::kLong);
  auto grads = [&](bool kernel) {
    for (auto& p : lora.parameters()) p.mutable_grad() = torch::Tensor();
    lora.refresh(true);
    AutocastScope autocast(torch::Device(torch::kCPU), Precision::kBf16);
    torch::Tensor lp;
    if (kernel) {
      lp = token_logprobs(bf.model, ids, {}, {}).logprobs;
    } else {
      auto logits = bf.model->forward(ids).narrow(1, 0, 6);
      lp = torch::log_softmax(logits, -1).gather(-1, ids.narrow(1, 1, 6).unsqueeze(-1));
    }
    lp.sum().backward();
    std::vector<torch::Tensor> out;
    for (auto& p : lora.parameters()) out.push_back(p.grad().clone());
    return out;
  };
  auto got = grads(true), want = grads(false);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    const float scale = want[i].abs().max().item<float>();
    EXPECT_GT(scale, 0.0f) << i;
    EXPECT_LE((got[i] - want[i]).abs().max().item<float>(), 0.02f * scale) << i;
  }
}

}  // namespace
}  // namespace rlhf::policy
