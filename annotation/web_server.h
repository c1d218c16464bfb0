// The HTTP side of `rlhf annotate web`: a Boost.Beast server that hands every request to a
// WebRelay (annotation/web_relay.h) and writes its answer.
//
// Threads: the caller of run() owns the io_context, the acceptor, the signal set and every HTTP
// connection; relay calls (which block on the annotation server) run on a small worker pool and
// their answers are posted back to the I/O thread, so one annotator waiting on a restarting server
// does not stall the others.
//
// Limits: request headers over max_header_bytes are answered 431, bodies over max_body_bytes 413,
// and both close the connection; a connection idle for read_timeout_seconds is closed; over
// max_connections, new connections are closed at once.
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
  std::string listen = "127.0.0.1:8080";  // HOST:PORT; port 0 picks a free port (see port())
  bool allow_remote = false;              // listen on a non-loopback address (put TLS in front)
  size_t max_header_bytes = 8 * 1024;     // larger request headers get 431
  size_t max_body_bytes = 64 * 1024;      // larger request bodies get 413
  double read_timeout_seconds = 60;       // an idle connection is closed after this long
  size_t max_connections = 256;           // further connections are closed at once
  int worker_threads = 4;                 // relay calls in flight at once
  bool handle_signals = true;             // stop on SIGINT / SIGTERM
  WebRelayOptions relay;                  // allowed_hosts is filled in when loopback only
};

// "127.0.0.1:8080" -> {"127.0.0.1", 8080}; "[::1]:80" -> {"::1", 80}. Throws UsageError naming
// the value when it is not HOST:PORT with a port in 0..65535.
std::pair<std::string, uint16_t> split_listen_address(const std::string& listen);

class WebServer {
 public:
  // Binds the listening socket; throws rlhf::Error (UsageError for a refused --listen value).
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
