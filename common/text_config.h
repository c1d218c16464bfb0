// Protobuf text-format configs (*.pbtxt) with errors that name the file, line and field.
#pragma once

#include <google/protobuf/message.h>
#include <google/protobuf/text_format.h>

#include <string>

namespace rlhf {

// Parses `path` into `msg` (merging over what it holds). Syntax errors and unknown fields throw
// rlhf::Error "<path>:<line>:<col>: <message>"; a missing file names the path.
void parse_text_config_file(const std::string& path, google::protobuf::Message* msg);

// Same from text; `source` stands for the file name in messages. With `locations`, the line and
// column of every field set are recorded there, so later value checks can name the line.
void parse_text_config(const std::string& text, const std::string& source,
                       google::protobuf::Message* msg,
                       google::protobuf::TextFormat::ParseInfoTree* locations = nullptr);

// Text format of a message (stable field order), e.g. for manifests and resolved configs.
std::string to_text_format(const google::protobuf::Message& msg);

}  // namespace rlhf
