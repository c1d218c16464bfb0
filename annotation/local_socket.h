// Unix-domain socket plumbing shared by the annotation server and its clients: where the default
// socket lives, the private directory it lives in, the lock that makes one server own a path, a
// listening socket created without a window in which it is reachable with the wrong mode, and
// the credentials of the process at the other end of a connection (SO_PEERCRED).
//
// Why: a socket in a shared directory such as /tmp can be taken over by another local user once
// its server stops; clients then send their token to whoever listens. The default socket is
// therefore in a directory only its user can enter, and both ends check the peer's uid.
//
// Errors: rlhf::Error naming the path and the failing call (AlreadyServing, a subclass, when
// another server holds the lock), as each function says.
// Thread safety: the free functions may be called from any thread (describe_uid uses
// getpwuid_r); a ServerLock is used from one thread at a time. Ownership: listen_on_path returns
// a descriptor the caller closes; a ServerLock owns its lock file and descriptor.
#pragma once

#include <sys/types.h>

#include <string>

#include "common/error.h"

namespace rlhf::annotation {

// $XDG_RUNTIME_DIR/rlhf/annotation.sock when XDG_RUNTIME_DIR is set and absolute (a per-user 0700
// directory made by the login manager), else /tmp/rlhf-<uid>/annotation.sock. Pure: creates
// nothing (see ensure_private_directory).
std::string default_socket_path();

// The directory part of a socket path ("." when there is none).
std::string socket_directory(const std::string& socket_path);

// Creates `dir` (its parent must exist) with mode 0700 when missing, then checks that it is a
// directory and not a symlink, owned by the effective uid, with no group or other permissions.
// Throws rlhf::Error naming the directory and what is wrong, e.g. when another user created
// /tmp/rlhf-<uid> first.
void ensure_private_directory(const std::string& dir);

struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

// SO_PEERCRED of a connected Unix socket: the process that connected (server side) or that
// listens (client side), as of connect(). Throws rlhf::Error when the kernel does not say.
PeerCredentials peer_credentials(int fd);

// "uid 1001 (bob)": a uid with its user name when the password database knows it.
std::string describe_uid(uid_t uid);

// Thrown by ServerLock when another live process holds the lock (a server on that path).
class AlreadyServing : public Error {
 public:
  using Error::Error;
};

// An exclusive flock(2) on "<socket_path>.lock", held while the object lives: at most one
// annotation server per socket path, so with the lock held, a socket file at the path is stale
// (its server died; the kernel released its lock) and may be replaced without a probe-then-unlink
// race. The lock file is created 0600 without following symlinks, must be owned by the effective
// uid, and is removed by the destructor (the inode is re-checked after locking, so removal is
// safe). Move-only.
class ServerLock {
 public:
  // Throws AlreadyServing when another process holds it, rlhf::Error on any other failure.
  explicit ServerLock(const std::string& socket_path);
  ~ServerLock();
  ServerLock(ServerLock&& other) noexcept;
  ServerLock& operator=(ServerLock&&) = delete;
  ServerLock(const ServerLock&) = delete;
  ServerLock& operator=(const ServerLock&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

// A listening SOCK_STREAM socket bound to `path` with permissions `mode` (e.g. 0600), created so
// that it is never reachable with other permissions and never half-set-up: it is bound in a fresh
// 0700 directory next to `path`, chmod-ed and put in listening state there, then renamed onto
// `path` (atomically replacing a stale socket file). Returns the descriptor (close-on-exec; the
// caller owns it). Call with the path's ServerLock held. Throws rlhf::Error naming the path.
int listen_on_path(const std::string& path, int mode, int backlog);

}  // namespace rlhf::annotation
