// The `rlhf` command line: a table of subcommands, each with declared flags, help and defaults.
//
// A subcommand lives in its own tools/cmd_<name>.cpp and registers itself with a static
// `rlhf::cli::Register` object, so adding a command touches no shared file. Commands are thin:
// parse flags, call into a module, return an exit code. Errors thrown as rlhf::Error become one
// line on stderr and a non-zero exit code (see rlhf_main.cpp).
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace rlhf::cli {

struct FlagSpec {
  // {"name", "help"} or with the later fields too: the table entries in tools/cmd_*.cpp.
  FlagSpec(std::string name_, std::string help_, std::string default_value_ = "",
           bool is_bool_ = false, bool required_ = false)
      : name(std::move(name_)),
        help(std::move(help_)),
        default_value(std::move(default_value_)),
        is_bool(is_bool_),
        required(required_) {}

  std::string name;  // without leading dashes, e.g. "max-new-tokens"
  std::string help;
  std::string default_value;  // shown in --help; "" means none
  bool is_bool = false;       // a switch: present = true, takes no value
  bool required = false;
};

// Parsed arguments of one subcommand invocation.
class Args {
 public:
  bool has(const std::string& name) const;                            // given on the command line
  std::string get(const std::string& name) const;                     // value or declared default
  std::optional<std::string> get_opt(const std::string& name) const;  // only if given
  int64_t get_int(const std::string& name) const;  // throws UsageError naming the flag
  double get_double(const std::string& name) const;
  bool get_bool(const std::string& name) const;
  const std::vector<std::string>& positional() const { return positional_; }

  // Parses argv against specs; unknown flags and missing values are UsageErrors.
  static Args parse(const std::vector<FlagSpec>& specs, const std::vector<std::string>& argv);
  // All of argv as positional arguments (for commands with raw_args).
  static Args raw(const std::vector<std::string>& argv);

 private:
  std::map<std::string, std::string> values_;
  std::map<std::string, std::string> defaults_;
  std::vector<std::string> positional_;
};

struct Command {
  std::string path;     // e.g. "tokenizer train", "generate", "annotate serve"
  std::string summary;  // one line for the command list
  std::string usage;    // e.g. "--input FILE --vocab-size N --out DIR"
  std::vector<FlagSpec> flags;
  std::function<int(const Args&)> run;
  bool raw_args = false;  // when true, positional() holds argv and `flags` only feed --help
};

// Global registry (populated by static Register objects before main runs).
std::map<std::string, Command>& registry();

struct Register {
  explicit Register(Command c);
};

// Entry point used by main(): dispatches argv[1..] to the longest matching command path.
int dispatch(int argc, char** argv);

}  // namespace rlhf::cli
