#include "tools/cli.h"

#include <google/protobuf/descriptor.h>

#include <cstdio>
#include <iostream>
#include <set>

#include "common/error.h"
#include "tools/config_flags.h"

namespace rlhf::cli {

std::map<std::string, Command>& registry() {
  static std::map<std::string, Command> r;
  return r;
}

Register::Register(Command c) {
  std::string path = c.path;
  registry().emplace(path, std::move(c));
}

Register::Register(Command c, ConfigFlags config_flags) {
  c.config_flags = std::move(config_flags);
  std::string path = c.path;
  registry().emplace(path, std::move(c));
}

std::vector<FlagSpec> all_flags(const Command& c) {
  std::vector<FlagSpec> specs = c.flags;
  std::set<std::string> names;
  for (const auto& f : c.flags) names.insert(f.name);
  for (auto& f : config_flag_specs(c.config_flags)) {
    if (!names.insert(f.name).second)
      throw Error("rlhf " + c.path + ": flag --" + f.name + " is declared twice");
    specs.push_back(std::move(f));
  }
  return specs;
}

bool Args::has(const std::string& name) const { return values_.count(name) > 0; }

std::string Args::get(const std::string& name) const {
  auto it = values_.find(name);
  if (it != values_.end()) return it->second;
  auto d = defaults_.find(name);
  return d == defaults_.end() ? "" : d->second;
}

std::optional<std::string> Args::get_opt(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

int64_t Args::get_int(const std::string& name) const {
  std::string v = get(name);
  try {
    size_t pos = 0;
    long long x = std::stoll(v, &pos);
    if (pos != v.size()) throw std::invalid_argument("trailing");
    return x;
  } catch (const std::exception&) {
    throw UsageError("--" + name + ": expected an integer, got '" + v + "'");
  }
}

double Args::get_double(const std::string& name) const {
  std::string v = get(name);
  try {
    size_t pos = 0;
    double x = std::stod(v, &pos);
    if (pos != v.size()) throw std::invalid_argument("trailing");
    return x;
  } catch (const std::exception&) {
    throw UsageError("--" + name + ": expected a number, got '" + v + "'");
  }
}

bool Args::get_bool(const std::string& name) const {
  std::string v = get(name);
  return v == "1" || v == "true" || v == "yes" || v == "on";
}

Args Args::parse(const std::vector<FlagSpec>& specs, const std::vector<std::string>& argv) {
  Args a;
  std::map<std::string, const FlagSpec*> by_name;
  for (const auto& s : specs) {
    by_name[s.name] = &s;
    if (!s.default_value.empty()) a.defaults_[s.name] = s.default_value;
  }
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (arg.size() > 2 && arg.compare(0, 2, "--") == 0) {
      std::string name = arg.substr(2), value;
      bool has_value = false;
      auto eq = name.find('=');
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_value = true;
      }
      auto it = by_name.find(name);
      if (it == by_name.end()) throw UsageError("unknown flag --" + name + " (see --help)");
      if (it->second->is_bool) {
        a.values_[name] = has_value ? value : "true";
      } else {
        if (!has_value) {
          if (i + 1 >= argv.size()) throw UsageError("flag --" + name + " needs a value");
          value = argv[++i];
        }
        a.values_[name] = value;
      }
    } else {
      a.positional_.push_back(arg);
    }
  }
  for (const auto& s : specs)
    if (s.required && !a.has(s.name)) throw UsageError("missing required flag --" + s.name);
  return a;
}

Args Args::raw(const std::vector<std::string>& argv) {
  Args a;
  a.positional_ = argv;
  return a;
}

namespace {

void print_flag_help(const FlagSpec& f) {
  std::string left = "  --" + f.name + (f.is_bool ? "" : " V");
  std::printf("%-28s %s", left.c_str(), f.help.c_str());
  if (!f.default_value.empty()) std::printf(" (default: %s)", f.default_value.c_str());
  if (f.required) std::printf(" [required]");
  std::printf("\n");
}

void print_command_help(const Command& c) {
  const std::vector<FlagSpec> overrides = config_flag_specs(c.config_flags);
  std::printf("usage: rlhf %s %s\n\n%s\n", c.path.c_str(), c.usage.c_str(), c.summary.c_str());
  if (!c.flags.empty()) std::printf("\nflags:\n");
  for (const auto& f : c.flags) print_flag_help(f);
  if (overrides.empty()) return;
  std::printf("\nconfig overrides (each sets the named field of %s):\n",
              c.config_flags.message()->full_name().c_str());
  for (const auto& f : overrides) print_flag_help(f);
}

void print_overview() {
  std::printf(
      "rlhf: a C++ RLHF pipeline (tokenizer, sft, sample, annotate, reward, ppo, dpo, replay, "
      "pipeline)\n\nusage: rlhf <command> [flags]   (rlhf <command> --help for details)\n\n"
      "commands:\n");
  for (const auto& [path, c] : registry())
    std::printf("  %-24s %s\n", path.c_str(), c.summary.c_str());
}

}  // namespace

int dispatch(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    print_overview();
    return args.empty() ? 2 : 0;
  }
  // Longest command path that matches a prefix of args.
  const Command* best = nullptr;
  size_t best_words = 0;
  for (const auto& [path, c] : registry()) {
    std::vector<std::string> words;
    size_t start = 0;
    while (start <= path.size()) {
      size_t sp = path.find(' ', start);
      if (sp == std::string::npos) sp = path.size();
      words.push_back(path.substr(start, sp - start));
      start = sp + 1;
    }
    if (words.size() > args.size()) continue;
    bool match = true;
    for (size_t i = 0; i < words.size(); ++i) match = match && words[i] == args[i];
    if (match && words.size() > best_words) {
      best = &c;
      best_words = words.size();
    }
  }
  if (!best) {
    // A group name alone ("rlhf annotate"): list its subcommands.
    bool any = false;
    for (const auto& [path, c] : registry()) {
      if (path.rfind(args[0] + " ", 0) == 0) {
        if (!any) std::printf("rlhf %s subcommands:\n", args[0].c_str());
        any = true;
        std::printf("  %-24s %s\n", path.c_str(), c.summary.c_str());
      }
    }
    if (any) return 2;
    std::fprintf(stderr, "rlhf: unknown command '%s' (run rlhf --help)\n", args[0].c_str());
    return 2;
  }
  std::vector<std::string> rest(args.begin() + best_words, args.end());
  try {
    for (const auto& a : rest) {
      if (a == "--") break;  // what follows belongs to another program (`rlhf launch -- ...`)
      if (a == "--help" || a == "-h") {
        print_command_help(*best);
        return 0;
      }
    }
    const Args parsed = best->raw_args ? Args::raw(rest) : Args::parse(all_flags(*best), rest);
    return best->run(parsed);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "rlhf %s: %s\n", best->path.c_str(), e.what());
    return e.exit_code();
  } catch (const Error& e) {
    std::fprintf(stderr, "rlhf %s: error: %s\n", best->path.c_str(), e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    // c10::Error, protobuf and std errors end here: one line, non-zero exit.
    std::string msg = e.what();
    auto nl = msg.find('\n');
    if (nl != std::string::npos) msg = msg.substr(0, nl);
    std::fprintf(stderr, "rlhf %s: error: %s\n", best->path.c_str(), msg.c_str());
    return 1;
  }
}

}  // namespace rlhf::cli
