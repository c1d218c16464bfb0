// Stage manifests (proto/manifest.proto): every stage writes <out_dir>/manifest.pb (binary, the
// source of truth) and <out_dir>/manifest.json (a readable view), both atomically.
//
// Errors: rlhf::Error naming the file (unreadable, corrupt, unsupported schema_version, wrong or
// unfinished stage, failed write), as each function says. Thread safety: the functions keep no
// state and may be called from any thread; two writers of one stage folder race.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "proto/manifest.pb.h"

namespace rlhf {

// Trainers (policy/, reward/) fill a stage record but never write it: they hand the unfinished
// record to this callback when they start training, and return the finished one. The stage layer
// (pipelines/stage_record.h) is the one writer of stage manifests.
using StageStarted = std::function<void(const proto::StageManifest&)>;

// Describes a file: path as given, SHA-256 of its content, size. Throws rlhf::Error naming the path
// if it cannot be read.
proto::FileRef file_ref(const std::string& path);

// Starts a manifest for `stage` (schema_version, started_at, code_version filled in).
proto::StageManifest begin_manifest(const std::string& stage);

// Sets finished_at and complete = true, then writes manifest.pb + manifest.json into dir (throws
// rlhf::Error when a write fails).
void finish_manifest(proto::StageManifest& m, const std::string& dir, double wall_seconds);

// Writes as is (e.g. complete = false while a stage runs).
void write_manifest(const proto::StageManifest& m, const std::string& dir);

// Reads <dir>/manifest.pb; nullopt when absent; throws rlhf::Error naming the file when it is
// corrupt or has a newer schema_version.
std::optional<proto::StageManifest> read_manifest(const std::string& dir);

// Reads and checks that the stage is complete; throws a clear error otherwise
// ("<dir>: stage 'sft' has no manifest (did it run?)" / "... is not finished").
proto::StageManifest require_complete_manifest(const std::string& dir, const std::string& stage);

// Code version baked in at build time (git describe), "unknown" otherwise.
std::string code_version();

}  // namespace rlhf
