#include "annotation/frame.h"

#include <google/protobuf/stubs/logging.h>

#include <limits>
#include <mutex>

#include "common/error.h"

namespace rlhf::annotation {

std::string encode_frame(const google::protobuf::MessageLite& message) {
  size_t n = message.ByteSizeLong();
  if (n > kMaxFrameBytes)
    throw Error("message of " + std::to_string(n) + " bytes exceeds the frame limit of " +
                std::to_string(kMaxFrameBytes) + " bytes");
  std::string out(4 + n, '\0');
  out[0] = static_cast<char>((n >> 24) & 0xff);
  out[1] = static_cast<char>((n >> 16) & 0xff);
  out[2] = static_cast<char>((n >> 8) & 0xff);
  out[3] = static_cast<char>(n & 0xff);
  if (n > 0 && !message.SerializeToArray(&out[4], static_cast<int>(n)))
    throw Error("could not serialize a " + message.GetTypeName());
  return out;
}

void FrameDecoder::feed(const char* data, size_t n) {
  if (pos_ > 0 && pos_ >= buf_.size() / 2) {  // compact consumed bytes
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  buf_.append(data, n);
}

FrameDecoder::Status FrameDecoder::next(std::string* payload) {
  size_t avail = buf_.size() - pos_;
  if (avail < 4) return Status::kNeedMore;
  const auto* p = reinterpret_cast<const unsigned char*>(buf_.data() + pos_);
  uint32_t len = (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
  if (len > max_) {
    declared_ = len;
    return Status::kTooLarge;
  }
  if (avail - 4 < len) return Status::kNeedMore;
  payload->assign(buf_.data() + pos_ + 4, len);
  pos_ += 4 + len;
  return Status::kFrame;
}

namespace {

thread_local std::string* g_captured_log = nullptr;  // set while decode_request parses
google::protobuf::LogHandler* g_previous_log_handler = nullptr;

void route_protobuf_log(google::protobuf::LogLevel level, const char* file, int line,
                        const std::string& message) {
  if (g_captured_log && level < google::protobuf::LOGLEVEL_FATAL) {
    if (g_captured_log->empty()) *g_captured_log = message;  // the first problem is enough
    return;
  }
  if (g_previous_log_handler) g_previous_log_handler(level, file, line, message);
}

void route_protobuf_log_once() {
  static std::once_flag once;
  std::call_once(
      once, [] { g_previous_log_handler = google::protobuf::SetLogHandler(&route_protobuf_log); });
}

}  // namespace

bool decode_request(const std::string& payload, proto::Request* request, std::string* error) {
  route_protobuf_log_once();
  std::string log;
  g_captured_log = &log;
  const bool parsed = request->ParseFromString(payload);
  g_captured_log = nullptr;
  if (!parsed) {
    *error = "the frame's " + std::to_string(payload.size()) +
             " bytes are not a valid rlhf.proto.Request" + (log.empty() ? "" : ": " + log);
    return false;
  }
  if (request->body_case() == proto::Request::BODY_NOT_SET) {
    *error = "the Request has no body (expected hello, get_task, submit, undo or get_progress)";
    return false;
  }
  return true;
}

}  // namespace rlhf::annotation

namespace rlhf::annotation {

size_t task_reply_bytes(const std::string& prompt, const std::vector<std::string>& answers) {
  proto::Task t;
  t.set_task_id(std::numeric_limits<int64_t>::max());
  t.set_prompt(prompt);
  for (const auto& a : answers) t.add_answers(a);
  t.set_lease_seconds_left(1.0);
  constexpr size_t kEnvelope = 64;  // the Response around it (oneof, SubmitOk.next_task, ids)
  return t.ByteSizeLong() + kEnvelope;
}

}  // namespace rlhf::annotation
