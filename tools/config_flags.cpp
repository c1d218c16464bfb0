#include "tools/config_flags.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <limits>

#include "common/error.h"

namespace rlhf::cli {

namespace pb = google::protobuf;

namespace {

[[noreturn]] void bad_entry(const pb::Descriptor& message, const ConfigFlag& entry,
                            const std::string& why) {
  throw Error("config flag --" + std::string(entry.flag) + ": field path '" + entry.field_path +
              "' of " + message.full_name() + ": " + why);
}

[[noreturn]] void bad_value(const ConfigFlag& entry, const std::string& value,
                            const std::string& expected) {
  throw UsageError("--" + std::string(entry.flag) + ": expected " + expected + ", got '" + value +
                   "'");
}

// Base-10 integer in [lo, hi]; the whole text must be the number (as Args::get_int reads it).
int64_t parse_signed(const ConfigFlag& entry, const std::string& v, int64_t lo, int64_t hi,
                     const char* type) {
  errno = 0;
  char* end = nullptr;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (end == v.c_str() || *end != '\0' || errno == ERANGE || x < lo || x > hi)
    bad_value(entry, v, std::string("an integer (") + type + ")");
  return x;
}

uint64_t parse_unsigned(const ConfigFlag& entry, const std::string& v, uint64_t hi,
                        const char* type) {
  const std::string expected = std::string("a non-negative integer (") + type + ")";
  if (v.empty() || !std::isdigit(static_cast<unsigned char>(v[0]))) bad_value(entry, v, expected);
  errno = 0;
  char* end = nullptr;
  const unsigned long long x = std::strtoull(v.c_str(), &end, 10);
  if (*end != '\0' || errno == ERANGE || x > hi) bad_value(entry, v, expected);
  return x;
}

// As Args::get_double: std::stod, the whole text.
double parse_double(const ConfigFlag& entry, const std::string& v, const char* type) {
  try {
    size_t pos = 0;
    const double x = std::stod(v, &pos);
    if (pos == v.size()) return x;
  } catch (const std::exception&) {
  }
  bad_value(entry, v, std::string("a number (") + type + ")");
}

bool parse_bool(const ConfigFlag& entry, const std::string& v) {
  if (v == "true" || v == "1" || v == "yes" || v == "on") return true;
  if (v == "false" || v == "0" || v == "no" || v == "off") return false;
  bad_value(entry, v, "true or false (bool)");
}

void set_enum(pb::Message* m, const pb::FieldDescriptor* f, const ConfigFlag& entry,
              const std::string& v) {
  const pb::EnumValueDescriptor* e = f->enum_type()->FindValueByName(v);
  if (!e) {
    std::string names;
    for (int i = 0; i < f->enum_type()->value_count(); ++i)
      names += (i ? ", " : "") + f->enum_type()->value(i)->name();
    bad_value(entry, v, "one of " + names + " (" + f->enum_type()->full_name() + ")");
  }
  m->GetReflection()->SetEnum(m, f, e);
}

// Sets the scalar field f of *m from text.
void set_scalar(pb::Message* m, const pb::FieldDescriptor* f, const ConfigFlag& entry,
                const std::string& v) {
  const pb::Reflection* r = m->GetReflection();
  using L = std::numeric_limits<int32_t>;
  using FD = pb::FieldDescriptor;
  switch (f->cpp_type()) {
    case FD::CPPTYPE_INT32:
      return r->SetInt32(m, f,
                         static_cast<int32_t>(parse_signed(entry, v, L::min(), L::max(), "int32")));
    case FD::CPPTYPE_INT64:
      return r->SetInt64(m, f,
                         parse_signed(entry, v, std::numeric_limits<int64_t>::min(),
                                      std::numeric_limits<int64_t>::max(), "int64"));
    case FD::CPPTYPE_UINT32:
      return r->SetUInt32(m, f,
                          static_cast<uint32_t>(parse_unsigned(
                              entry, v, std::numeric_limits<uint32_t>::max(), "uint32")));
    case FD::CPPTYPE_UINT64:
      return r->SetUInt64(m, f,
                          parse_unsigned(entry, v, std::numeric_limits<uint64_t>::max(), "uint64"));
    case FD::CPPTYPE_FLOAT:
      return r->SetFloat(m, f, static_cast<float>(parse_double(entry, v, "float")));
    case FD::CPPTYPE_DOUBLE:
      return r->SetDouble(m, f, parse_double(entry, v, "double"));
    case FD::CPPTYPE_BOOL:
      return r->SetBool(m, f, parse_bool(entry, v));
    case FD::CPPTYPE_STRING:
      return r->SetString(m, f, v);
    case FD::CPPTYPE_ENUM:
      return set_enum(m, f, entry, v);
    case FD::CPPTYPE_MESSAGE:
      break;  // refused by resolve_field_path
  }
  bad_entry(*m->GetDescriptor(), entry, "not a scalar field");
}

}  // namespace

std::vector<const pb::FieldDescriptor*> resolve_field_path(const pb::Descriptor& message,
                                                           const ConfigFlag& entry) {
  std::vector<const pb::FieldDescriptor*> path;
  const pb::Descriptor* at = &message;
  const std::string text = entry.field_path;
  size_t start = 0;
  while (true) {
    const size_t dot = text.find('.', start);
    const std::string name = text.substr(start, dot == std::string::npos ? dot : dot - start);
    if (!at) bad_entry(message, entry, "'" + path.back()->name() + "' is not a message");
    const pb::FieldDescriptor* f = at->FindFieldByName(name);
    if (!f) bad_entry(message, entry, at->full_name() + " has no field '" + name + "'");
    if (f->is_repeated()) bad_entry(message, entry, "'" + name + "' is repeated (not supported)");
    path.push_back(f);
    at = f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE ? f->message_type() : nullptr;
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  if (at) bad_entry(message, entry, "'" + path.back()->name() + "' is a message, not a value");
  return path;
}

std::vector<FlagSpec> config_flag_specs(const ConfigFlags& table) {
  std::vector<FlagSpec> specs;
  if (table.flags.empty()) return specs;
  if (!table.message) throw Error("config flags without a message type");
  const pb::Descriptor& message = *table.message();
  for (const ConfigFlag& entry : table.flags) {
    const bool is_bool =
        resolve_field_path(message, entry).back()->cpp_type() == pb::FieldDescriptor::CPPTYPE_BOOL;
    specs.emplace_back(
        entry.flag, std::string(entry.help) + " (overrides " + entry.field_path + ")", "", is_bool);
  }
  return specs;
}

void set_config_field(pb::Message* config, const ConfigFlag& entry, const std::string& value) {
  const auto path = resolve_field_path(*config->GetDescriptor(), entry);
  pb::Message* m = config;
  for (size_t i = 0; i + 1 < path.size(); ++i) m = m->GetReflection()->MutableMessage(m, path[i]);
  set_scalar(m, path.back(), entry, value);
}

void apply_config_flags(const ConfigFlags& table, const Args& args, pb::Message* config) {
  if (!table.flags.empty() && (!table.message || table.message() != config->GetDescriptor()))
    throw Error("config flags for " +
                (table.message ? table.message()->full_name() : std::string("no message")) +
                " applied to a " + config->GetDescriptor()->full_name());
  for (const ConfigFlag& entry : table.flags)
    if (auto value = args.get_opt(entry.flag)) set_config_field(config, entry, *value);
}

}  // namespace rlhf::cli
