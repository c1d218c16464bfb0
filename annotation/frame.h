// Wire framing: a 4-byte big-endian payload length, then the payload (one serialized Request or
// Response from proto/annotation.proto). Frames longer than the limit are refused.
//
// Thread safety: the free functions may be called from any thread at once (decode_request
// captures protobuf's log per thread); a FrameDecoder is used from one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "proto/annotation.pb.h"

namespace rlhf::annotation {

// Largest accepted payload (1 MiB). A prompt with 26 long answers fits easily.
constexpr uint32_t kMaxFrameBytes = 1u << 20;

// Header + payload. Throws rlhf::Error when the message is larger than kMaxFrameBytes or does not
// serialize.
std::string encode_frame(const google::protobuf::MessageLite& message);

// Incremental decoder for a byte stream: feed() what arrived, then take frames with next().
// Never throws on bad input; it reports it. Not thread-safe (one per connection).
class FrameDecoder {
 public:
  enum class Status {
    kNeedMore,  // no complete frame buffered yet
    kFrame,     // *payload holds the next frame's payload
    kTooLarge,  // the next frame's declared length exceeds the limit; the stream is unusable
  };
  explicit FrameDecoder(uint32_t max_frame_bytes = kMaxFrameBytes) : max_(max_frame_bytes) {}

  void feed(const char* data, size_t n);
  Status next(std::string* payload);
  // Bytes buffered but not yet returned as frames (a truncated frame at EOF leaves some here).
  size_t buffered() const { return buf_.size() - pos_; }
  // Declared length of the frame that made next() return kTooLarge.
  uint32_t declared_length() const { return declared_; }

 private:
  uint32_t max_;
  uint32_t declared_ = 0;
  std::string buf_;
  size_t pos_ = 0;
};

// Parses a Request payload. Never throws: on failure returns false and sets *error to a message.
// What protobuf would log about the payload (e.g. "String field 'rlhf.proto.Hello.token' contains
// invalid UTF-8 data") goes into *error instead of stderr, so a client sending bad strings cannot
// make the server log a line per frame. (The first call routes protobuf's log through a handler
// that captures messages during decode_request and passes any other message to the previous one.)
bool decode_request(const std::string& payload, proto::Request* request, std::string* error);

// Upper bound on the payload bytes of a Response carrying this prompt and these answers as a
// Task (GetTask's answer or SubmitOk.next_task, with the widest task id). The server never sends
// (leases) a task whose bound exceeds kMaxFrameBytes; add-tasks and import refuse one.
size_t task_reply_bytes(const std::string& prompt, const std::vector<std::string>& answers);

}  // namespace rlhf::annotation
