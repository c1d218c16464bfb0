#include "policy/ppo/rollout_file.h"

#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/util/delimited_message_util.h>

#include <sstream>

#include "common/error.h"
#include "common/files.h"

namespace rlhf::policy {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool looks_like_json_lines(const std::string& path, const std::string& data) {
  if (ends_with(path, ".jsonl") || ends_with(path, ".json")) return true;
  size_t i = data.find_first_not_of(" \t\r\n");
  if (i == std::string::npos || data[i] != '{') return false;
  size_t end = data.find('\n', i);
  std::string first = data.substr(i, end == std::string::npos ? std::string::npos : end - i);
  return nlohmann::json::accept(first);
}

template <typename Field>
void check_len(const Field& f, const char* name, int n, bool optional, const std::string& where) {
  if (optional && f.size() == 0) return;
  if (f.size() != n)
    throw Error(where + ": field " + name + " has " + std::to_string(f.size()) +
                " entries, expected " + std::to_string(n) + " (one per response token)");
}

template <typename T, typename Field>
void fill(const nlohmann::json& j, const char* name, Field* out, const std::string& where) {
  if (!j.contains(name) || j[name].is_null()) return;
  const auto& a = j[name];
  if (!a.is_array()) throw Error(where + ": field " + name + " must be a list of numbers");
  for (size_t i = 0; i < a.size(); ++i) {
    if (!a[i].is_number())
      throw Error(where + ": field " + name + "[" + std::to_string(i) + "] is not a number");
    out->Add(a[i].get<T>());
  }
}

template <typename T>
T scalar(const nlohmann::json& j, const char* name, T dflt, const std::string& where) {
  if (!j.contains(name) || j[name].is_null()) return dflt;
  if (!j[name].is_number())
    throw Error(where + ": field " + std::string(name) + " must be a number");
  return j[name].get<T>();
}

}  // namespace

void write_rollouts(const std::string& path, const std::vector<proto::RolloutRecord>& records) {
  std::ostringstream os;
  for (const auto& r : records)
    if (!google::protobuf::util::SerializeDelimitedToOstream(r, &os))
      throw Error(path + ": cannot serialize rollout record " + std::to_string(r.index()));
  write_file_atomic(path, os.str());
}

void validate_rollout(const proto::RolloutRecord& r, const std::string& where) {
  const int n = r.response_ids_size();
  check_len(r.logprobs(), "logprobs", n, false, where);
  check_len(r.ref_logprobs(), "ref_logprobs", n, false, where);
  check_len(r.values(), "values", n, false, where);
  check_len(r.kl(), "kl", n, true, where);
  check_len(r.rewards(), "rewards", n, true, where);
  check_len(r.advantages(), "advantages", n, true, where);
  check_len(r.returns(), "returns", n, true, where);
  if (r.schema_version() > 1)
    throw Error(where + ": schema_version " + std::to_string(r.schema_version()) +
                " is newer than this build understands (1)");
}

std::vector<proto::RolloutRecord> read_rollouts(const std::string& path) {
  const std::string data = read_file(path);
  std::vector<proto::RolloutRecord> out;
  if (looks_like_json_lines(path, data)) {
    std::istringstream in(data);
    std::string line;
    int64_t line_no = 0;
    while (std::getline(in, line)) {
      ++line_no;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      std::string where = path + ": record " + std::to_string(out.size()) + " (line " +
                          std::to_string(line_no) + ")";
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const std::exception& e) {
        throw Error(where + ": not valid JSON: " + e.what());
      }
      if (!j.is_object()) throw Error(where + ": expected a JSON object");
      auto r = rollout_from_json(j, where);
      if (!j.contains("index")) r.set_index(static_cast<int64_t>(out.size()));
      validate_rollout(r, where);
      out.push_back(std::move(r));
    }
    return out;
  }
  google::protobuf::io::ArrayInputStream stream(data.data(), static_cast<int>(data.size()));
  while (true) {
    const int64_t offset = stream.ByteCount();
    proto::RolloutRecord r;
    bool clean_eof = false;
    if (!google::protobuf::util::ParseDelimitedFromZeroCopyStream(&r, &stream, &clean_eof)) {
      if (clean_eof) break;
      throw Error(path + ": record " + std::to_string(out.size()) + " (byte offset " +
                  std::to_string(offset) + " of " + std::to_string(data.size()) +
                  "): cannot parse a length-delimited RolloutRecord (truncated or corrupt file)");
    }
    validate_rollout(r, path + ": record " + std::to_string(out.size()));
    out.push_back(std::move(r));
  }
  return out;
}

