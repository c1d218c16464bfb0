// Reading tokenizer.json with errors that name the file and the JSON path
// ("model.merges[12]", "pre_tokenizer.pretokenizers[1].type").
//
// Errors: every accessor throws rlhf::Error "<file>: <path>: <what was expected, what was found>".
// Thread safety: a JsonNode is a view of a json value that must outlive it; const use from many
// threads is safe.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace rlhf::policy::hf {

class JsonNode {
 public:
  JsonNode(const nlohmann::json* value, std::string path, const std::string* file)
      : v_(value), path_(std::move(path)), file_(file) {}

  [[noreturn]] void fail(const std::string& what) const;

  // A member of an object (this must be an object); absent members read as null.
  JsonNode operator[](const char* key) const;
  // An element of an array (this must be an array with more than i elements).
  JsonNode operator[](size_t i) const;

  bool is_null() const { return !v_ || v_->is_null(); }
  bool present() const { return v_ != nullptr; }
  const nlohmann::json& value() const;  // throws when absent
  const nlohmann::json& object() const;
  const nlohmann::json& array() const;
  std::string str() const;
  bool boolean() const;
  long long integer() const;

  // Null or absent: the default; else the typed value.
  bool boolean_or(bool dflt) const { return is_null() ? dflt : boolean(); }
  std::optional<std::string> optional_str() const {
    return is_null() ? std::nullopt : std::optional<std::string>(str());
  }

  const std::string& path() const { return path_; }
  std::string child_path(const std::string& key) const {
    return path_.empty() ? key : path_ + "." + key;
  }

 private:
  const nlohmann::json* v_;
  std::string path_;
  const std::string* file_;
};

}  // namespace rlhf::policy::hf
