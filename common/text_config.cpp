#include "common/text_config.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include "common/error.h"
#include "common/files.h"

namespace rlhf {
namespace {

class Collector : public google::protobuf::io::ErrorCollector {
 public:
  explicit Collector(std::string source) : source_(std::move(source)) {}
  void AddError(int line, int column, const std::string& message) override {
    if (first_.empty())
      first_ = source_ + ":" + std::to_string(line + 1) + ":" + std::to_string(column + 1) + ": " +
               message;
  }
  void AddWarning(int, int, const std::string&) override {}
  const std::string& first() const { return first_; }

 private:
  std::string source_, first_;
};

}  // namespace

void parse_text_config(const std::string& text, const std::string& source,
                       google::protobuf::Message* msg,
                       google::protobuf::TextFormat::ParseInfoTree* locations) {
  google::protobuf::TextFormat::Parser parser;
  Collector collector(source);
  parser.RecordErrorsTo(&collector);
  if (locations) parser.WriteLocationsTo(locations);
  if (!parser.MergeFromString(text, msg))
    throw Error(collector.first().empty() ? source + ":parse error" : collector.first());
}

void parse_text_config_file(const std::string& path, google::protobuf::Message* msg) {
  if (!file_exists(path)) throw Error(path + ": config file not found");
  parse_text_config(read_file(path), path, msg);
}

std::string to_text_format(const google::protobuf::Message& msg) {
  std::string out;
  google::protobuf::TextFormat::Printer printer;
  printer.PrintToString(msg, &out);
  return out;
}

}  // namespace rlhf
