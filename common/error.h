// Error type carried up to the CLI edge, with context added on the way. Errors are plain values:
// safe to create, copy and throw on any thread.
#pragma once

#include <stdexcept>
#include <string>

namespace rlhf {

// An error a user can act on: the message names the file / field / value and what was expected.
// The `rlhf` command prints what() as one line on stderr and exits with exit_code().
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message, int exit_code = 1)
      : std::runtime_error(message), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

// Usage error (bad flags): exit code 2.
class UsageError : public Error {
 public:
  explicit UsageError(const std::string& message) : Error(message, 2) {}
};

// Rethrows the current exception with `context + ": "` prepended, keeping the Error type: a
// UsageError stays a UsageError, an Error keeps its exit code, any other std::exception (e.g.
// c10::Error, std::system_error) becomes an rlhf::Error with exit code 1; anything not derived
// from std::exception is rethrown unchanged. Call only inside a catch block.
[[noreturn]] void rethrow_with_context(const std::string& context);

}  // namespace rlhf
