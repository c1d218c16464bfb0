#include "policy/tokenizer/chat_template.h"

#include <utility>

#include "common/error.h"
#include "common/files.h"
#include "policy/tokenizer/internal/jinja_ast.h"
#include "policy/tokenizer/internal/jinja_eval.h"

namespace rlhf::policy {
namespace {

using ojson = nlohmann::ordered_json;

const char* const kSpecialTokens[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                      "pad_token", "cls_token", "mask_token"};

// A special token of a tokenizer_config.json: a string, {"content": ...}, null or absent (null).
ojson special_token(const ojson& config, const std::string& key, const std::string& path) {
  if (!config.contains(key)) return nullptr;
  const ojson& v = config.at(key);
  if (v.is_null() || v.is_string()) return v;
  if (v.is_object() && v.contains("content") && v.at("content").is_string()) return v.at("content");
  throw Error(path + ": " + key + " must be a string, null or an object with a string \"content\"");
}

std::string template_source(const ojson& config, const std::string& path) {
  if (!config.contains("chat_template")) throw Error(path + ": no chat_template");
  const ojson& t = config.at("chat_template");
  if (t.is_string()) return t.get<std::string>();
  if (t.is_array()) {
    for (const ojson& e : t) {
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
          e.at("template").is_string()) {
        return e.at("template").get<std::string>();
      }
    }
    throw Error(path + ": chat_template is a list without a \"default\" template");
  }
  throw Error(path + ": chat_template must be a string or a list of {name, template}");
}

}  // namespace

ChatTemplate ChatTemplate::load(const std::string& path) {
  ojson config;
  try {
    config = ojson::parse(read_file(path));
  } catch (const ojson::exception& e) {
    throw Error(path + ": not valid JSON: " + e.what());
  }
  if (!config.is_object()) throw Error(path + ": expected a JSON object");
  ChatTemplate t = from_source(template_source(config, path), path);
  for (const char* key : kSpecialTokens) {
    const ojson v = special_token(config, key, path);
    if (v.is_string() && !v.get<std::string>().empty()) {
      t.special_tokens_.emplace_back(key, v.get<std::string>());
    }
  }
  return t;
}

ChatTemplate ChatTemplate::from_source(const std::string& source, const std::string& name,
                                       const ojson& bos_token, const ojson& eos_token) {
  ChatTemplate t;
  t.source_ = source;
  t.name_ = name;
  const std::pair<const char*, const ojson*> tokens[] = {{"bos_token", &bos_token},
                                                         {"eos_token", &eos_token}};
  for (const auto& [key, v] : tokens) {
    if (v->is_null()) continue;
    if (!v->is_string()) throw Error("chat template " + name + ": " + key + " must be a string");
    t.special_tokens_.emplace_back(key, v->get<std::string>());
  }
  t.program_ = std::make_shared<const jinja::Body>(jinja::parse(source, name));
  return t;
}

std::string ChatTemplate::render(const ojson& messages, bool add_generation_prompt,
                                 const ojson& extra) const {
  if (!extra.is_object()) throw Error("chat template " + name_ + ": extra must be a JSON object");
  std::vector<std::pair<std::string, jinja::Value>> vars;
  auto put = [&vars](const std::string& key, jinja::Value v) {
    for (auto& kv : vars) {
      if (kv.first == key) {
        kv.second = std::move(v);
        return;
      }
    }
    vars.emplace_back(key, std::move(v));
  };
  put("messages", jinja::from_json(messages));
  put("add_generation_prompt", jinja::Value::boolean(add_generation_prompt));
  for (const auto& [k, v] : special_tokens_) put(k, jinja::Value::string(v));
  for (const auto& [k, v] : extra.items()) put(k, jinja::from_json(v));
  return jinja::render(*program_, vars, name_);
}

}  // namespace rlhf::policy
