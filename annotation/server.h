// The annotation server: a Unix-domain socket speaking length-prefixed protobuf frames
// (annotation/frame.h), one SQLite store behind a group-committing store thread.
//
// Threads: one I/O thread (the caller of run()) owns the io_context, the acceptor, the signal set
// and every connection; one store thread (GroupCommitter) runs RequestHandler. A connection has at
// most one request in flight; its response is written after the request's batch committed.
//
// Robustness: any bytes a client sends get an Error reply or a closed connection. A frame over the
// limit is answered BAD_FRAME and the connection closed; an undecodable frame is answered
// BAD_MESSAGE and the connection goes on. Nothing a client sends reaches the store except through
// the handler's validated paths, so a bad client never causes a partial write.
//
// Lifecycle: the constructor opens the store and binds the socket (mode 0600 by default). An
// existing socket file that nobody listens on (a crashed run) is replaced; a live one, or a path
// that is not a socket, is refused. stop() (or SIGINT/SIGTERM when handle_signals) stops
// accepting, removes the socket file, finishes and answers the queued requests, then closes every
// connection after its in-flight response is written; run() then returns.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "annotation/frame.h"
#include "annotation/group_commit.h"

namespace rlhf::annotation {

struct ServerOptions {
  std::string db_path;                        // created with the current schema when missing
  std::string socket_path;                    // Unix socket path (at most 107 bytes)
  double lease_seconds = 600;                 // how long a leased task stays reserved
  bool synchronous_full = true;               // PRAGMA synchronous=FULL (else NORMAL)
  uint32_t max_frame_bytes = kMaxFrameBytes;  // larger frames are refused
  size_t max_connections = 1024;              // further connections are closed at once
  bool handle_signals = true;                 // stop on SIGINT / SIGTERM
  int socket_mode = 0600;                     // permissions of the socket file (0600 or 0660)
  size_t max_batch = 512;                     // requests per group-commit transaction
  bool verbose = false;                       // log connections and errors to stderr
};

class Server {
 public:
  // Opens the store and binds the socket; throws rlhf::Error naming the file on failure.
  explicit Server(ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Serves until stop() or a signal; returns after the graceful shutdown finished.
  void run();
  // Thread-safe and idempotent; may be called before or during run().
  void stop();

  GroupCommitStats stats() const;
  size_t connections() const;  // open connections (approximate when read from another thread)

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace rlhf::annotation
