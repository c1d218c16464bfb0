#include "common/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include "common/error.h"

extern char** environ;

namespace rlhf::process {

std::string describe_wait_status(int wait_status) {
  if (WIFEXITED(wait_status))
    return "exited with status " + std::to_string(WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) {
    const int sig = WTERMSIG(wait_status);
    const char* abbrev = sigabbrev_np(sig);
    return "was killed by signal " + std::to_string(sig) +
           (abbrev ? std::string(" (SIG") + abbrev + ")" : "");
  }
  return "stopped with wait status " + std::to_string(wait_status);
}

int exit_code_of(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return 1;
}

bool ExitStatus::exited() const { return WIFEXITED(wait_status); }
int ExitStatus::signal() const { return WIFSIGNALED(wait_status) ? WTERMSIG(wait_status) : 0; }
int ExitStatus::code() const { return exit_code_of(wait_status); }

std::vector<std::string> merge_environment(
    const std::vector<std::string>& base,
    const std::vector<std::pair<std::string, std::string>>& overrides) {
  std::vector<std::string> env = base;
  for (const auto& [name, value] : overrides) {
    const std::string entry = name + "=" + value;
    auto same_name = [&name](const std::string& e) { return e.rfind(name + "=", 0) == 0; };
    auto it = std::find_if(env.begin(), env.end(), same_name);
    if (it != env.end()) {
      *it = entry;
    } else {
      env.push_back(entry);
    }
  }
  return env;
}

std::string find_in_path(const std::string& name, const std::string& path_env) {
  if (name.find('/') != std::string::npos) return name;
  size_t start = 0;
  while (!name.empty() && start <= path_env.size()) {
    size_t colon = path_env.find(':', start);
    if (colon == std::string::npos) colon = path_env.size();
    const std::string dir = path_env.substr(start, colon - start);
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0 && !std::filesystem::is_directory(candidate))
      return candidate;
    start = colon + 1;
  }
  throw Error("program '" + name + "' not found in PATH");
}

std::string self_executable() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) throw Error("cannot find the running executable (/proc/self/exe): " + ec.message());
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

namespace {

// A descriptor the child must not lose while it dup2()s onto 0, 1 and 2: moved to >= 3,
// close-on-exec (dup2 clears the flag on the copy the child keeps).
UniqueFd above_stdio(UniqueFd fd, const std::string& what) {
  if (!fd) throw Error(what + ": " + std::strerror(errno));
  if (fd.get() > STDERR_FILENO) return fd;
  UniqueFd moved(::fcntl(fd.get(), F_DUPFD_CLOEXEC, STDERR_FILENO + 1));
  if (!moved) throw Error(what + ": " + std::strerror(errno));
  return moved;
}

std::pair<UniqueFd, UniqueFd> make_pipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw Error(std::string("pipe: ") + std::strerror(errno));
  UniqueFd read_end(fds[0]), write_end(fds[1]);
  return {above_stdio(std::move(read_end), "pipe"), above_stdio(std::move(write_end), "pipe")};
}

// What the child reports through the start pipe when it cannot get to exec.
enum class Stage : int { kLimit, kStreams, kWorkingDir, kExec, kCount };
const char* stage_name(int stage) {
  static const char* names[] = {"setting RLIMIT_NOFILE", "redirecting its output",
                                "changing to its working directory", "executing it"};
  return stage >= 0 && stage < static_cast<int>(Stage::kCount) ? names[stage] : "starting it";
}

// Everything the child needs, prepared before fork: after it, the child makes only
// async-signal-safe calls.
struct Prepared {
  std::string path;                    // the file to execute
  std::vector<std::string> argv, env;  // owned strings
  std::vector<char*> c_argv, c_env;    // null-terminated views of them
  UniqueFd in, out, err;               // what goes onto 0, 1, 2 (-1: leave it)
  bool err_to_out = false;             // 2>&1
  UniqueFd out_read, err_read;         // the parent's ends of kPipe streams
  std::string working_dir;
  bool own_group = false, die_with_parent = false;
  rlim_t max_open_files = 0;
};

