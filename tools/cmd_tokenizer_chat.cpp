// `rlhf tokenizer chat`: render conversations with a Hugging Face model folder's chat template
// (tokenizer_config.json), optionally with the token ids of the prompt (tokenizer.json).
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "common/error.h"
#include "policy/tokenizer/chat_template.h"
#include "policy/tokenizer/hf_tokenizer.h"
#include "tools/cli.h"

namespace {

using rlhf::cli::Args;
using ojson = nlohmann::ordered_json;

int chat(const Args& args) {
  const std::string dir = args.get("model");
  const std::string input = args.get("input");
  const bool agp = args.get_bool("add-generation-prompt");
  const auto tmpl = rlhf::policy::ChatTemplate::load(dir + "/tokenizer_config.json");
  std::optional<rlhf::policy::HfTokenizer> tok;
  if (args.get_bool("ids")) tok = rlhf::policy::HfTokenizer::load(dir + "/tokenizer.json");
  std::ifstream in(input);
  if (!in) throw rlhf::Error(input + ": cannot open");
  size_t line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = input + ":" + std::to_string(line_no);
    ojson item;
    try {
      item = ojson::parse(line);
    } catch (const ojson::exception& e) {
      throw rlhf::Error(where + ": not valid JSON: " + e.what());
    }
    if (!item.is_object() || !item.contains("messages") || !item.at("messages").is_array()) {
      throw rlhf::Error(where + ": expected {\"messages\": [...], ...}");
    }
    ojson extra = item;
    extra.erase("messages");
    ojson out;
    try {
      out["text"] = tmpl.render(item.at("messages"), agp, extra);
    } catch (const rlhf::Error& e) {
      throw rlhf::Error(where + ": " + e.what());
    }
    if (tok) out["ids"] = tok->encode(out["text"].get<std::string>(), false);
    std::printf("%s\n", out.dump().c_str());
  }
  return 0;
}

rlhf::cli::Register reg_chat(
    {"tokenizer chat",
     "render conversations with a Hugging Face model's chat template (one {\"text\"} line each)",
     "--model DIR --input FILE.jsonl [--add-generation-prompt] [--ids]",
     {{"model",
       "model folder: tokenizer_config.json (chat_template, bos/eos), tokenizer.json for --ids", "",
       false, true},
      {"input",
       "JSONL, one {\"messages\": [{\"role\", \"content\"}, ...]} per line; its other keys (e.g. "
       "tools, enable_thinking) are template variables",
       "", false, true},
      {"add-generation-prompt", "end each prompt with the assistant header", "", true},
      {"ids", "add \"ids\": the prompt's token ids (tokenizer.json, no special tokens added)", "",
       true}},
     chat});

}  // namespace
