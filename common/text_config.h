// Protobuf text-format configs (*.pbtxt) with errors that name the file, line and field.
//
// Every stage's config follows one shape: parse_text_config() records where each field was set
// (a ParseInfoTree), the stage's validate function checks values through a ConfigErrors, and every
// bad value reads "<file>:<line>: field '<name>': <what was expected>, got <value>".
//
// Errors: rlhf::Error in that shape, from parsing (syntax, unknown field, missing file) and from
// ConfigErrors::fail. Thread safety: the free functions may be called from any thread on
// different messages; a ConfigErrors is used from one thread at a time.
#pragma once

#include <google/protobuf/message.h>
#include <google/protobuf/text_format.h>

#include <string>
#include <utility>

namespace rlhf {

// Parses `path` into `msg` (merging over what it holds). Syntax errors and unknown fields throw
// rlhf::Error "<path>:<line>:<col>: <message>"; a field that a message lists as moved (its
// moved_field options, proto/config_options.proto; nested messages too) throws
// "<path>:<line>: field '<old>' of <Message> moved to '<replacement>'"; a missing file names the
// path. With `locations`, the line and column of every field set are recorded there (see
// ConfigErrors).
void parse_text_config_file(const std::string& path, google::protobuf::Message* msg,
                            google::protobuf::TextFormat::ParseInfoTree* locations = nullptr);

// Same from text; `source` stands for the file name in messages.
void parse_text_config(const std::string& text, const std::string& source,
                       google::protobuf::Message* msg,
                       google::protobuf::TextFormat::ParseInfoTree* locations = nullptr);

// Text format of a message (stable field order), e.g. for manifests and resolved configs.
std::string to_text_format(const google::protobuf::Message& msg);

// Sets every unset field that declares a default (proto2 `[default = ...]`) to that default,
// recursing into sub-messages that are present (absent ones stay absent: their presence can mean
// something, e.g. SftConfig.model). Fields without a declared default stay unset, so defaults that
// depend on other fields (resolved through has_x()) keep working. With recurse = false only the
// message's own scalar fields are filled. Used to write fully resolved configs.
void fill_defaults(google::protobuf::Message* msg, bool recurse = true);

// The one reporter of bad config values. `root` is the message field paths are relative to;
// `source` names the file (or what stands for it); `tree` (may be null) is the ParseInfoTree filled
// by parse_text_config for `root`. `root` and `tree` must outlive this object. Not thread-safe.
class ConfigErrors {
 public:
  ConfigErrors(const google::protobuf::Message& root, std::string source,
               const google::protobuf::TextFormat::ParseInfoTree* tree = nullptr);

  // Throws rlhf::Error "<source>:<line>: field '<path>': <expected>, got <got>", where `path` is
  // a dotted field path from the root ("lr", "lora.rank", "quickstart.max_operand") and <line> the
  // line where the (innermost) field was set; "<source>: field ..." when the field was not in the
  // file (a default, a command-line flag, a value the pipeline filled in).
  [[noreturn]] void fail(const std::string& path, const std::string& expected,
                         const std::string& got) const;

  // A reporter for the sub-message at `field` (a message field of the root): its paths are
  // prefixed with "<field>." and its lines looked up in that section of the file.
  ConfigErrors nested(const std::string& field) const;

  // 1-based line where `path` was set, 0 when unknown.
  int line_of(const std::string& path) const;

  const std::string& source() const { return source_; }

 private:
  ConfigErrors(const google::protobuf::Descriptor* descriptor, std::string source,
               std::string prefix, const google::protobuf::TextFormat::ParseInfoTree* tree);

  const google::protobuf::Descriptor* descriptor_;
  std::string source_;
  std::string prefix_;  // "" or "sft." etc.
  const google::protobuf::TextFormat::ParseInfoTree* tree_;
};

// Value formatting for ConfigErrors messages: numbers in shortest readable form ("0.1", "-3",
// "1e-05"), strings in double quotes.
std::string config_number(double v);
std::string config_quoted(const std::string& s);

// Every stage's config loader: parses `text` (`source` names it in messages) into an M and checks
// it with `validate(config, errors)`, where the errors know the line of every field.
template <typename M, typename Validate>
M parse_checked_config(const std::string& text, const std::string& source, Validate&& validate) {
  M config;
  google::protobuf::TextFormat::ParseInfoTree tree;
  parse_text_config(text, source, &config, &tree);
  std::forward<Validate>(validate)(config, ConfigErrors(config, source, &tree));
  return config;
}

// The same from a file; a missing file is "<path>: config file not found".
std::string read_config_file(const std::string& path);
template <typename M, typename Validate>
M load_checked_config(const std::string& path, Validate&& validate) {
  return parse_checked_config<M>(read_config_file(path), path, std::forward<Validate>(validate));
}

}  // namespace rlhf
