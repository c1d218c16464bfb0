#include "annotation/local_socket.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace rlhf::annotation {

namespace {

std::string errno_text() { return std::strerror(errno); }

sockaddr_un unix_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path))
    throw Error("socket path " + path + " is " + std::to_string(path.size()) +
                " bytes long; a Unix socket path has at most " +
                std::to_string(sizeof(addr.sun_path) - 1));
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

// Removes a directory (and the one file we may have left in it) when the scope ends.
struct TempBindDirectory {
  std::string dir, file;
  ~TempBindDirectory() {
    if (!file.empty()) ::unlink(file.c_str());
    if (!dir.empty()) ::rmdir(dir.c_str());
  }
};

}  // namespace

std::string default_socket_path() {
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  if (xdg && xdg[0] == '/') return std::string(xdg) + "/rlhf/annotation.sock";
  return "/tmp/rlhf-" + std::to_string(::geteuid()) + "/annotation.sock";
}

std::string socket_directory(const std::string& socket_path) {
  size_t slash = socket_path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return socket_path.substr(0, slash);
}

void ensure_private_directory(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    throw Error("cannot create the socket directory " + dir + ": " + errno_text());
  struct stat st;
  if (::lstat(dir.c_str(), &st) != 0) throw Error("socket directory " + dir + ": " + errno_text());
  if (!S_ISDIR(st.st_mode))
    throw Error("socket directory " + dir +
                " is not a directory (a symlink or file put there by someone else?); remove it "
                "or choose another --socket");
  if (st.st_uid != ::geteuid())
    throw Error("socket directory " + dir + " belongs to " + describe_uid(st.st_uid) +
                ", not to you (" + describe_uid(::geteuid()) +
                "); another user may be waiting for your token: remove it or choose another "
                "--socket");
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    throw Error("socket directory " + dir + " has mode " + mode +
                "; expected 0700 (only you may enter it): chmod 700 " + dir);
  }
}

PeerCredentials peer_credentials(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof cred)
    throw Error("SO_PEERCRED: cannot read the peer's credentials: " + errno_text());
  return {cred.pid, cred.uid, cred.gid};
}

std::string describe_uid(uid_t uid) {
  std::string text = "uid " + std::to_string(uid);
  std::vector<char> buf(4096);
  passwd pw{};
  passwd* found = nullptr;
  if (::getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) == 0 && found)
    text += std::string(" (") + found->pw_name + ")";
  return text;
}

ServerLock::ServerLock(const std::string& socket_path) : path_(socket_path + ".lock") {
  // The file may be removed by its previous holder between our open() and flock(); then we
  // locked an orphan inode and must try again with the new file.
  for (int attempt = 0; attempt < 20; ++attempt) {
    int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) throw Error("cannot open the server lock " + path_ + ": " + errno_text());
    struct stat held, now;
    if (::fstat(fd, &held) != 0) {
      int err = errno;
      ::close(fd);
      throw Error("cannot stat the server lock " + path_ + ": " + std::strerror(err));
    }
    if (held.st_uid != ::geteuid()) {
      ::close(fd);
      throw Error("server lock " + path_ + " belongs to " + describe_uid(held.st_uid) +
                  ", not to you; remove it or choose another --socket");
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      int err = errno;
      ::close(fd);
      if (err == EWOULDBLOCK)
        throw AlreadyServing("another annotation server is already listening on " + socket_path +
                             " (it holds " + path_ + ")");
      throw Error("cannot lock " + path_ + ": " + std::strerror(err));
    }
    if (::stat(path_.c_str(), &now) == 0 && now.st_ino == held.st_ino &&
        now.st_dev == held.st_dev) {
      fd_ = fd;
      return;
    }
    ::close(fd);
  }
  throw Error("cannot lock " + path_ + ": it keeps being replaced");
}

ServerLock::~ServerLock() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());  // still locked: nobody can hold this inode meanwhile
  ::close(fd_);
}

ServerLock::ServerLock(ServerLock&& other) noexcept
    : path_(std::move(other.path_)), fd_(other.fd_) {
  other.fd_ = -1;
}

int listen_on_path(const std::string& path, int mode, int backlog) {
  unix_address(path);  // length check with the caller's path in the message
  TempBindDirectory tmp;
  std::string templ = socket_directory(path) + "/.rlhf-bind-XXXXXX";
  if (templ.size() + 2 >= sizeof(sockaddr_un::sun_path))
    throw Error("socket path " + path +
                " is too long: binding needs a temporary name next to it of " +
                std::to_string(templ.size() + 2) + " bytes (limit " +
                std::to_string(sizeof(sockaddr_un::sun_path) - 1) + "); choose a shorter path");
  if (!::mkdtemp(templ.data()))
    throw Error("cannot create a temporary directory next to " + path + ": " + errno_text());
  tmp.dir = templ;  // mkdtemp makes it 0700: nobody else can reach what we bind inside
  std::string staged = templ + "/s";
  sockaddr_un addr = unix_address(staged);

  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw Error("socket(): " + errno_text());
  auto fail = [&](const std::string& what) {
    int err = errno;
    ::close(fd);
    throw Error("cannot listen on " + path + ": " + what + ": " + std::strerror(err));
  };
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) fail("bind");
  tmp.file = staged;
  if (::chmod(staged.c_str(), static_cast<mode_t>(mode)) != 0) fail("chmod");
  if (::listen(fd, backlog) != 0) fail("listen");
  if (::rename(staged.c_str(), path.c_str()) != 0) fail("rename into place");
  tmp.file.clear();
  return fd;
}

}  // namespace rlhf::annotation
