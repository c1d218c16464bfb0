// Socket location, the private directory, the server lock, the race-free bind, and the peer
// checks on both ends (annotation/local_socket.h), with real sockets and, where the test runs as
// root, real processes of another uid.
#include "annotation/local_socket.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include "annotation/client.h"
#include "annotation/server.h"
#include "common/files.h"
#include "common/process.h"
#include "tests/fixtures/annotation_server.h"
#include "tests/test_support.h"

namespace ann = rlhf::annotation;
namespace fs = std::filesystem;
using rlhf::annotation::testing::RunningServer;
using rlhf::annotation::testing::test_server_options;
using rlhf::testing::TempDir;

namespace {

constexpr uid_t kNobody = 65534;

// Sets an environment variable for the scope, restoring the old value (or its absence).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value)
      ::setenv(name, value, 1);
    else
      ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_.empty())
      ::unsetenv(name_);
    else
      ::setenv(name_, old_.c_str(), 1);
  }

 private:
  const char* name_;
  std::string old_;
};

unsigned mode_of(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

// Runs `body` in a child process with uid and gid `uid`; returns its exit code.
template <typename F>
int as_other_user(uid_t uid, F body) {
  return rlhf::testing::run_in_child([&] {
    if (::setgid(uid) != 0 || ::setuid(uid) != 0) return 90;
    return body();
  });
}

}  // namespace

TEST(LocalSocket, DefaultPathIsInXdgRuntimeDirElseAPerUserTmpFolder) {
  {
    ScopedEnv env("XDG_RUNTIME_DIR", "/run/user/1234");
    EXPECT_EQ(ann::default_socket_path(), "/run/user/1234/rlhf/annotation.sock");
  }
  std::string fallback = "/tmp/rlhf-" + std::to_string(::geteuid()) + "/annotation.sock";
  {
    ScopedEnv env("XDG_RUNTIME_DIR", nullptr);
    EXPECT_EQ(ann::default_socket_path(), fallback);
  }
  {
    ScopedEnv env("XDG_RUNTIME_DIR", "relative/dir");  // not trusted
    EXPECT_EQ(ann::default_socket_path(), fallback);
  }
  EXPECT_EQ(ann::socket_directory("/a/b/c.sock"), "/a/b");
  EXPECT_EQ(ann::socket_directory("c.sock"), ".");
}

TEST(LocalSocket, PrivateDirectoryIsCreated0700AndAnyOtherIsRefused) {
  TempDir dir("ls");
  std::string mine = dir / "mine";
  ann::ensure_private_directory(mine);
  EXPECT_EQ(mode_of(mine), 0700u);
  ann::ensure_private_directory(mine);  // idempotent

  std::string open_dir = dir / "open";
  fs::create_directory(open_dir);
  ::chmod(open_dir.c_str(), 0755);
  try {
    ann::ensure_private_directory(open_dir);
    FAIL() << "a 0755 directory must be refused";
  } catch (const rlhf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("mode 0755"), std::string::npos) << e.what();
  }
  std::string link = dir / "link";
  fs::create_directory_symlink(mine, link);
  EXPECT_THROW(ann::ensure_private_directory(link), rlhf::Error);

  if (::geteuid() != 0) return;
  std::string theirs = dir / "theirs";  // another user got there first (e.g. /tmp/rlhf-UID)
  fs::create_directory(theirs);
  ::chmod(theirs.c_str(), 0700);
  ASSERT_EQ(::chown(theirs.c_str(), kNobody, kNobody), 0);
  try {
    ann::ensure_private_directory(theirs);
    FAIL() << "a directory of another user must be refused";
  } catch (const rlhf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("belongs to uid 65534"), std::string::npos) << e.what();
  }
}

TEST(LocalSocket, OneLockHolderPerPathAndTheLockFileGoesAway) {
  TempDir dir("ls");
  std::string sock = dir / "s.sock";
  {
    ann::ServerLock first(sock);
    EXPECT_TRUE(rlhf::file_exists(sock + ".lock"));
    EXPECT_EQ(mode_of(sock + ".lock"), 0600u);
    EXPECT_THROW(ann::ServerLock second(sock), ann::AlreadyServing);
  }
  EXPECT_FALSE(rlhf::file_exists(sock + ".lock"));
  ann::ServerLock again(sock);  // free again once released
}