UniqueFd open_redirect(const Redirect& r, bool for_reading, UniqueFd* pipe_read,
                       const std::string& stream) {
  const std::string what = "redirecting " + stream;
  switch (r.kind) {
    case Redirect::Kind::kInherit:
    case Redirect::Kind::kStdout:
      return UniqueFd();
    case Redirect::Kind::kNull:
      return above_stdio(
          UniqueFd(::open("/dev/null", (for_reading ? O_RDONLY : O_WRONLY) | O_CLOEXEC)),
          what + " to /dev/null");
    case Redirect::Kind::kFile:
    case Redirect::Kind::kAppend: {
      int flags = for_reading ? O_RDONLY
                              : O_WRONLY | O_CREAT |
                                    (r.kind == Redirect::Kind::kAppend ? O_APPEND : O_TRUNC);
      return above_stdio(UniqueFd(::open(r.path.c_str(), flags | O_CLOEXEC, 0644)),
                         what + " to " + r.path);
    }
    case Redirect::Kind::kFd:
      return above_stdio(UniqueFd(::fcntl(r.fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1)),
                         what + " to descriptor " + std::to_string(r.fd));
    case Redirect::Kind::kPipe: {
      if (for_reading) throw Error(what + ": a pipe into stdin is not supported");
      auto [read_end, write_end] = make_pipe();
      ::fcntl(read_end.get(), F_SETFL, O_NONBLOCK);
      *pipe_read = std::move(read_end);
      return std::move(write_end);
    }
  }
  return UniqueFd();
}

void prepare_streams(const Options& o, Prepared* p) {
  if (o.stdout_redirect.kind == Redirect::Kind::kStdout)
    throw Error("redirecting stdout: to_stdout() is for stderr only");
  p->in = open_redirect(o.stdin_redirect, true, nullptr, "stdin");
  p->out = open_redirect(o.stdout_redirect, false, &p->out_read, "stdout");
  p->err = open_redirect(o.stderr_redirect, false, &p->err_read, "stderr");
  p->err_to_out = o.stderr_redirect.kind == Redirect::Kind::kStdout;
}

Prepared prepare(const Options& o, bool exec) {
  Prepared p;
  if (exec) {
    if (o.argv.empty()) throw Error("cannot start a process: no program given (empty argv)");
    const std::string program = o.program.empty() ? o.argv[0] : o.program;
    const char* path_env = std::getenv("PATH");
    p.path = find_in_path(program, path_env ? path_env : "");
    p.argv = o.argv;
    std::vector<std::string> base;
    if (!o.clear_env)
      for (char** e = environ; *e; ++e) base.emplace_back(*e);
    p.env = merge_environment(base, o.env);
    for (auto& a : p.argv) p.c_argv.push_back(a.data());
    p.c_argv.push_back(nullptr);
    for (auto& e : p.env) p.c_env.push_back(e.data());
    p.c_env.push_back(nullptr);
  } else if (!o.argv.empty() || !o.program.empty() || !o.env.empty() || o.clear_env) {
    throw Error("fork_call: argv, program and env do not apply to a forked function");
  }
  p.working_dir = o.working_dir;
  p.own_group = o.own_process_group;
  p.die_with_parent = o.die_with_parent;
  p.max_open_files = o.max_open_files;
  prepare_streams(o, &p);
  return p;
}

[[noreturn]] void report_and_exit(int report_fd, Stage stage) {
  const int msg[2] = {static_cast<int>(stage), errno};
  [[maybe_unused]] ssize_t n = ::write(report_fd, msg, sizeof msg);
  ::_exit(127);
}

