#include "annotation/client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <thread>

#include "annotation/frame.h"
#include "annotation/local_socket.h"
#include "common/error.h"

namespace rlhf::annotation {

Connection::Connection(const std::string& socket_path, std::optional<uid_t> server_uid) {
  std::signal(SIGPIPE, SIG_IGN);
  sockaddr_un addr{};
  if (socket_path.size() >= sizeof(addr.sun_path))
    throw Error("socket path " + socket_path + " is too long");
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw ConnectionLost(std::string("socket(): ") + std::strerror(errno));
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_path.c_str(), sizeof(addr.sun_path) - 1);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int err = errno;
    ::close(fd_);
    fd_ = -1;
    throw ConnectionLost("cannot connect to " + socket_path + ": " + std::strerror(err));
  }
  try {
    check_server_user(socket_path, server_uid.value_or(::geteuid()));
  } catch (...) {
    ::close(fd_);
    fd_ = -1;
    throw;
  }
}

void Connection::check_server_user(const std::string& socket_path, uid_t expected) {
  PeerCredentials server = peer_credentials(fd_);
  if (server.uid == expected) return;
  throw WrongServerUser("refusing the server at " + socket_path + ": it runs as " +
                        describe_uid(server.uid) + " (pid " + std::to_string(server.pid) +
                        "), not as " + describe_uid(expected) +
                        "; nothing was sent. If that is the annotation server you mean, pass "
                        "--server-uid " +
                        std::to_string(server.uid));
}

Connection::~Connection() {
  if (fd_ >= 0) ::close(fd_);
}

Connection::Connection(Connection&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
Connection& Connection::operator=(Connection&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

void Connection::send_bytes(const std::string& bytes) {
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw ConnectionLost(std::string("send: ") + std::strerror(errno));
    }
    off += static_cast<size_t>(n);
  }
}

void Connection::send(const google::protobuf::MessageLite& message) {
  send_bytes(encode_frame(message));
}

void Connection::read_exact(char* p, size_t n) {
  size_t off = 0;
  while (off < n) {
    ssize_t r = ::recv(fd_, p + off, n - off, 0);
    if (r == 0) throw ConnectionLost("the server closed the connection");
    if (r < 0) {
      if (errno == EINTR) continue;
      throw ConnectionLost(std::string("recv: ") + std::strerror(errno));
    }
    off += static_cast<size_t>(r);
  }
}

proto::Response Connection::receive() {
  unsigned char h[4];
  read_exact(reinterpret_cast<char*>(h), 4);
  uint32_t len = (uint32_t{h[0]} << 24) | (uint32_t{h[1]} << 16) | (uint32_t{h[2]} << 8) | h[3];
  if (len > kMaxFrameBytes)
    throw Error("the server sent a frame of " + std::to_string(len) + " bytes (limit " +
                std::to_string(kMaxFrameBytes) + ")");
  std::string payload(len, '\0');
  if (len) read_exact(&payload[0], len);
  proto::Response r;
  if (!r.ParseFromString(payload)) throw Error("the server sent a frame that is not a Response");
  return r;
}

proto::Response Connection::call(const proto::Request& request) {
  send(request);
  return receive();
}

bool Connection::closed_by_peer(int timeout_ms) {
  pollfd p{fd_, POLLIN, 0};
  int r = ::poll(&p, 1, timeout_ms);
  if (r <= 0) return false;
  char c;
  ssize_t n = ::recv(fd_, &c, 1, MSG_PEEK);
  return n == 0 || (n < 0 && errno != EAGAIN);
}

AnnotationClient::AnnotationClient(ClientOptions options) : opts_(std::move(options)) {
  if (opts_.socket_path.empty()) opts_.socket_path = default_socket_path();
}

namespace {
bool is_internal(const proto::Response& r) {
  return r.has_error() && r.error().code() == proto::Error::INTERNAL;
}
}  // namespace

proto::Response AnnotationClient::call_retrying_internal(proto::Request& request) {
  double backoff = opts_.internal_backoff_seconds;
  for (int retry = 0;; ++retry) {
    request.set_request_id(next_id_++);
    proto::Response r = conn_->call(request);
    if (!is_internal(r) || retry >= opts_.internal_retries) return r;
    ++internal_retries_;
    std::this_thread::sleep_for(std::chrono::duration<double>(backoff));
    backoff *= 2;
  }
}

void AnnotationClient::connect_and_hello() {
  conn_ = std::make_unique<Connection>(opts_.socket_path, opts_.server_uid);
  proto::Request req;
  req.set_schema_version(1);
  req.mutable_hello()->set_token(opts_.token);
  req.mutable_hello()->set_client(opts_.client_name);
  proto::Response r = call_retrying_internal(req);
  if (r.has_error()) {
    conn_.reset();
    if (r.error().code() == proto::Error::SHUTTING_DOWN) throw ConnectionLost("server stopping");
    throw Error("server refused the session: " + r.error().message());
  }
  annotator_ = r.hello().annotator();
  lease_seconds_ = r.hello().lease_seconds();
}

proto::Response AnnotationClient::call(proto::Request request) {
  using clock = std::chrono::steady_clock;
  request.set_schema_version(1);
  clock::time_point first_failure{};
  bool failing = false;
  double backoff = 0.05;
  for (;;) {
    try {
      if (!conn_) connect_and_hello();
      proto::Response r = call_retrying_internal(request);
      if (r.has_error() && r.error().code() == proto::Error::SHUTTING_DOWN)
        throw ConnectionLost("server stopping");
      return r;
    } catch (const ConnectionLost& e) {
      conn_.reset();
      auto now = clock::now();
      if (!failing) {
        failing = true;
        first_failure = now;
      }
      double waited = std::chrono::duration<double>(now - first_failure).count();
      if (waited >= opts_.retry_seconds)
        throw Error("lost the annotation server at " + opts_.socket_path + " for " +
                    std::to_string(static_cast<int>(waited)) + " s: " + e.what());
      std::this_thread::sleep_for(std::chrono::duration<double>(backoff));
      backoff = std::min(backoff * 2, 2.0);
      ++reconnects_;
    }
  }
}

}  // namespace rlhf::annotation
