#include "pipelines/internal/subprocess.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>

#include "common/error.h"

namespace rlhf::pipelines {
namespace {

// How long a child has between the stop signal and SIGKILL, without a StopOnSignals.
constexpr double kStopGraceSeconds = 10;

// The stop state the signal handler shares with the main thread: the signal received, and the pids
// of the running children it is passed on to (lock-free atomics: async-signal-safe).
volatile std::sig_atomic_t g_stop_signal = 0;
constexpr int kMaxChildren = 64;
std::array<std::atomic<pid_t>, kMaxChildren> g_children{};
double g_stop_timeout = kStopGraceSeconds;
bool g_installed = false;
struct sigaction g_old_term = {}, g_old_int = {};

// With no child running, the pipeline is inside its own work (sampling, evaluation): it ends at
// once, by the signal, as a kill would end it (a rerun resumes the same way); children started
// in the meantime get SIGTERM from die_with_parent.
extern "C" void pass_on_stop_signal(int sig) {
  const int saved = errno;
  g_stop_signal = sig;
  bool passed_on = false;
  for (auto& pid : g_children)
    if (const pid_t p = pid.load(); p > 0) passed_on = ::kill(p, sig) == 0 || passed_on;
  if (!passed_on) {
    ::signal(sig, SIG_DFL);
    ::raise(sig);  // delivered when the handler returns
  }
  errno = saved;
}

const char* signal_name(int sig) { return sig == SIGINT ? "SIGINT" : "SIGTERM"; }

// Puts `pid` in the table (a signal that came already is passed on at once); the slot, -1 when the
// table is full (the child then still has die_with_parent).
int register_child(pid_t pid) {
  for (int i = 0; i < kMaxChildren; ++i) {
    pid_t none = 0;
    if (g_children[i].compare_exchange_strong(none, pid)) {
      if (g_stop_signal) ::kill(pid, g_stop_signal);
      return i;
    }
  }
  return -1;
}

void unregister_child(int slot) {
  if (slot >= 0) g_children[slot].store(0);
}

// A started child in the table for as long as this lives.
struct Registered {
  explicit Registered(pid_t pid) : slot(register_child(pid)) {}
  ~Registered() { unregister_child(slot); }
  Registered(const Registered&) = delete;
  Registered& operator=(const Registered&) = delete;
  int slot;
};

// Waits for `child`; once a stop signal came (and was passed on), at most the stop timeout, then
// SIGKILL.
process::ExitStatus wait_stoppable(process::Child& child, const std::string& what) {
  for (;;) {
    if (auto s = child.wait_for(0.1)) return *s;
    if (!g_stop_signal) continue;
    if (auto s = child.wait_for(g_stop_timeout)) return *s;
    std::fprintf(stderr, "pipeline: %s still runs %.0f s after %s; killing it\n", what.c_str(),
                 g_stop_timeout, signal_name(g_stop_signal));
    child.signal(SIGKILL);
    return child.wait();
  }
}

process::Child start_stoppable(process::Options o) {
  throw_if_stopped();
  o.die_with_parent = true;
  return process::Child::start(o);
}

}  // namespace

StopOnSignals::StopOnSignals(double stop_timeout_seconds) {
  if (g_installed) throw Error("pipeline: stop handlers installed twice");
  if (!(stop_timeout_seconds > 0))
    throw Error("pipeline: stop timeout must be > 0 seconds, got " +
                std::to_string(stop_timeout_seconds));
  g_stop_timeout = stop_timeout_seconds;
  g_stop_signal = 0;
  struct sigaction sa = {};
  sa.sa_handler = pass_on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  ::sigaction(SIGTERM, &sa, &g_old_term);
  ::sigaction(SIGINT, &sa, &g_old_int);
  g_installed = true;
}

StopOnSignals::~StopOnSignals() {
  ::sigaction(SIGTERM, &g_old_term, nullptr);
  ::sigaction(SIGINT, &g_old_int, nullptr);
  g_stop_timeout = kStopGraceSeconds;
  g_installed = false;
}

int stop_signal() { return g_stop_signal; }

void throw_if_stopped() {
  if (const int sig = g_stop_signal)
    throw Error(std::string("stopped by ") + signal_name(sig), 128 + sig);
}

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

int run_child(const std::vector<std::string>& argv, const std::string& stdout_path) {
  process::Options o;
  o.argv = argv;
  if (!stdout_path.empty()) o.stdout_redirect = process::Redirect::file(stdout_path);
  process::Child child = start_stoppable(o);
  const Registered registered(child.pid());
  const process::ExitStatus status = wait_stoppable(child, process::join_command(argv));
  throw_if_stopped();
  return status.code();
}

std::string run_child_capture(const std::vector<std::string>& argv) {
  process::Options o;
  o.argv = argv;
  o.stdout_redirect = process::Redirect::pipe();
  process::Child child = start_stoppable(o);
  const Registered registered(child.pid());
  const std::string out = child.read_stdout();
  const process::ExitStatus status = wait_stoppable(child, process::join_command(argv));
  throw_if_stopped();
  if (!status.success())
    throw Error("command failed (exit " + std::to_string(status.code()) +
                "): " + process::join_command(argv));
  return out;
}

BackgroundChild::BackgroundChild(const std::vector<std::string>& argv,
                                 const std::string& log_path) {
  process::Options o;
  o.argv = argv;
  if (!log_path.empty()) o.stdout_redirect = process::Redirect::append(log_path);
  child_ = start_stoppable(o);
  slot_ = register_child(child_.pid());
}

int BackgroundChild::stop() {
  const int code = child_.stop(g_stop_timeout).code();
  unregister_child(slot_);
  slot_ = -1;
  return code;
}

BackgroundChild::~BackgroundChild() {
  try {
    if (child_ && child_.running()) stop();
  } catch (...) {  // reaped elsewhere: nothing left to stop (the Child's destructor copes)
  }
  unregister_child(slot_);
}

}  // namespace rlhf::pipelines
