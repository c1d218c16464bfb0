#include "common/manifest.h"

#include <google/protobuf/util/json_util.h>

#include "common/error.h"
#include "common/files.h"

#ifndef RLHF_CODE_VERSION
#define RLHF_CODE_VERSION "unknown"
#endif

namespace rlhf {

std::string code_version() { return RLHF_CODE_VERSION; }

proto::FileRef file_ref(const std::string& path) {
  std::string data = read_file(path);
  proto::FileRef r;
  r.set_path(path);
  r.set_sha256(sha256_hex(data));
  r.set_bytes(static_cast<int64_t>(data.size()));
  return r;
}

proto::StageManifest begin_manifest(const std::string& stage) {
  proto::StageManifest m;
  m.set_schema_version(1);
  m.set_stage(stage);
  m.set_complete(false);
  m.set_started_at(utc_now_iso8601());
  m.set_code_version(code_version());
  return m;
}

void write_manifest(const proto::StageManifest& m, const std::string& dir) {
  make_dirs(dir);
  std::string bin;
  if (!m.SerializeToString(&bin)) throw Error("cannot serialise manifest for " + dir);
  std::string json;
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = true;
  opts.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &json, opts);
  write_file_atomic(dir + "/manifest.json", json);
  write_file_atomic(dir + "/manifest.pb", bin);
}

void finish_manifest(proto::StageManifest& m, const std::string& dir, double wall_seconds) {
  m.set_complete(true);
  m.set_finished_at(utc_now_iso8601());
  m.set_wall_seconds(wall_seconds);
  write_manifest(m, dir);
}

std::optional<proto::StageManifest> read_manifest(const std::string& dir) {
  std::string path = dir + "/manifest.pb";
  if (!file_exists(path)) return std::nullopt;
  proto::StageManifest m;
  if (!m.ParseFromString(read_file(path)))
    throw Error(path + ": corrupt manifest (not a StageManifest message)");
  if (m.schema_version() > 1)
    throw Error(path + ": manifest schema_version " + std::to_string(m.schema_version()) +
                " is newer than this build understands (1)");
  return m;
}

proto::StageManifest require_complete_manifest(const std::string& dir, const std::string& stage) {
  auto m = read_manifest(dir);
  if (!m) throw Error(dir + ": stage '" + stage + "' has no manifest.pb (did the stage run?)");
  if (m->stage() != stage)
    throw Error(dir + "/manifest.pb: expected stage '" + stage + "', found '" + m->stage() + "'");
  if (!m->complete())
    throw Error(dir + "/manifest.pb: stage '" + stage + "' did not finish (complete = false)");
  return *m;
}

}  // namespace rlhf
