// File helpers: whole-file reads (plain or gzip), atomic writes (temp + fsync + rename) and content
// hashes.
//
// Errors: the functions that can fail throw rlhf::Error saying what failed on which path (with the
// errno text where there is one); file_exists, executable_dir and utc_now_iso8601 never throw.
// Thread safety: every function may be called from any thread; two writers of one path race (the
// last rename wins).
#pragma once

#include <cstdint>
#include <string>

namespace rlhf {

// Reads a whole file; throws rlhf::Error naming the path when it cannot be read.
std::string read_file(const std::string& path);

// Reads a whole file, gunzipping it when its content is gzip-compressed (detected from the gzip
// magic bytes, whatever the name; plain files are returned as they are). Throws rlhf::Error
// naming the path when it cannot be opened or is a damaged gzip stream.
std::string read_file_maybe_gzip(const std::string& path);

// Writes `data` to `path` atomically: a temp file in the same folder, fsync, rename, fsync of the
// folder. Readers see either the old or the new content, never a partial file.
void write_file_atomic(const std::string& path, const std::string& data);

// Renames `from` to `to` atomically and fsyncs the parent folder (for folders written in place
// under a temp name, e.g. checkpoints).
void rename_atomic(const std::string& from, const std::string& to);

// Lowercase hex SHA-256 of a byte string / of a file's content (OpenSSL).
std::string sha256_hex(const std::string& data);
std::string sha256_file(const std::string& path);

bool file_exists(const std::string& path);

// Creates the folder and its parents (like mkdir -p); throws rlhf::Error naming it on failure.
void make_dirs(const std::string& path);

// Folder containing the running executable (from /proc/self/exe); "." when it cannot be read.
std::string executable_dir();

// Current UTC time as ISO 8601 ("2026-11-28T08:09:10Z").
std::string utc_now_iso8601();

}  // namespace rlhf
