// The `rlhf` command line: a table of subcommands, each with declared flags, help and defaults.
//
// A subcommand lives in its own tools/cmd_<name>.cpp and registers itself with a static
// `rlhf::cli::Register` object, so adding a command touches no shared file. Commands are thin:
// parse flags, call into a module, return an exit code. A command that reads a config message
// also registers one table of the flags that override its fields (ConfigFlags; applied by
// apply_config_flags in tools/config_flags.h, listed by --help from the same table).
//
// Ownership: the registry owns the commands; Args owns copies of the parsed strings.
// Thread safety: the registry is filled by static initialisers before main() and only read after;
// Args is a value, safe to read from several threads.
// Errors: Args' getters and parse() throw rlhf::UsageError (exit code 2) naming the flag;
// dispatch() catches every exception a command throws and turns it into one line on stderr and an
// exit code.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace google::protobuf {
class Descriptor;
}  // namespace google::protobuf

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

// One flag that sets a field of its command's config message: `--lr 0.5` sets `lr`.
struct ConfigFlag {
  const char* flag;        // without leading dashes, e.g. "lora-rank"
  const char* field_path;  // dotted path in the config message, e.g. "lora.rank"
  const char* help;        // what the value means; --help adds "(overrides <field_path>)"
};

// A command's config overrides: the message type they apply to and one entry per flag. A bool
// field's flag is a switch (`--packed` sets true); every other flag takes a value.
struct ConfigFlags {
  // The config message's type, e.g. &rlhf::proto::SftConfig::descriptor (a function, so that
  // static tables do not depend on the protobuf descriptors' initialisation order).
  const google::protobuf::Descriptor* (*message)() = nullptr;
  std::vector<ConfigFlag> flags;
};

struct Command {
  // {path, summary, usage, flags, run[, raw_args]}: the table entries in tools/cmd_*.cpp.
  Command() = default;
  Command(std::string path_, std::string summary_, std::string usage_, std::vector<FlagSpec> flags_,
          std::function<int(const Args&)> run_, bool raw_args_ = false)
      : path(std::move(path_)),
        summary(std::move(summary_)),
        usage(std::move(usage_)),
        flags(std::move(flags_)),
        run(std::move(run_)),
        raw_args(raw_args_) {}

  std::string path;     // e.g. "tokenizer train", "generate", "annotate serve"
  std::string summary;  // one line for the command list
  std::string usage;    // e.g. "--input FILE --vocab-size N --out DIR"
  std::vector<FlagSpec> flags;
  std::function<int(const Args&)> run;
  bool raw_args = false;     // when true, positional() holds argv and `flags` only feed --help
  ConfigFlags config_flags;  // parsed beside `flags`; the command applies them to its config
};

// Global registry (populated by static Register objects before main runs).
std::map<std::string, Command>& registry();

struct Register {
  explicit Register(Command c);
  // A command whose flags in `config_flags` override fields of its config message.
  Register(Command c, ConfigFlags config_flags);
};

// Every flag the command accepts: `flags`, then one per config flag (config_flag_specs). Throws
// rlhf::Error when a config flag names no field of the message or shares a name with `flags`.
std::vector<FlagSpec> all_flags(const Command& c);

// Entry point used by main(): dispatches argv[1..] to the longest matching command path.
int dispatch(int argc, char** argv);

}  // namespace rlhf::cli
