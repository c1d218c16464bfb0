#include "pipelines/internal/subprocess.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "common/error.h"
#include "common/files.h"

namespace rlhf::pipelines {
namespace {

// Forks and runs argv. `die_with_parent`: the child gets SIGTERM when this process dies (even by
// SIGKILL), so a background server never outlives the pipeline that started it (an orphan would
// keep the socket's lock and block a resumed run). The signal is tied to the forking thread, so
// only the main thread may start such a child.
pid_t spawn(const std::vector<std::string>& argv, int stdout_fd, bool die_with_parent = false) {
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) throw Error("cannot fork for " + join_command(argv) + ": " + std::strerror(errno));
  if (pid == 0) {
    if (die_with_parent) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != parent) ::_exit(128 + SIGTERM);  // the parent died before prctl
    }
    if (stdout_fd >= 0) {
      ::dup2(stdout_fd, STDOUT_FILENO);
      ::close(stdout_fd);
    }
    ::execv(cargv[0], cargv.data());
    std::fprintf(stderr, "cannot run %s: %s\n", cargv[0], std::strerror(errno));
    ::_exit(127);
  }
  return pid;
}

int wait_code(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

void write_private_file(const std::string& path, const std::string& content) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw Error(path + ": cannot create (" + std::strerror(errno) + ")");
  bool ok = ::fchmod(fd, 0600) == 0;
  for (size_t off = 0; ok && off < content.size();) {
    const ssize_t n = ::write(fd, content.data() + off, content.size() - off);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) off += static_cast<size_t>(n);
  }
  const int saved = errno;
  ::close(fd);
  if (!ok) throw Error(path + ": cannot write (" + std::strerror(saved) + ")");
}

std::string self_executable() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) throw Error("cannot find the rlhf executable (/proc/self/exe): " + ec.message());
  return p.string();
}

std::string join_command(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) {
    if (!s.empty()) s += ' ';
    if (a.find_first_of(" \t'\"") != std::string::npos)
      s += "'" + a + "'";
    else
      s += a;
  }
  return s;
}

int run_child(const std::vector<std::string>& argv, const std::string& stdout_path) {
  int fd = -1;
  if (!stdout_path.empty()) {
    fd = ::open(stdout_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw Error("cannot create " + stdout_path + ": " + std::strerror(errno));
    // keep it across exec in the child: dup2 clears CLOEXEC on the target
  }
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = spawn(argv, fd);
  if (fd >= 0) ::close(fd);
  return wait_code(pid);
}

std::string run_child_capture(const std::vector<std::string>& argv) {
  std::string tmp = std::filesystem::temp_directory_path().string() + "/rlhf_child_" +
                    std::to_string(::getpid()) + "_" +
                    std::to_string(std::chrono::steady_clock::now().time_since_epoch().count());
  int code = run_child(argv, tmp);
  std::string out;
  try {
    out = read_file(tmp);
  } catch (...) {
  }
  std::filesystem::remove(tmp);
  if (code != 0)
    throw Error("command failed (exit " + std::to_string(code) + "): " + join_command(argv));
  return out;
}

BackgroundChild::BackgroundChild(const std::vector<std::string>& argv,
                                 const std::string& log_path) {
  int fd = -1;
  if (!log_path.empty()) {
    fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) throw Error("cannot create " + log_path + ": " + std::strerror(errno));
  }
  std::fflush(stdout);
  std::fflush(stderr);
  pid_ = spawn(argv, fd, /*die_with_parent=*/true);
  if (fd >= 0) ::close(fd);
}

bool BackgroundChild::running() {
  if (reaped_) return false;
  int status = 0;
  pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    reaped_ = true;
    status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return false;
  }
  return true;
}

int BackgroundChild::stop() {
  if (reaped_) return status_;
  ::kill(pid_, SIGTERM);
  for (int i = 0; i < 100; ++i) {
    if (!running()) return status_;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ::kill(pid_, SIGKILL);
  status_ = wait_code(pid_);
  reaped_ = true;
  return status_;
}

BackgroundChild::~BackgroundChild() {
  if (pid_ > 0 && !reaped_) stop();
}

}  // namespace rlhf::pipelines
