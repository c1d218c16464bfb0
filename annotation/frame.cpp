#include "annotation/frame.h"

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

bool decode_request(const std::string& payload, proto::Request* request, std::string* error) {
  if (!request->ParseFromString(payload)) {
    *error = "the frame's " + std::to_string(payload.size()) +
             " bytes are not a valid rlhf.proto.Request";
    return false;
  }
  if (request->body_case() == proto::Request::BODY_NOT_SET) {
    *error = "the Request has no body (expected hello, get_task, submit, undo or get_progress)";
    return false;
  }
  return true;
}

}  // namespace rlhf::annotation
