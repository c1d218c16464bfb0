#include "annotation/client.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <thread>

#include "annotation/frame.h"
#include "annotation/local_socket.h"
#include "common/error.h"

namespace rlhf::annotation {

namespace {

// Milliseconds left until `deadline` for poll(): -1 (wait for ever) without one, 0 once past it.
int poll_timeout_ms(const std::optional<Connection::Clock::time_point>& deadline) {
  if (!deadline) return -1;
  auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - Connection::Clock::now());
  return static_cast<int>(std::clamp<int64_t>(left.count(), 0, 1 << 30));
}

// connect() on a non-blocking socket, again while the listener's queue is full (EAGAIN: a Unix
// socket's connect would block there), until `deadline`. Returns 0 or an errno value.
int connect_before(int fd, const sockaddr_un& addr, Connection::Clock::time_point deadline) {
  for (;;) {
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) break;
    if (errno == EINTR) continue;
    if (errno != EAGAIN) return errno;
    if (Connection::Clock::now() >= deadline) return ETIMEDOUT;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  int flags = ::fcntl(fd, F_GETFL);
  return flags >= 0 && ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == 0 ? 0 : errno;
}

}  // namespace

Connection::Connection(const std::string& socket_path, std::optional<uid_t> server_uid,
                       std::optional<Clock::time_point> deadline)
    : deadline_(deadline) {
  std::signal(SIGPIPE, SIG_IGN);
  sockaddr_un addr{};
  if (socket_path.size() >= sizeof(addr.sun_path))
    throw Error("socket path " + socket_path + " is too long");
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (deadline ? SOCK_NONBLOCK : 0), 0);
  if (fd_ < 0) throw ConnectionLost(std::string("socket(): ") + std::strerror(errno));
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_path.c_str(), sizeof(addr.sun_path) - 1);
  int err = 0;
  if (deadline)
    err = connect_before(fd_, addr, *deadline);
  else if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    err = errno;
  if (err != 0) {
    ::close(fd_);
    fd_ = -1;
    if (err == ETIMEDOUT)
      throw DeadlineExceeded("cannot connect to " + socket_path +
                             ": its queue stayed full until the deadline (is the server hung?)");
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

void Connection::wait_ready(short events, const char* what) {
  if (!deadline_) return;  // the blocking call waits itself
  for (;;) {
    pollfd p{fd_, events, 0};
    int r = ::poll(&p, 1, poll_timeout_ms(deadline_));
    if (r > 0) return;
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw ConnectionLost(std::string("poll: ") + std::strerror(errno));
    throw DeadlineExceeded(std::string("the annotation server did not ") + what +
                           " before the deadline (is it hung?)");
  }
}

void Connection::send_bytes(const std::string& bytes) {
  size_t off = 0;
  const int flags = MSG_NOSIGNAL | (deadline_ ? MSG_DONTWAIT : 0);
  while (off < bytes.size()) {
    wait_ready(POLLOUT, "take the request");
    ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, flags);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
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
  const int flags = deadline_ ? MSG_DONTWAIT : 0;
  while (off < n) {
    wait_ready(POLLIN, "answer");
    ssize_t r = ::recv(fd_, p + off, n - off, flags);
    if (r == 0) throw ConnectionLost("the server closed the connection");
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
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

void AnnotationClient::connect_and_hello(std::optional<Connection::Clock::time_point> deadline) {
  conn_ = std::make_unique<Connection>(opts_.socket_path, opts_.server_uid, deadline);
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

proto::Response AnnotationClient::call(proto::Request request,
                                       std::optional<Connection::Clock::time_point> deadline) {
  using clock = Connection::Clock;
  if (!deadline && opts_.call_timeout_seconds > 0)
    deadline = clock::now() + std::chrono::duration_cast<clock::duration>(
                                  std::chrono::duration<double>(opts_.call_timeout_seconds));
  request.set_schema_version(1);
  clock::time_point first_failure{};
  bool failing = false;
  double backoff = 0.05;
  for (;;) {
    try {
      if (!conn_) connect_and_hello(deadline);
      conn_->set_deadline(deadline);
      proto::Response r = call_retrying_internal(request);
      if (r.has_error() && r.error().code() == proto::Error::SHUTTING_DOWN)
        throw ConnectionLost("server stopping");
      return r;
    } catch (const DeadlineExceeded&) {
      conn_.reset();  // out of step: a late answer must not be read as the next one's
      throw;
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
      if (deadline && now + std::chrono::duration<double>(backoff) >= *deadline)
        throw DeadlineExceeded("the annotation server at " + opts_.socket_path +
                               " did not answer before the deadline: " + e.what());
      std::this_thread::sleep_for(std::chrono::duration<double>(backoff));
      backoff = std::min(backoff * 2, 2.0);
      ++reconnects_;
    }
  }
}

}  // namespace rlhf::annotation
