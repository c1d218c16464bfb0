// AnnotationClient sends a request answered INTERNAL ("nothing of this request was stored, send it
// again") again, a bounded number of times. The server here is scripted (a real Unix socket and
// real frames, answers taken from a list), because a real store cannot be made to fail exactly
// twice and then succeed.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <deque>
#include <thread>

#include "annotation/client.h"
#include "annotation/frame.h"
#include "common/error.h"
#include "tests/test_support.h"

namespace ann = rlhf::annotation;
namespace pb = rlhf::proto;
using rlhf::testing::TempDir;

namespace {

pb::Response internal_error() {
  pb::Response r;
  r.mutable_error()->set_code(pb::Error::INTERNAL);
  r.mutable_error()->set_message(
      "the batch's transaction was rolled back (database or disk is full); nothing of this "
      "request was stored, send it again");
  return r;
}

pb::Response hello_ok() {
  pb::Response r;
  r.mutable_hello()->set_annotator("ann0");
  r.mutable_hello()->set_lease_seconds(600);
  return r;
}

pb::Response progress_ok() {
  pb::Response r;
  r.mutable_progress()->set_done(7);
  return r;
}

bool read_exact(int fd, char* p, size_t n) {
  while (n > 0) {
    ssize_t got = ::read(fd, p, n);
    if (got <= 0) return false;
    p += got;
    n -= static_cast<size_t>(got);
  }
  return true;
}

// Accepts one connection and answers each request with the next scripted response, until the
// script is used up or the client goes away. Records the request kinds it got.
class ScriptedServer {
 public:
  ScriptedServer(const std::string& path, std::deque<pb::Response> script)
      : script_(std::move(script)) {
    listener_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    if (::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::listen(listener_, 4) != 0)
      throw std::runtime_error("cannot listen on " + path + ": " + std::strerror(errno));
    thread_ = std::thread([this] { serve(); });
  }
  ~ScriptedServer() {
    ::shutdown(listener_, SHUT_RDWR);
    thread_.join();
    ::close(listener_);
  }
  std::vector<pb::Request::BodyCase> received() {
    thread_.join();
    thread_ = std::thread([] {});
    return received_;
  }

 private:
  void serve() {
    int fd = ::accept(listener_, nullptr, nullptr);
    if (fd < 0) return;
    while (!script_.empty()) {
      char header[4];
      if (!read_exact(fd, header, 4)) break;
      uint32_t n = (static_cast<uint32_t>(static_cast<unsigned char>(header[0])) << 24) |
                   (static_cast<uint32_t>(static_cast<unsigned char>(header[1])) << 16) |
                   (static_cast<uint32_t>(static_cast<unsigned char>(header[2])) << 8) |
                   static_cast<uint32_t>(static_cast<unsigned char>(header[3]));
      std::string payload(n, '\0');
      if (!read_exact(fd, payload.data(), n)) break;
      pb::Request request;
      request.ParseFromString(payload);
      received_.push_back(request.body_case());
      pb::Response response = script_.front();
      script_.pop_front();
      response.set_request_id(request.request_id());
      std::string frame = ann::encode_frame(response);
      if (::write(fd, frame.data(), frame.size()) != static_cast<ssize_t>(frame.size())) break;
    }
    ::close(fd);
  }

  int listener_ = -1;
  std::deque<pb::Response> script_;
  std::vector<pb::Request::BodyCase> received_;
  std::thread thread_;
};

ann::ClientOptions options(const std::string& socket) {
  ann::ClientOptions o;
  o.socket_path = socket;
  o.token = "token";
  o.retry_seconds = 1;
  o.internal_backoff_seconds = 0.01;
  return o;
}

pb::Request get_progress() {
  pb::Request r;
  r.mutable_get_progress();
  return r;
}

}  // namespace

TEST(ClientRetry, HelloAndARequestAnsweredInternalAreSentAgain) {
  TempDir dir("retry");
  const std::string socket = dir.path() + "/s.sock";
  ScriptedServer server(
      socket, {internal_error(), internal_error(), hello_ok(), internal_error(), progress_ok()});
  ann::AnnotationClient client(options(socket));
  pb::Response r = client.call(get_progress());
  ASSERT_TRUE(r.has_progress()) << r.DebugString();
  EXPECT_EQ(r.progress().done(), 7);
  EXPECT_EQ(client.annotator(), "ann0");
  EXPECT_EQ(client.internal_retries(), 3);
  const std::vector<pb::Request::BodyCase> expected = {
      pb::Request::kHello, pb::Request::kHello, pb::Request::kHello, pb::Request::kGetProgress,
      pb::Request::kGetProgress};
  EXPECT_EQ(server.received(), expected);
}

TEST(ClientRetry, RetriesAreBoundedThenTheInternalAnswerIsReturned) {
  TempDir dir("retry");
  const std::string socket = dir.path() + "/s.sock";
  ScriptedServer server(socket, {hello_ok(), internal_error(), internal_error(), internal_error(),
                                 internal_error(), progress_ok()});
  ann::ClientOptions o = options(socket);
  o.internal_retries = 3;
  ann::AnnotationClient client(o);
  pb::Response r = client.call(get_progress());
  ASSERT_TRUE(r.has_error()) << r.DebugString();
  EXPECT_EQ(r.error().code(), pb::Error::INTERNAL);
  EXPECT_EQ(client.internal_retries(), 3);
}

TEST(ClientRetry, AHelloStillFailingAfterTheRetriesIsAnError) {
  TempDir dir("retry");
  const std::string socket = dir.path() + "/s.sock";
  ScriptedServer server(socket, {internal_error(), internal_error(), internal_error()});
  ann::ClientOptions o = options(socket);
  o.internal_retries = 2;
  ann::AnnotationClient client(o);
  try {
    client.call(get_progress());
    FAIL() << "expected an error";
  } catch (const rlhf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("send it again"), std::string::npos) << e.what();
  }
  EXPECT_EQ(client.internal_retries(), 2);
}