TEST(LocalSocket, ListensWithTheModeReplacesAStaleFileAndLeavesNoTemporaryDirectory) {
  TempDir dir("ls");
  std::string sock = dir / "s.sock";
  rlhf::write_file_atomic(sock, "stale");  // whatever was there is replaced atomically
  int fd = ann::listen_on_path(sock, 0660, 16);
  ASSERT_GE(fd, 0);
  struct stat st;
  ASSERT_EQ(::lstat(sock.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  int entries = 0;
  for (auto& e : fs::directory_iterator(dir.path())) entries += e.path().filename() != "";
  EXPECT_EQ(entries, 1) << "a temporary directory was left next to the socket";
  ann::Connection c(sock);  // listening as soon as it appears
  ::close(fd);

  std::string long_path = dir / std::string(100, 'x');
  EXPECT_THROW(ann::listen_on_path(long_path, 0600, 16), rlhf::Error);
}

TEST(LocalSocket, ServerUsesTheDefaultPrivateSocketWhenNoneIsGiven) {
  TempDir dir("ls");
  ScopedEnv env("XDG_RUNTIME_DIR", dir.path().c_str());
  auto o = test_server_options(dir);
  o.socket_path.clear();
  {
    ann::Store store(o.db_path);
    store.add_annotator("alice", "annotator");
  }
  RunningServer rs(o);
  EXPECT_EQ(rs.server.socket_path(), dir / "rlhf/annotation.sock");
  EXPECT_EQ(mode_of(dir / "rlhf"), 0700u);
  EXPECT_EQ(mode_of(dir / "rlhf/annotation.sock"), 0600u);
  ann::Connection c(ann::default_socket_path());  // clients find it the same way
}

TEST(LocalSocket, ClientRefusesAServerOfAnotherUidBeforeSendingTheToken) {
  TempDir dir("ls");
  auto o = test_server_options(dir);
  RunningServer rs(o);
  uid_t other = ::geteuid() + 1;
  try {
    ann::Connection c(o.socket_path, other);
    FAIL() << "a server not running as uid " << other << " must be refused";
  } catch (const ann::WrongServerUser& e) {
    EXPECT_NE(std::string(e.what()).find("--server-uid " + std::to_string(::geteuid())),
              std::string::npos)
        << e.what();
  }
  ann::ClientOptions co;
  co.socket_path = o.socket_path;
  co.token = "secret";
  co.server_uid = other;
  ann::AnnotationClient client(co);
  auto start = std::chrono::steady_clock::now();
  rlhf::proto::Request r;
  r.mutable_get_progress();
  EXPECT_THROW(client.call(r), ann::WrongServerUser);  // at once, not after 30 s of retries
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 5);
  EXPECT_EQ(rs.server.stats().requests, 0);  // the token never reached the server
  ann::Connection ok(o.socket_path, ::geteuid());
}

TEST(LocalSocket, ProcessesOfAnotherUidAreRefusedByTheServerAndRefuseIt) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a process as another uid";
  TempDir dir("ls");
  ::chmod(dir.path().c_str(), 0777);
  auto o = test_server_options(dir);
  {
    RunningServer rs(o);
    // Make the file reachable (as if someone loosened it): the server still closes the peer.
    ::chmod(o.socket_path.c_str(), 0666);
    int rc = as_other_user(kNobody, [&] {
      int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::strncpy(addr.sun_path, o.socket_path.c_str(), sizeof(addr.sun_path) - 1);
      if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return 2;
      timeval tv{5, 0};
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      char c;
      return ::recv(fd, &c, 1, 0) == 0 ? 0 : 3;  // 0: closed by the server at once
    });
    EXPECT_EQ(rc, 0) << "2: could not connect, 3: the server kept the connection";
  }
  // A socket of another user at the path (e.g. bound after our server stopped): refused.
  std::string theirs = dir / "theirs.sock";
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  rlhf::process::Child listener = rlhf::process::Child::fork_call([&] {
    if (::setgid(kNobody) != 0 || ::setuid(kNobody) != 0) return 90;
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, theirs.c_str(), sizeof(addr.sun_path) - 1);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 4) != 0)
      return 91;
    ::chmod(theirs.c_str(), 0777);
    (void)!::write(ready[1], "r", 1);
    ::pause();
    return 0;
  });
  char r;
  ASSERT_EQ(::read(ready[0], &r, 1), 1);
  EXPECT_THROW(ann::Connection c(theirs), ann::WrongServerUser);
  EXPECT_NO_THROW(ann::Connection c(theirs, kNobody));  // told to accept that uid
  listener.signal(SIGKILL);
  listener.wait();
  ::close(ready[0]);
  ::close(ready[1]);
}
