// libFuzzer target: arbitrary bytes through the server's frame decoder and Request parser, fed in
// arbitrary chunk sizes. Must never crash, hang or read out of bounds.
#include <cstddef>
#include <cstdint>
#include <string>

#include "annotation/frame.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  rlhf::annotation::FrameDecoder decoder(4096);
  size_t pos = 0;
  // The first byte picks the chunk size, so split frames are exercised too.
  size_t chunk = size ? (data[0] % 17) + 1 : 1;
  while (pos < size) {
    size_t n = std::min(chunk, size - pos);
    decoder.feed(reinterpret_cast<const char*>(data) + pos, n);
    pos += n;
    std::string payload;
    for (;;) {
      auto st = decoder.next(&payload);
      if (st != rlhf::annotation::FrameDecoder::Status::kFrame) break;
      rlhf::proto::Request request;
      std::string why;
      rlhf::annotation::decode_request(payload, &request, &why);
    }
  }
  return 0;
}
