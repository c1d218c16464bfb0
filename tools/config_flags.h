// Flags that override fields of a command's config message, set through protobuf reflection.
//
// A command that reads a config message (SftConfig, RewardTrainConfig, PpoConfig) declares one
// table of ConfigFlag entries {flag, field path, help} (tools/cli.h) and registers it with the
// command: dispatch() parses those flags beside the command's other flags, `--help` lists them
// with the field each one sets, and the command calls apply_config_flags() once on the config it
// loaded. Field paths are dotted ("lora.rank"); the last field must be a singular scalar: int32,
// int64, uint32, uint64 (and their sint/fixed forms), float, double, bool, string or enum (by
// value name). Repeated fields are refused: no command overrides one.
//
// Values parse as the field's type: integers in base 10 and in the field's range, floats as
// std::stod reads them (a float field gets the double rounded to float), bools as a switch or as
// true/false, 1/0, yes/no, on/off; strings are taken as given, the empty string included.
//
// Ownership: nothing keeps a pointer past the call; tables are static data of their command file.
// Thread safety: every function only reads its table and the immutable protobuf descriptors;
// apply_config_flags and set_config_field write *config, which the caller must not share meanwhile.
// Errors: rlhf::UsageError (exit code 2) for a value that does not parse as the field's type,
// naming the flag, the value and the expected type; rlhf::Error for a table entry whose path names
// no field of the message, passes through a field that is not a singular message, or ends at a
// message or repeated field, naming the flag, the path and the message type.
#pragma once

#include <string>
#include <vector>

#include "tools/cli.h"

namespace google::protobuf {
class FieldDescriptor;
class Message;
}  // namespace google::protobuf

namespace rlhf::cli {

// The fields `entry.field_path` walks through in `message`: the singular message fields that lead
// to the field it sets, then that field (last). Throws rlhf::Error as described above.
std::vector<const google::protobuf::FieldDescriptor*> resolve_field_path(
    const google::protobuf::Descriptor& message, const ConfigFlag& entry);

// One FlagSpec per entry of `table`, in table order, for the parser and --help: a switch for a
// bool field, a flag that takes a value otherwise; help is entry.help + " (overrides <path>)".
// Resolves every entry, so a table with a typo fails here (rlhf::Error).
std::vector<FlagSpec> config_flag_specs(const ConfigFlags& table);

// Sets the field `entry` names in *config from the text `value` (creating the messages on its
// path). Throws rlhf::UsageError for a value of the wrong type, rlhf::Error for a bad path.
void set_config_field(google::protobuf::Message* config, const ConfigFlag& entry,
                      const std::string& value);

// For every flag of `table` that `args` holds (given on the command line), sets the field it
// names in *config; flags not given leave their fields as they are. Throws rlhf::Error when
// *config is not of the table's message type, and as set_config_field.
void apply_config_flags(const ConfigFlags& table, const Args& args,
                        google::protobuf::Message* config);

}  // namespace rlhf::cli
