#include "common/text_config.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <sstream>
#include <vector>

#include "common/error.h"
#include "common/files.h"
#include "proto/config_options.pb.h"

namespace rlhf {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;
using ParseInfoTree = google::protobuf::TextFormat::ParseInfoTree;

// For the parser's unknown-field error ("Message type \"rlhf.proto.SftConfig\" has no field
// named \"lr\"."): "field 'lr' of SftConfig moved to 'optimizer { lr }'" when the message lists
// the field in its moved_field options (proto/config_options.proto), else "".
std::string moved_field_error(const std::string& message) {
  const std::string type_open = "Message type \"", field_open = "\" has no field named \"";
  if (message.rfind(type_open, 0) != 0) return "";
  const size_t type_end = message.find(field_open);
  if (type_end == std::string::npos) return "";
  const size_t name_begin = type_end + field_open.size();
  const size_t name_end = message.find('"', name_begin);
  if (name_end == std::string::npos) return "";
  const std::string type = message.substr(type_open.size(), type_end - type_open.size());
  const std::string name = message.substr(name_begin, name_end - name_begin);
  const Descriptor* d =
      google::protobuf::DescriptorPool::generated_pool()->FindMessageTypeByName(type);
  if (!d) return "";
  const auto& options = d->options();
  for (int i = 0; i < options.ExtensionSize(proto::moved_field); ++i) {
    const proto::MovedField& moved = options.GetExtension(proto::moved_field, i);
    if (moved.name() == name)
      return "field '" + name + "' of " + d->name() + " moved to '" + moved.replacement() + "'";
  }
  return "";
}

// Syntax errors of the text-format parser: keeps the first, as "<source>:<line>:<col>: <msg>";
// a field that moved reads "<source>:<line>: field '<old>' of <Message> moved to '<new>'".
class SyntaxErrors : public google::protobuf::io::ErrorCollector {
 public:
  explicit SyntaxErrors(std::string source) : source_(std::move(source)) {}
  void AddError(int line, int column, const std::string& message) override {
    if (!first_.empty()) return;
    if (const std::string moved = moved_field_error(message); !moved.empty())
      first_ = source_ + ":" + std::to_string(line + 1) + ": " + moved;
    else
      first_ = source_ + ":" + std::to_string(line + 1) + ":" + std::to_string(column + 1) + ": " +
               message;
  }
  void AddWarning(int, int, const std::string&) override {}
  const std::string& first() const { return first_; }

 private:
  std::string source_, first_;
};

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    parts.push_back(path.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return parts;
}

}  // namespace

void parse_text_config(const std::string& text, const std::string& source, Message* msg,
                       ParseInfoTree* locations) {
  google::protobuf::TextFormat::Parser parser;
  SyntaxErrors errors(source);
  parser.RecordErrorsTo(&errors);
  if (locations) parser.WriteLocationsTo(locations);
  if (!parser.MergeFromString(text, msg))
    throw Error(errors.first().empty() ? source + ": parse error" : errors.first());
}

void parse_text_config_file(const std::string& path, Message* msg, ParseInfoTree* locations) {
  if (!file_exists(path)) throw Error(path + ": config file not found");
  parse_text_config(read_file(path), path, msg, locations);
}

std::string to_text_format(const Message& msg) {
  std::string out;
  google::protobuf::TextFormat::Printer printer;
  printer.PrintToString(msg, &out);
  return out;
}

void fill_defaults(Message* msg, bool recurse) {
  const Descriptor* d = msg->GetDescriptor();
  const Reflection* r = msg->GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      if (!recurse) continue;
      if (f->is_repeated()) {
        for (int k = 0; k < r->FieldSize(*msg, f); ++k)
          fill_defaults(r->MutableRepeatedMessage(msg, f, k), true);
      } else if (r->HasField(*msg, f)) {
        fill_defaults(r->MutableMessage(msg, f), true);
      }
      continue;
    }
    if (f->is_repeated() || !f->has_default_value() || r->HasField(*msg, f)) continue;
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
        r->SetInt32(msg, f, f->default_value_int32());
        break;
      case FieldDescriptor::CPPTYPE_INT64:
        r->SetInt64(msg, f, f->default_value_int64());
        break;
      case FieldDescriptor::CPPTYPE_UINT32:
        r->SetUInt32(msg, f, f->default_value_uint32());
        break;
      case FieldDescriptor::CPPTYPE_UINT64:
        r->SetUInt64(msg, f, f->default_value_uint64());
        break;
      case FieldDescriptor::CPPTYPE_FLOAT:
        r->SetFloat(msg, f, f->default_value_float());
        break;
      case FieldDescriptor::CPPTYPE_DOUBLE:
        r->SetDouble(msg, f, f->default_value_double());
        break;
      case FieldDescriptor::CPPTYPE_BOOL:
        r->SetBool(msg, f, f->default_value_bool());
        break;
      case FieldDescriptor::CPPTYPE_STRING:
        r->SetString(msg, f, f->default_value_string());
        break;
      case FieldDescriptor::CPPTYPE_ENUM:
        r->SetEnum(msg, f, f->default_value_enum());
        break;
      default:
        break;
    }
  }
}

// ---- ConfigErrors -------------------------------------------------------------------------------

ConfigErrors::ConfigErrors(const Message& root, std::string source, const ParseInfoTree* tree)
    : ConfigErrors(root.GetDescriptor(), std::move(source), "", tree) {}

ConfigErrors::ConfigErrors(const Descriptor* descriptor, std::string source, std::string prefix,
                           const ParseInfoTree* tree)
    : descriptor_(descriptor),
      source_(std::move(source)),
      prefix_(std::move(prefix)),
      tree_(tree) {}

int ConfigErrors::line_of(const std::string& path) const {
  const ParseInfoTree* tree = tree_;
  const Descriptor* d = descriptor_;
  const auto parts = split_path(path);
  for (size_t i = 0; tree && d && i < parts.size(); ++i) {
    const FieldDescriptor* f = d->FindFieldByName(parts[i]);
    if (!f) return 0;
    const int index = f->is_repeated() ? 0 : -1;
    if (i + 1 == parts.size()) {
      const auto loc = tree->GetLocation(f, index);
      return loc.line >= 0 ? loc.line + 1 : 0;
    }
    if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) return 0;
    tree = tree->GetTreeForNested(f, index);
    d = f->message_type();
  }
  return 0;
}

void ConfigErrors::fail(const std::string& path, const std::string& expected,
                        const std::string& got) const {
  const int line = line_of(path);
  std::string where = source_;
  if (line > 0) where += ":" + std::to_string(line);
  throw Error(where + ": field '" + prefix_ + path + "': " + expected + ", got " + got);
}

ConfigErrors ConfigErrors::nested(const std::string& field) const {
  const FieldDescriptor* f = descriptor_->FindFieldByName(field);
  if (!f || f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE || f->is_repeated())
    throw Error("ConfigErrors::nested: '" + field + "' is not a message field of " +
                descriptor_->full_name());
  const ParseInfoTree* sub = tree_ ? tree_->GetTreeForNested(f, -1) : nullptr;
  return ConfigErrors(f->message_type(), source_, prefix_ + field + ".", sub);
}

std::string config_number(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

std::string config_quoted(const std::string& s) { return "\"" + s + "\""; }

std::string read_config_file(const std::string& path) {
  if (!file_exists(path)) throw Error(path + ": config file not found");
  return read_file(path);
}

}  // namespace rlhf
