// `rlhf generate`: sample a continuation from a checkpoint (native or Hugging Face folder).
#include <torch/torch.h>

#include <cstdio>
#include <optional>
#include <sstream>

#include "common/error.h"
#include "policy/decoding/generation.h"
#include "policy/model/checkpoint.h"
#include "policy/runtime/device.h"
#include "policy/tokenizer/tokenizer.h"
#include "tools/cli.h"

namespace {

using rlhf::cli::Args;

std::vector<int64_t> parse_ids(const std::string& text) {
  std::vector<int64_t> ids;
  std::istringstream in(text);
  std::string word;
  while (in >> word) {
    try {
      size_t used = 0;
      ids.push_back(std::stoll(word, &used));
      if (used != word.size()) throw std::invalid_argument(word);
    } catch (const std::exception&) {
      throw rlhf::UsageError("--prompt-ids: '" + word + "' is not an integer id");
    }
  }
  if (ids.empty()) throw rlhf::UsageError("--prompt-ids: no ids given");
  return ids;
}

int run(const Args& args) {
  if (args.has("prompt") == args.has("prompt-ids"))
    throw rlhf::UsageError("give exactly one of --prompt TEXT or --prompt-ids \"1 2 3\"");
  const torch::Device device = rlhf::policy::resolve_device(args.get("device"), "--device");
  const auto precision = rlhf::policy::parse_precision(args.get("dtype"), "--dtype");

  rlhf::policy::LoadedModel loaded;
  try {
    loaded = rlhf::policy::load_checkpoint(args.get("model"));
  } catch (...) {
    rlhf::rethrow_with_context("loading model");
  }
  auto& model = loaded.model;
  model->to(device);

  // The tokenizer: --tokenizer, or for a --prompt TEXT without it, the one in the model folder.
  std::string tokenizer_path = args.has("tokenizer") ? args.get("tokenizer") : "";
  if (tokenizer_path.empty() && !args.has("prompt-ids"))
    tokenizer_path = rlhf::policy::Tokenizer::file_in_folder(args.get("model"));
  std::optional<rlhf::policy::Tokenizer> tokenizer;
  if (!tokenizer_path.empty()) {
    tokenizer = rlhf::policy::Tokenizer::load(tokenizer_path);
    if (tokenizer->vocab_size() > model->config().vocab_size)
      throw rlhf::Error(
          "tokenizer " + tokenizer_path + " has " + std::to_string(tokenizer->vocab_size()) +
          " pieces but the model's vocab_size is " + std::to_string(model->config().vocab_size));
    if (!loaded.info.tokenizer_sha256.empty() &&
        loaded.info.tokenizer_sha256 != tokenizer->sha256())
      std::fprintf(
          stderr,
          "warning: tokenizer %s (sha256 %s) is not the one the checkpoint was trained with (%s)\n",
          tokenizer_path.c_str(), tokenizer->sha256().c_str(),
          loaded.info.tokenizer_sha256.c_str());
  }

  std::vector<int64_t> prompt;
  if (args.has("prompt-ids")) {
    prompt = parse_ids(args.get("prompt-ids"));
  } else {
    if (!tokenizer)
      throw rlhf::UsageError("--prompt TEXT needs a tokenizer: " + args.get("model") +
                             " holds no tokenizer.model or tokenizer.json; pass --tokenizer PATH "
                             "(or use --prompt-ids)");
    int bos = tokenizer->bos_id() >= 0 ? tokenizer->bos_id() : model->config().bos_id;
    if (bos >= 0) prompt.push_back(bos);
    for (int id : tokenizer->encode(args.get("prompt"))) prompt.push_back(id);
  }

  rlhf::policy::SamplingOptions o;
  o.max_new_tokens = static_cast<int>(args.get_int("max-new-tokens"));
  o.temperature = static_cast<float>(args.get_double("temperature"));
  o.top_k = static_cast<int>(args.get_int("top-k"));
  o.top_p = static_cast<float>(args.get_double("top-p"));
  o.seed = static_cast<uint64_t>(args.get_int("seed"));
  if (o.max_new_tokens < 0) throw rlhf::UsageError("--max-new-tokens must be >= 0");
  if (o.temperature < 0) throw rlhf::UsageError("--temperature must be >= 0 (0 = greedy)");
  if (!(o.top_p > 0 && o.top_p <= 1)) throw rlhf::UsageError("--top-p must be in (0, 1]");
  if (args.get_bool("ignore-eos")) o.eos_id = -1;
  o.precision = precision;

  auto out = rlhf::policy::generate(model, {prompt}, o);
  const auto& ids = out.responses[0];
  if (args.get_bool("ids") || !tokenizer) {
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
    std::printf("%s\n", line.c_str());
  } else {
    std::vector<int> as_int(ids.begin(), ids.end());
    std::printf("%s\n", tokenizer->decode(as_int).c_str());
  }
  if (args.get_bool("stats"))
    std::fprintf(stderr, "%lld tokens in %.3f s (%.1f tokens/s)\n",
                 static_cast<long long>(out.generated_tokens), out.seconds,
                 out.seconds > 0 ? out.generated_tokens / out.seconds : 0.0);
  return 0;
}

rlhf::cli::Register reg({
    "generate",
    "sample a continuation from a model checkpoint (native or Hugging Face folder)",
    "--model DIR [--tokenizer PATH] (--prompt TEXT | --prompt-ids \"1 2 3\") --max-new-tokens N "
    "[--temperature T] [--top-k K] [--top-p P] [--seed S] [--ids] [--device D] [--dtype T]",
    {
        {"model", "checkpoint folder (config.json + model.safetensors [+ checkpoint.pb])", "",
         false, true},
        {"tokenizer",
         ".model, tokenizer.json or a folder holding one (for --prompt, text output; default with "
         "--prompt: the one in the --model folder)",
         ""},
        {"prompt", "prompt text (encoded with --tokenizer, BOS prepended)", ""},
        {"prompt-ids", "prompt as space-separated token ids (used as given)", ""},
        {"max-new-tokens", "number of tokens to generate at most", "64"},
        {"temperature", "sampling temperature; 0 = greedy", "1.0"},
        {"top-k", "keep only the K most likely tokens; 0 = off", "0"},
        {"top-p", "nucleus sampling mass; 1 = off", "1.0"},
        {"seed", "random seed (same seed, same output on CPU)", "0"},
        {"ids", "print only the generated ids, space-separated, on one line", "", true},
        {"ignore-eos", "do not stop at the end-of-sequence token", "", true},
        {"stats", "print tokens/s to stderr", "", true},
        {"device", "cpu | cuda | cuda:N", "cpu"},
        {"dtype", "fp32 | bf16 (bf16: autocast forward passes, bf16 KV cache)", "fp32"},
    },
    run,
});

}  // namespace
