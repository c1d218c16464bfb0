// Client side of the annotation protocol: a blocking connection, and a session that
// authenticates, reconnects and retries.
//
// Thread safety: none. A Connection or an AnnotationClient (which owns its Connection) is used
// from one thread at a time; give each thread its own.
// Errors: ConnectionLost when the socket fails, WrongServerUser for a server of another uid,
// rlhf::Error for everything else (a bad frame, a refused session, a server lost for longer than
// retry_seconds), as each function says.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "common/error.h"
#include "proto/annotation.pb.h"

namespace rlhf::annotation {

// Thrown when the connection fails (server gone, reset, EOF mid-frame). Distinct from a
// protocol Error response, which is a normal Response.
class ConnectionLost : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Thrown when an answer (or the room to send, or to connect) did not come before the deadline
// set with Connection::set_deadline or AnnotationClient::call: the server is hung (e.g. stopped
// with SIGSTOP) or overloaded. The connection is then out of step (a late answer may still come)
// and must be dropped; AnnotationClient does that and does not retry past the deadline.
class DeadlineExceeded : public ConnectionLost {
 public:
  using ConnectionLost::ConnectionLost;
};

// Thrown when the process listening on the socket runs as another user than the one expected:
// nothing was sent to it. Not retried (AnnotationClient passes it on).
class WrongServerUser : public Error {
 public:
  using Error::Error;
};

// One blocking Unix-socket connection. Not thread-safe; move-only.
class Connection {
 public:
  using Clock = std::chrono::steady_clock;

  // Connects, then checks with SO_PEERCRED that the listening process runs as `server_uid`
  // (default: the caller's effective uid) before anything is sent. Throws ConnectionLost naming
  // the path when nobody listens there (or socket() fails), WrongServerUser when someone of
  // another uid does, rlhf::Error when the path is too long for a Unix socket address. With a
  // `deadline`, a listener whose queue stays full until then (a hung server) throws
  // DeadlineExceeded instead of blocking, and the deadline then applies to every send and
  // receive (set_deadline changes it).
  explicit Connection(const std::string& socket_path,
                      std::optional<uid_t> server_uid = std::nullopt,
                      std::optional<Clock::time_point> deadline = std::nullopt);
  ~Connection();
  Connection(Connection&& other) noexcept;
  Connection& operator=(Connection&& other) noexcept;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Sends and receives after `deadline` throw DeadlineExceeded; nullopt: no deadline (blocks as
  // long as the server takes).
  void set_deadline(std::optional<Clock::time_point> deadline) { deadline_ = deadline; }

  // Sends raw bytes (tests use this for malformed frames). Throws ConnectionLost when send fails.
  void send_bytes(const std::string& bytes);
  // Sends one framed message. Throws rlhf::Error when it exceeds kMaxFrameBytes (frame.h),
  // ConnectionLost when send fails.
  void send(const google::protobuf::MessageLite& message);
  // Reads one framed Response; throws ConnectionLost on EOF/errors, rlhf::Error on a frame
  // that does not parse.
  proto::Response receive();
  // send + receive.
  proto::Response call(const proto::Request& request);
  // True when the server closed the connection (reads EOF within timeout_ms).
  bool closed_by_peer(int timeout_ms);
  int fd() const { return fd_; }

 private:
  void read_exact(char* p, size_t n);
  // Waits until fd_ is ready for `events` (POLLIN / POLLOUT); throws DeadlineExceeded past the
  // deadline naming `what`.
  void wait_ready(short events, const char* what);
  void check_server_user(const std::string& socket_path, uid_t expected);
  int fd_ = -1;
  std::optional<Clock::time_point> deadline_;
};

struct ClientOptions {
  std::string socket_path;  // "" = default_socket_path() (local_socket.h)
  std::string token;
  double retry_seconds = 30;  // how long to keep reconnecting when the server is gone
  std::string client_name = "rlhf-client/1";
  // The uid the server must run as (SO_PEERCRED); unset: the caller's own. A server of any other
  // uid is refused before the token is sent (WrongServerUser).
  std::optional<uid_t> server_uid = std::nullopt;
  // A request answered INTERNAL (the server's store failed; by the commit rule nothing of it was
  // stored: "send it again") is sent again up to this many times, after internal_backoff_seconds
  // doubling each time; then the INTERNAL answer is returned (for Hello: rlhf::Error is thrown).
  int internal_retries = 3;
  double internal_backoff_seconds = 0.1;
  // Each call() is answered within this many seconds or throws DeadlineExceeded (reconnects and
  // retries included); 0: no deadline (a hung server blocks the caller until it resumes).
  double call_timeout_seconds = 0;
};

// An authenticated session that survives server restarts: call() (re)connects and sends Hello
// as needed, and when the connection drops it retries with exponential backoff (50 ms doubling
// to 2 s) for up to retry_seconds, then throws rlhf::Error. A request whose response was lost is
// sent again: submissions are idempotent in effect (a stored one answers ALREADY_SUBMITTED), and
// so is an Undo that names its submission (Undo.ranking_id; one without it can undo a second).
// An UNAUTHENTICATED answer to Hello throws rlhf::Error (a wrong or revoked token is not retried);
// a server of the wrong uid throws WrongServerUser (not retried either). The server may close an
// idle connection (its idle timeout); the next call reconnects without the caller noticing.
// An INTERNAL answer (to Hello or any other request) is retried as ClientOptions says.
// Deadline: with one (call_timeout_seconds, or the `deadline` argument, which wins), a call that is
// not answered in time drops the connection (a late answer must not be taken for the next
// request's) and throws DeadlineExceeded; the next call reconnects.
class AnnotationClient {
 public:
  explicit AnnotationClient(ClientOptions options);
  proto::Response call(proto::Request request,
                       std::optional<Connection::Clock::time_point> deadline = std::nullopt);
  const std::string& annotator() const { return annotator_; }
  double lease_seconds() const { return lease_seconds_; }
  int reconnects() const { return reconnects_; }
  // Requests sent again because the server answered INTERNAL.
  int internal_retries() const { return internal_retries_; }

 private:
  void connect_and_hello(std::optional<Connection::Clock::time_point> deadline);
  // Sends `request` on conn_ (a fresh request_id each time), again while it is answered INTERNAL.
  proto::Response call_retrying_internal(proto::Request& request);
  ClientOptions opts_;
  std::unique_ptr<Connection> conn_;
  uint64_t next_id_ = 1;
  std::string annotator_;
  double lease_seconds_ = 0;
  int reconnects_ = 0;
  int internal_retries_ = 0;
};

}  // namespace rlhf::annotation
