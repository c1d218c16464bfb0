// Chat templates: the Jinja `chat_template` of a Hugging Face tokenizer_config.json rendered for a
// conversation, byte for byte as @huggingface/jinja (the engine of transformers.js) renders it
// with trim_blocks and lstrip_blocks on, as transformers does. A small interpreter of the Jinja
// subset that chat templates use (Qwen3, Llama 3, Llama 3.1 and alike):
//   - text, {{ expressions }}, {% statements %}, {# comments #}; whitespace control {%- -%} {{- -}}
//   - statements: if / elif / else, for (loop.index / index0 / revindex / first / last / length /
//     previtem / nextitem, `for x in xs if cond`, for-else, tuple unpacking), set (names, tuples,
//     namespace attributes, {% set %}...{% endset %}), macro, break, continue
//   - expressions: literals (strings, numbers, lists, tuples, dicts), attribute and item access,
//     slicing (x[::-1]), calls, `+ - * / // % **`, `~`, comparisons, `in` / `not in`, `and` /
//     `or` / `not`, `is [not] TEST`, `a if c else b`, filters
//   - filters: trim tojson length string upper lower title capitalize default items keys values
//     join selectattr rejectattr select reject map replace reverse first last list sort unique
//     indent int float abs bool safe (select / reject with Python Jinja's meaning: the reference
//     has no such filters and fails at render time; Llama 3.1's builtin_tools branch uses reject)
//   - tests: defined undefined none string number integer boolean mapping iterable sequence
//     callable true false odd even lower upper equalto eq
//   - string methods: strip lstrip rstrip (all three ignore their argument, as @huggingface/jinja
//     does) split replace startswith endswith upper lower title capitalize; dict methods: get items
//     keys values
//   - globals: raise_exception, strftime_now (%Y %m %d %b %B %H %M, local time), range, namespace,
//     true / false / none (and True / False / None)
// Anything else (another statement, filter, test, method or function, argument unpacking) is
// refused when the template loads, with an rlhf::Error that names the construct and where it is.
// Known differences from the reference: upper / lower use simple case mappings plus the special
// cases chat text meets (sharp s, ligatures, final sigma, dotted I), not all of Unicode's; string
// indexing and slicing count code points where JavaScript indexes UTF-16 units (which
// differs for characters outside the BMP only).
//
// Errors: load() / from_source() throw rlhf::Error naming the file or template, the construct or
// syntax error and its line / column; render() throws rlhf::Error on a render-time error, with
// the template's own message for raise_exception(...).
// Thread safety: a ChatTemplate is immutable after loading; render() may run concurrently from
// any number of threads.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace rlhf::policy {

namespace jinja {
struct Node;
}

class ChatTemplate {
 public:
  // Reads `chat_template` (a string, or a list of {"name", "template"} of which "default" is
  // taken) and the special tokens bos_token, eos_token, unk_token, sep_token, pad_token, cls_token
  // and mask_token (strings, {"content": ...} objects or null) from a tokenizer_config.json.
  static ChatTemplate load(const std::string& tokenizer_config_path);
  // A template from its source; `name` appears in error messages. bos / eos: strings, or null
  // for none.
  static ChatTemplate from_source(const std::string& source, const std::string& name,
                                  const nlohmann::ordered_json& bos_token = nullptr,
                                  const nlohmann::ordered_json& eos_token = nullptr);

  // The prompt for `messages` (a JSON array of {"role", "content", ...} objects). Template
  // variables, as transformers sets them: messages, add_generation_prompt, the special tokens the
  // config sets (a null or absent one stays undefined), then every key of `extra` (a JSON object,
  // e.g. {"enable_thinking": false}), which overrides the former. Object keys keep their order
  // (tojson, items).
  std::string render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                     const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;

  const std::string& source() const { return source_; }
  const std::string& name() const { return name_; }

 private:
  std::string source_, name_;
  std::vector<std::pair<std::string, std::string>> special_tokens_;  // name, token
  std::shared_ptr<const std::vector<std::shared_ptr<jinja::Node>>> program_;
};

}  // namespace rlhf::policy