// In the child, between fork and exec (or the function): async-signal-safe calls only.
void setup_child(const Prepared& p, pid_t parent, int report_fd) {
  // Handlers of the parent must not run here (signals are blocked until the mask is cleared).
  for (int sig = 1; sig < NSIG; ++sig) {
    struct sigaction sa;
    if (sig == SIGKILL || sig == SIGSTOP || ::sigaction(sig, nullptr, &sa) != 0) continue;
    const bool handled =
        (sa.sa_flags & SA_SIGINFO) || (sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN);
    if (handled || sig == SIGINT || sig == SIGTERM || sig == SIGCHLD || sig == SIGPIPE)
      ::signal(sig, SIG_DFL);
  }
  if (p.die_with_parent) {
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(128 + SIGTERM);  // the parent died before prctl
  }
  if (p.own_group) ::setpgid(0, 0);
  if (p.max_open_files > 0) {
    const rlimit lim{p.max_open_files, p.max_open_files};
    if (::setrlimit(RLIMIT_NOFILE, &lim) != 0) report_and_exit(report_fd, Stage::kLimit);
  }
  const int sources[3] = {p.in.get(), p.out.get(), p.err.get()};
  for (int target = 0; target < 3; ++target)
    if (sources[target] >= 0 && ::dup2(sources[target], target) < 0)
      report_and_exit(report_fd, Stage::kStreams);
  if (p.err_to_out && ::dup2(STDOUT_FILENO, STDERR_FILENO) < 0)
    report_and_exit(report_fd, Stage::kStreams);
  if (!p.working_dir.empty() && ::chdir(p.working_dir.c_str()) != 0)
    report_and_exit(report_fd, Stage::kWorkingDir);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

// Forks with every signal blocked; in the child runs setup_child and then `then` (which does not
// return). Returns the pid, or throws when the child reported a failure before `then` succeeded.
template <typename Then>
pid_t fork_child(const Prepared& p, const std::string& name, Then then) {
  auto [report_read, report_write] = make_pipe();
  std::fflush(stdout);
  std::fflush(stderr);
  sigset_t all, old;
  sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    setup_child(p, parent, report_write.get());
    then(report_write.get());
    ::_exit(127);  // not reached: `then` execs or exits
  }
  const int fork_errno = errno;
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) throw Error("cannot start '" + name + "': fork: " + std::strerror(fork_errno));
  report_write.reset();
  int msg[2] = {0, 0};
  ssize_t n;
  while ((n = ::read(report_read.get(), msg, sizeof msg)) < 0 && errno == EINTR) {
  }
  if (n <= 0) return pid;  // exec succeeded (the pipe closed on exec) or the function runs
  while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
  }
  throw Error("cannot start '" + name + "': " + stage_name(msg[0]) + ": " + std::strerror(msg[1]));
}

}  // namespace

Child Child::start(const Options& options) {
  Prepared p = prepare(options, /*exec=*/true);
  Child c;
  c.pid_ = fork_child(p, p.path, [&p](int report_fd) {
    ::execve(p.path.c_str(), p.c_argv.data(), p.c_env.data());
    report_and_exit(report_fd, Stage::kExec);
  });
  c.own_group_ = p.own_group;
  c.out_ = std::move(p.out_read);
  c.err_ = std::move(p.err_read);
  return c;
}

Child Child::fork_call(const std::function<int()>& body, const Options& options) {
  Prepared p = prepare(options, /*exec=*/false);
  Child c;
  c.pid_ = fork_child(p, "function", [&body](int report_fd) {
    ::close(report_fd);  // set up: the parent may go on
    int code = 125;
    try {
      code = body();
    } catch (...) {
    }
    ::_exit(code);
  });
  c.own_group_ = p.own_group;
  c.out_ = std::move(p.out_read);
  c.err_ = std::move(p.err_read);
  return c;
}

