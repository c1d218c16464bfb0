// Client side of the annotation protocol: a blocking connection, and a session that
// authenticates, reconnects and retries.
#pragma once

#include <cstdint>
#include <string>

#include "proto/annotation.pb.h"

namespace rlhf::annotation {

// Thrown when the connection fails (server gone, reset, EOF mid-frame). Distinct from a
// protocol Error response, which is a normal Response.
class ConnectionLost : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One blocking Unix-socket connection. Not thread-safe; move-only.
class Connection {
 public:
  // Connects; throws ConnectionLost naming the path when nobody listens there.
  explicit Connection(const std::string& socket_path);
  ~Connection();
  Connection(Connection&& other) noexcept;
  Connection& operator=(Connection&& other) noexcept;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Sends raw bytes (tests use this for malformed frames).
  void send_bytes(const std::string& bytes);
  // Sends one framed message.
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
  int fd_ = -1;
};

struct ClientOptions {
  std::string socket_path;
  std::string token;
  double retry_seconds = 30;  // how long to keep reconnecting when the server is gone
  std::string client_name = "rlhf-client/1";
};

// An authenticated session that survives server restarts: call() (re)connects and sends Hello
// as needed, and when the connection drops it retries with exponential backoff (50 ms doubling
// to 2 s) for up to retry_seconds, then throws rlhf::Error. A request whose response was lost is
// sent again: submissions are idempotent in effect (a stored one answers ALREADY_SUBMITTED).
// An UNAUTHENTICATED answer to Hello throws rlhf::Error (a wrong or revoked token is not retried).
class AnnotationClient {
 public:
  explicit AnnotationClient(ClientOptions options);
  proto::Response call(proto::Request request);
  const std::string& annotator() const { return annotator_; }
  double lease_seconds() const { return lease_seconds_; }
  int reconnects() const { return reconnects_; }

 private:
  void connect_and_hello();
  ClientOptions opts_;
  std::unique_ptr<Connection> conn_;
  uint64_t next_id_ = 1;
  std::string annotator_;
  double lease_seconds_ = 0;
  int reconnects_ = 0;
};

}  // namespace rlhf::annotation
