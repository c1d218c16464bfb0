// Rollout files: one RolloutRecord (proto/rollout.proto) per PPO sample.
//
// Binary form: length-delimited protobuf records (varint size + message), as written by
// google::protobuf::util::SerializeDelimitedToOstream. JSON-lines form: one object per line with
// the record's field names (prompt_ids, response_ids, logprobs, ref_logprobs, values, score, and
// optionally kl, rewards, advantages, returns, kl_coef, gamma, lam, texts...), for hand-made cases.
// Torch-free.
// Errors: rlhf::Error naming the file, the record (index, line or byte offset) and the field that
// is missing, of the wrong type or length, or of an unknown schema_version. Functions hold no
// state: reading and writing different files from different threads is safe; two writers of one
// file are not.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "proto/rollout.pb.h"

namespace rlhf::policy {

// Writes the records to `path` atomically (temp file + rename) as length-delimited protobuf.
void write_rollouts(const std::string& path, const std::vector<proto::RolloutRecord>& records);

// Reads a rollout file. The form is detected: a `.json`/`.jsonl` name, or a first line that is a
// JSON object, means JSON lines; anything else is length-delimited protobuf. Errors name the file
// and the record number (0-based, the same numbering as `rlhf replay --sample`) and, for binary
// files, the byte offset; every record is validated (validate_rollout).
std::vector<proto::RolloutRecord> read_rollouts(const std::string& path);

// Per-token fields must all have the response's length (or be empty where optional: kl, rewards,
// advantages, returns, values); throws rlhf::Error "<where>: field F has N entries, expected T".
void validate_rollout(const proto::RolloutRecord& r, const std::string& where);

// JSON view of a record (the field names above) and its inverse; from_json throws rlhf::Error
// naming `where` and the field on a wrong type.
nlohmann::json rollout_to_json(const proto::RolloutRecord& r);
proto::RolloutRecord rollout_from_json(const nlohmann::json& j, const std::string& where);

}  // namespace rlhf::policy
