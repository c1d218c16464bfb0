// The HTTP side of `rlhf annotate web`: a Boost.Beast server that hands every request to a
// WebRelay (annotation/web_relay.h) and writes its answer.
//
// Threads: the caller of run() owns the io_context, the acceptor, the signal set and every HTTP
// connection. What needs no annotation server (the page, refusals, session info, sign-out,
// throttled sign-ins: WebRelay::answer_locally) is answered on the I/O thread at once. Relay calls
// that do (each bounded by the relay's upstream deadline) run on a small worker pool, one at a
// time per lane (a session, or the sign-ins of one address): a lane's further requests wait in its
// queue, not in a worker, so one session's parallel requests or a hung server never keep the page
// from others. A lane with max_queued_per_lane requests waiting refuses more (429 BUSY).
//
// Limits: request headers over max_header_bytes are answered 431, bodies over max_body_bytes 413,
// and both close the connection. A connection must deliver a request's headers within
// header_timeout_seconds (from its start, or from the first byte of a later request), the whole
// request within read_timeout_seconds, take an answer within write_timeout_seconds, and start its
// next request within idle_timeout_seconds; otherwise it is closed. Over
// max_connections_per_address from one client address, new connections are closed at once. At
// max_connections in all (lowered to half the descriptors free at start, so the other half stays
// for upstream connections), a new connection closes the one that has waited longest for its next
// request, as the annotation server sheds its idle connections; when none waits, it is closed.
// When accept() fails for want of descriptors (EMFILE), it backs off (10 ms doubling to 250 ms,
// until a connection closes) instead of spinning, and when a connection is queued it closes the two
// connections that have waited longest for their next request to make room (one for the new
// connection, one for the upstream connection its sign-in needs), as the annotation server does
// (annotation/server.h).
//
// Listening: only on a loopback address (127.0.0.0/8, ::1, "localhost") unless allow_remote;
// with loopback only, the relay also accepts only this server's own Host headers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "annotation/web_relay.h"

namespace rlhf::annotation {

struct WebServerOptions {
  std::string listen = "127.0.0.1:8080";    // HOST:PORT; port 0 picks a free port (see port())
  bool allow_remote = false;                // listen on a non-loopback address (put TLS in front)
  size_t max_header_bytes = 8 * 1024;       // larger request headers get 431
  size_t max_body_bytes = 64 * 1024;        // larger request bodies get 413
  double header_timeout_seconds = 10;       // a request's headers must arrive within this
  double read_timeout_seconds = 60;         // a whole request (headers and body) within this
  double write_timeout_seconds = 30;        // an answer must be taken within this
  double idle_timeout_seconds = 30;         // between requests, a kept-alive connection waits this
  size_t max_connections = 256;             // then a new one sheds a waiting one (see above)
  size_t max_connections_per_address = 32;  // from one client IP address; further closed at once
  size_t max_queued_per_lane = 8;           // requests of one session waiting; more get 429
  int worker_threads = 4;                   // relay calls in flight at once
  bool handle_signals = true;               // stop on SIGINT / SIGTERM
  WebRelayOptions relay;                    // allowed_hosts is filled in when loopback only
};

// "127.0.0.1:8080" -> {"127.0.0.1", 8080}; "[::1]:80" -> {"::1", 80}. Throws UsageError naming
// the value when it is not HOST:PORT with a port in 0..65535.
std::pair<std::string, uint16_t> split_listen_address(const std::string& listen);

// Throws UsageError naming the first option out of range (timeouts must be finite, > 0 and at
// most a day; counts >= 1), then checks `relay` (check_web_relay_options).
void check_web_server_options(const WebServerOptions& options);

class WebServer {
 public:
  // Binds the listening socket; throws rlhf::Error (UsageError for a refused --listen value or an
  // option out of range). With loopback only, the Host headers accepted are 127.0.0.1, localhost
  // and [::1] and the listening address itself (any of 127.0.0.0/8), each with the bound port.
  explicit WebServer(WebServerOptions options);
  ~WebServer();
  WebServer(const WebServer&) = delete;
  WebServer& operator=(const WebServer&) = delete;

  uint16_t port() const;  // the bound port
  // Serves until stop() or a signal.
  void run();
  // Thread-safe and idempotent.
  void stop();

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace rlhf::annotation