nlohmann::json rollout_to_json(const proto::RolloutRecord& r) {
  auto list = [](const auto& f) {
    nlohmann::json a = nlohmann::json::array();
    for (auto v : f) a.push_back(v);
    return a;
  };
  nlohmann::json j;
  j["schema_version"] = r.schema_version();
  j["iteration"] = r.iteration();
  j["index"] = r.index();
  j["prompt_ids"] = list(r.prompt_ids());
  j["prompt_text"] = r.prompt_text();
  j["response_ids"] = list(r.response_ids());
  j["response_text"] = r.response_text();
  j["logprobs"] = list(r.logprobs());
  j["ref_logprobs"] = list(r.ref_logprobs());
  j["values"] = list(r.values());
  j["kl"] = list(r.kl());
  j["rewards"] = list(r.rewards());
  j["advantages"] = list(r.advantages());
  j["returns"] = list(r.returns());
  j["score"] = r.score();
  j["raw_score"] = r.raw_score();
  j["ended_with_eos"] = r.ended_with_eos();
  j["kl_coef"] = r.kl_coef();
  j["gamma"] = r.gamma();
  j["lam"] = r.lam();
  const auto& g = r.generation();
  j["generation"] = {
      {"temperature", g.temperature()},       {"top_k", g.top_k()},   {"top_p", g.top_p()},
      {"max_new_tokens", g.max_new_tokens()}, {"eos_id", g.eos_id()}, {"seed", g.seed()}};
  if (!r.advantage_estimator().empty() || r.samples_per_prompt() > 1) {
    j["advantage_estimator"] = r.advantage_estimator();
    j["samples_per_prompt"] = r.samples_per_prompt();
    j["group"] = r.group();
    j["kl_in_loss"] = r.kl_in_loss();
    j["sequence_advantage"] = r.sequence_advantage();
  }
  return j;
}

proto::RolloutRecord rollout_from_json(const nlohmann::json& j, const std::string& where) {
  proto::RolloutRecord r;
  for (const char* required :
       {"prompt_ids", "response_ids", "logprobs", "ref_logprobs", "values", "score"})
    if (!j.contains(required))
      throw Error(where + ": missing field " + required +
                  " (hand-made records need prompt_ids, response_ids, logprobs, ref_logprobs, "
                  "values, score)");
  r.set_schema_version(scalar<uint32_t>(j, "schema_version", 1, where));
  r.set_iteration(scalar<int64_t>(j, "iteration", 0, where));
  r.set_index(scalar<int64_t>(j, "index", 0, where));
  fill<int64_t>(j, "prompt_ids", r.mutable_prompt_ids(), where);
  fill<int64_t>(j, "response_ids", r.mutable_response_ids(), where);
  fill<float>(j, "logprobs", r.mutable_logprobs(), where);
  fill<float>(j, "ref_logprobs", r.mutable_ref_logprobs(), where);
  fill<float>(j, "values", r.mutable_values(), where);
  fill<float>(j, "kl", r.mutable_kl(), where);
  fill<float>(j, "rewards", r.mutable_rewards(), where);
  fill<float>(j, "advantages", r.mutable_advantages(), where);
  fill<float>(j, "returns", r.mutable_returns(), where);
  r.set_score(scalar<float>(j, "score", 0.f, where));
  r.set_raw_score(scalar<float>(j, "raw_score", r.score(), where));
  r.set_kl_coef(scalar<double>(j, "kl_coef", 0.0, where));
  r.set_gamma(scalar<double>(j, "gamma", 0.0, where));
  r.set_lam(scalar<double>(j, "lam", 0.0, where));
  if (j.contains("advantage_estimator") && j["advantage_estimator"].is_string())
    r.set_advantage_estimator(j["advantage_estimator"].get<std::string>());
  r.set_samples_per_prompt(scalar<int32_t>(j, "samples_per_prompt", 0, where));
  r.set_group(scalar<int64_t>(j, "group", 0, where));
  r.set_sequence_advantage(scalar<float>(j, "sequence_advantage", 0.f, where));
  if (j.contains("kl_in_loss") && j["kl_in_loss"].is_boolean())
    r.set_kl_in_loss(j["kl_in_loss"].get<bool>());
  if (j.contains("ended_with_eos") && j["ended_with_eos"].is_boolean())
    r.set_ended_with_eos(j["ended_with_eos"].get<bool>());
  if (j.contains("prompt_text") && j["prompt_text"].is_string())
    r.set_prompt_text(j["prompt_text"].get<std::string>());
  if (j.contains("response_text") && j["response_text"].is_string())
    r.set_response_text(j["response_text"].get<std::string>());
  if (j.contains("generation") && j["generation"].is_object()) {
    const auto& g = j["generation"];
    auto* m = r.mutable_generation();
    m->set_temperature(scalar<float>(g, "temperature", 1.f, where));
    m->set_top_k(scalar<int32_t>(g, "top_k", 0, where));
    m->set_top_p(scalar<float>(g, "top_p", 1.f, where));
    m->set_max_new_tokens(scalar<int32_t>(g, "max_new_tokens", 0, where));
    m->set_eos_id(scalar<int64_t>(g, "eos_id", 0, where));
    m->set_seed(scalar<uint64_t>(g, "seed", 0, where));
  }
  return r;
}

}  // namespace rlhf::policy
