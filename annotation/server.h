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
// Hostile and stuck clients (every limit is a ServerOptions field and an `annotate serve` flag):
//  - a connection must complete Hello within hello_timeout_seconds of connecting; a frame must be
//    complete within frame_timeout_seconds of its first byte (a 1 byte/s sender is cut off); an
//    authenticated connection with no request for idle_timeout_seconds is closed (clients
//    reconnect by themselves); a response the client does not take within write_timeout_seconds
//    closes the connection. Deadlines are checked by one timer that sweeps all connections
//    (granularity: a quarter of the shortest timeout, at most 1 s).
//  - at most max_connections connections, of which at most max_unauthenticated have not completed
//    Hello. A new connection beyond either cap displaces the unauthenticated connection idle the
//    longest; when there is none it is closed at once.
//  - descriptors: the constructor raises the RLIMIT_NOFILE soft limit to the hard limit and lowers
//    the connection cap to the limit minus kReservedDescriptors, so connections alone cannot
//    exhaust descriptors. If accept still fails for lack of descriptors (EMFILE/ENFILE) while a
//    connection is queued, the server sheds the longest-idle unauthenticated connection and
//    retries at once, or, with none to shed, retries after a back-off (10 ms doubling to 1 s, cut
//    short when a connection closes), never spinning. With nothing queued (Linux fails accept on a
//    full table before it looks at the queue) it sheds nobody and backs off.
//  - peers (SO_PEERCRED): a connection from a process of another uid than the server's (root
//    excepted) is closed at once, unless socket_mode grants the group access (0660), in which
//    case the file mode decides who may connect.
//
// Lifecycle: the constructor opens the store and binds the socket (local_socket.h): the path's
// ServerLock ("<socket>.lock") makes one server own the path, so a socket file found there is
// stale and is replaced (a live socket of some other program, or a path that is not a socket, is
// refused); the socket is created with socket_mode in a private directory and renamed into
// place. stop() (or SIGINT/SIGTERM when handle_signals) stops accepting, removes the socket file,
// finishes and answers the queued requests, then closes every connection after its in-flight
// response is written, giving a client that does not read at most stop_timeout_seconds; run()
// then returns.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "annotation/frame.h"
#include "annotation/group_commit.h"

namespace rlhf::annotation {

// Descriptors kept free for the store (database, WAL, shared memory, journal), stdio and the
// event loop: the connection cap is at most the descriptor limit minus this.
constexpr size_t kReservedDescriptors = 64;

struct ServerOptions {
  std::string db_path;  // created with the current schema when missing
  // Unix socket path (at most 107 bytes; about 90 for the temporary name used while binding).
  // Empty: default_socket_path() (local_socket.h), whose private directory is created 0700.
  std::string socket_path;
  double lease_seconds = 600;                 // how long a leased task stays reserved
  bool synchronous_full = true;               // PRAGMA synchronous=FULL (else NORMAL)
  uint32_t max_frame_bytes = kMaxFrameBytes;  // larger frames are refused
  size_t max_connections = 1024;              // open connections (see the cap rules above)
  size_t max_unauthenticated = 128;           // connections that have not completed Hello
  double hello_timeout_seconds = 10;          // from connect to a successful Hello
  double frame_timeout_seconds = 30;          // from a frame's first byte to its last
  double idle_timeout_seconds = 900;          // authenticated, between requests
  double write_timeout_seconds = 30;          // for the client to take a response
  double stop_timeout_seconds = 5;            // after stop(), for in-flight responses
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
  const std::string& socket_path() const;  // the path listened on (the default when none given)
  size_t max_connections() const;          // the cap in force (after the descriptor limit)
  size_t descriptor_limit() const;         // RLIMIT_NOFILE soft limit after raising it

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace rlhf::annotation