Child::Child(Child&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      own_group_(other.own_group_),
      status_(std::exchange(other.status_, std::nullopt)),
      out_(std::move(other.out_)),
      err_(std::move(other.err_)) {}

Child& Child::operator=(Child&& other) noexcept {
  if (this != &other) {
    kill_and_reap();
    pid_ = std::exchange(other.pid_, -1);
    own_group_ = other.own_group_;
    status_ = std::exchange(other.status_, std::nullopt);
    out_ = std::move(other.out_);
    err_ = std::move(other.err_);
  }
  return *this;
}

Child::~Child() { kill_and_reap(); }

void Child::kill_and_reap() noexcept {
  if (pid_ <= 0) return;
  if (own_group_) ::kill(-pid_, SIGKILL);  // also what an ended leader left behind
  if (!status_) {
    ::kill(pid_, SIGKILL);
    while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  pid_ = -1;
  status_.reset();
  out_.reset();
  err_.reset();
}

namespace {

std::optional<ExitStatus> wait_once(pid_t pid, bool block) {
  int wait_status = 0;
  rusage usage{};
  for (;;) {
    const pid_t r = ::wait4(pid, &wait_status, block ? 0 : WNOHANG, &usage);
    if (r == pid) {
      auto secs = [](const timeval& t) { return t.tv_sec + t.tv_usec / 1e6; };
      return ExitStatus{wait_status, secs(usage.ru_utime) + secs(usage.ru_stime)};
    }
    if (r == 0) return std::nullopt;
    if (errno != EINTR)
      throw Error("waiting for process " + std::to_string(pid) + ": " + std::strerror(errno) +
                  " (reaped elsewhere, or SIGCHLD ignored)");
  }
}

}  // namespace

std::optional<ExitStatus> Child::poll() {
  if (status_) return status_;
  if (pid_ <= 0) throw Error("process: poll on a Child without a process");
  status_ = wait_once(pid_, /*block=*/false);
  return status_;
}

ExitStatus Child::wait() {
  if (status_) return *status_;
  if (pid_ <= 0) throw Error("process: wait on a Child without a process");
  status_ = wait_once(pid_, /*block=*/true);
  return *status_;
}

std::optional<ExitStatus> Child::wait_for(double seconds) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(std::max(0.0, seconds)));
  auto pause = std::chrono::microseconds(500);
  for (;;) {
    if (auto s = poll()) return s;
    const auto now = Clock::now();
    if (now >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::min<Clock::duration>(pause, deadline - now));
    pause = std::min<std::chrono::microseconds>(pause * 2, std::chrono::milliseconds(20));
  }
}

bool Child::signal(int sig) {
  if (pid_ <= 0 || status_) return false;
  return ::kill(own_group_ ? -pid_ : pid_, sig) == 0;
}

ExitStatus Child::stop(double grace_seconds) {
  if (status_) return *status_;
  signal(SIGTERM);
  if (auto s = wait_for(grace_seconds)) return *s;
  signal(SIGKILL);
  return wait();
}

std::string Child::read_stdout(std::string* stderr_text) {
  if (!out_) throw Error("process: read_stdout without a stdout pipe");
  std::string out;
  char buf[16 * 1024];
  while (out_ || err_) {
    std::vector<pollfd> fds;
    for (const UniqueFd* fd : {&out_, &err_})
      if (*fd) fds.push_back({fd->get(), POLLIN, 0});
    if (::poll(fds.data(), fds.size(), -1) < 0 && errno != EINTR)
      throw Error(std::string("process: poll: ") + std::strerror(errno));
    for (UniqueFd* fd : {&out_, &err_}) {
      if (!*fd) continue;
      const ssize_t n = ::read(fd->get(), buf, sizeof buf);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n <= 0) {
        fd->reset();
        continue;
      }
      std::string* sink = fd == &out_ ? &out : stderr_text;
      if (sink) sink->append(buf, static_cast<size_t>(n));
    }
  }
  return out;
}

ExitStatus run(const Options& options) { return Child::start(options).wait(); }

Captured run_capture(Options options) {
  options.stdout_redirect = Redirect::pipe();
  Child child = Child::start(options);
  Captured c;
  c.out = child.read_stdout();
  c.status = child.wait();
  return c;
}

}  // namespace rlhf::process
