#include "policy/tokenizer/internal/hf_json.h"

#include "common/error.h"

namespace rlhf::policy::hf {

namespace {

std::string describe(const nlohmann::json* v) {
  if (!v) return "nothing (the field is missing)";
  std::string text = v->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return std::string(v->type_name()) + " " + text;
}

}  // namespace

void JsonNode::fail(const std::string& what) const {
  throw Error(*file_ + ": " + (path_.empty() ? std::string("(top level)") : path_) + ": " + what);
}

JsonNode JsonNode::operator[](const char* key) const {
  const nlohmann::json& o = object();
  const auto it = o.find(key);
  return JsonNode(it == o.end() ? nullptr : &*it, child_path(key), file_);
}

JsonNode JsonNode::operator[](size_t i) const {
  const nlohmann::json& a = array();
  const std::string p = path_ + "[" + std::to_string(i) + "]";
  if (i >= a.size())
    JsonNode(nullptr, p, file_)
        .fail("missing (the array has " + std::to_string(a.size()) + " elements)");
  return JsonNode(&a[i], p, file_);
}

const nlohmann::json& JsonNode::value() const {
  if (!v_) fail("missing");
  return *v_;
}

const nlohmann::json& JsonNode::object() const {
  if (!v_ || !v_->is_object()) fail("expected an object, got " + describe(v_));
  return *v_;
}

const nlohmann::json& JsonNode::array() const {
  if (!v_ || !v_->is_array()) fail("expected an array, got " + describe(v_));
  return *v_;
}

std::string JsonNode::str() const {
  if (!v_ || !v_->is_string()) fail("expected a string, got " + describe(v_));
  return v_->get<std::string>();
}

bool JsonNode::boolean() const {
  if (!v_ || !v_->is_boolean()) fail("expected true or false, got " + describe(v_));
  return v_->get<bool>();
}

long long JsonNode::integer() const {
  if (!v_ || !v_->is_number_integer()) fail("expected an integer, got " + describe(v_));
  return v_->get<long long>();
}

}  // namespace rlhf::policy::hf
