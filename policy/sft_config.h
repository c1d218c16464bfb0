// Loading and checking the SFT config (proto::SftConfig, protobuf text format).
#pragma once

#include <string>

#include "proto/sft.pb.h"

namespace rlhf::policy {

// Parses a .pbtxt file: syntax errors and unknown fields throw "<path>:<line>:<col>: <message>",
// bad values "<path>:<line>: field '<name>': <what>".
proto::SftConfig load_sft_config(const std::string& path);
proto::SftConfig parse_sft_config(const std::string& text, const std::string& source);
// Throws "<source>: field '<name>': <what>" for out-of-range values.
void validate_sft_config(const proto::SftConfig& config, const std::string& source);
// Fills documented defaults into fields left 0 / "" (see proto/sft.proto).
void apply_sft_defaults(proto::SftConfig* config);

}  // namespace rlhf::policy
