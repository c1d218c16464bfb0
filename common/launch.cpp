#include "common/launch.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <tuple>
#include <utility>

#include "common/error.h"
#include "common/process.h"
#include "common/unique_fd.h"

namespace rlhf::launch {

namespace {

const std::string kUsage =
    "usage: rlhf launch --nproc-per-node N [--nnodes M --node-rank R --master-addr A "
    "--master-port P --timeout S] -- PROGRAM [ARGS...]";

[[noreturn]] void bad_value(const std::string& flag, const std::string& value,
                            const std::string& expected) {
  throw UsageError("--" + flag + ": expected " + expected + ", got '" + value + "'");
}

int parse_int(const std::string& flag, const std::string& value, int min, int max,
              const std::string& expected) {
  int x = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), x);
  if (ec != std::errc() || end != value.data() + value.size() || x < min || x > max)
    bad_value(flag, value, expected);
  return x;
}

double parse_seconds(const std::string& flag, const std::string& value) {
  char* end = nullptr;
  double x = value.empty() ? NAN : std::strtod(value.c_str(), &end);
  if (std::isnan(x) || end != value.c_str() + value.size() || !std::isfinite(x) || x < 0)
    bad_value(flag, value, "a number of seconds >= 0");
  return x;
}

using FlagSetter = std::function<void(LaunchOptions&, const std::string&)>;

// The launcher's flags, by name without dashes.
const std::vector<std::pair<std::string, FlagSetter>>& launch_flags() {
  const int kMax = 1 << 20;
  static const std::vector<std::pair<std::string, FlagSetter>> flags = {
      {"nproc-per-node",
       [](LaunchOptions& o, const std::string& v) {
         o.nproc_per_node = parse_int("nproc-per-node", v, 1, kMax, "an integer >= 1");
       }},
      {"nnodes",
       [](LaunchOptions& o, const std::string& v) {
         o.nnodes = parse_int("nnodes", v, 1, kMax, "an integer >= 1");
       }},
      {"node-rank",
       [](LaunchOptions& o, const std::string& v) {
         o.node_rank = parse_int("node-rank", v, 0, kMax, "an integer >= 0");
       }},
      {"master-addr",
       [](LaunchOptions& o, const std::string& v) {
         if (v.empty()) bad_value("master-addr", v, "a host name or address");
         o.master_addr = v;
       }},
      {"master-port",
       [](LaunchOptions& o, const std::string& v) {
         o.master_port = parse_int("master-port", v, 1, 65535, "a port number in 1..65535");
       }},
      {"timeout",
       [](LaunchOptions& o, const std::string& v) { o.timeout_s = parse_seconds("timeout", v); }},
      {"stop-grace", [](LaunchOptions& o,
                        const std::string& v) { o.stop_grace_s = parse_seconds("stop-grace", v); }},
  };
  return flags;
}

const FlagSetter* find_flag(const std::string& name) {
  for (const auto& [flag, setter] : launch_flags())
    if (flag == name) return &setter;
  return nullptr;
}

}  // namespace

LaunchOptions parse_launch_args(const std::vector<std::string>& argv) {
  LaunchOptions o;
  bool has_nproc = false;
  size_t i = 0;
  for (; i < argv.size() && argv[i] != "--"; ++i) {
    const std::string& arg = argv[i];
    if (arg.size() <= 2 || arg.compare(0, 2, "--") != 0)
      throw UsageError("missing '--' before the program, got '" + arg + "' (" + kUsage + ")");
    std::string name = arg.substr(2), value;
    const auto eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    }
    std::replace(name.begin(), name.end(), '_', '-');  // torchrun's --nproc_per_node
    const FlagSetter* setter = find_flag(name);
    if (!setter) throw UsageError("unknown flag --" + name + " (" + kUsage + ")");
    if (eq == std::string::npos) {
      if (i + 1 >= argv.size() || argv[i + 1] == "--")
        throw UsageError("flag --" + name + " needs a value");
      value = argv[++i];
    }
    (*setter)(o, value);
    has_nproc = has_nproc || name == "nproc-per-node";
  }
  if (i == argv.size()) throw UsageError("missing '--' before the program (" + kUsage + ")");
  o.command.assign(argv.begin() + static_cast<std::ptrdiff_t>(i) + 1, argv.end());
  if (o.command.empty()) throw UsageError("no program after '--' (" + kUsage + ")");
  if (!has_nproc) throw UsageError("missing required flag --nproc-per-node");
  if (o.node_rank >= o.nnodes)
    bad_value("node-rank", std::to_string(o.node_rank),
              "a node rank below --nnodes (" + std::to_string(o.nnodes) + ")");
  return o;
}

int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw Error(std::string("cannot open a socket: ") + std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  const int err = errno;
  ::close(fd);
  if (!ok) throw Error(std::string("cannot find a free loopback port: ") + std::strerror(err));
  return ntohs(a.sin_port);
}

int threads_per_local_rank(int nproc_per_node) {
  const long cores = ::sysconf(_SC_NPROCESSORS_ONLN);
  return std::max<int>(1, static_cast<int>(cores > 0 ? cores : 1) / std::max(1, nproc_per_node));
}

std::vector<std::pair<std::string, std::string>> rank_environment(const LaunchOptions& options,
                                                                  int local_rank) {
  const int n = options.nproc_per_node;
  return {
      {"RANK", std::to_string(options.node_rank * n + local_rank)},
      {"WORLD_SIZE", std::to_string(options.nnodes * n)},
      {"LOCAL_RANK", std::to_string(local_rank)},
      {"LOCAL_WORLD_SIZE", std::to_string(n)},
      {"GROUP_RANK", std::to_string(options.node_rank)},
      {"MASTER_ADDR", options.master_addr},
      {"MASTER_PORT", std::to_string(options.master_port)},
      {"RLHF_LAUNCHED", "1"},
  };
}

std::string resolve_program(const std::string& program, const std::string& path_env) {
  if (program == "rlhf") return process::self_executable();
  return process::find_in_path(program, path_env);
}

RankOutputFilter::RankOutputFilter(int rank, bool keep_progress)
    : prefix_("[rank " + std::to_string(rank) + "] "), keep_progress_(keep_progress) {}

std::string RankOutputFilter::feed(std::string_view bytes) {
  // A line longer than this is written in pieces rather than held in memory.
  const size_t kMaxPending = 64 * 1024;
  std::string out;
  for (char c : bytes) {
    pending_ += c;
    if (c == '\n' || c == '\r') out += end_segment(c);
  }
  const bool live_redraw = keep_progress_ && line_has_cr_;
  if (!pending_.empty() && (live_redraw || pending_.size() >= kMaxPending)) {
    if (keep_progress_ || !line_has_cr_) {
      out += (segment_started_ ? "" : prefix_) + pending_;
      segment_started_ = true;
    }
    pending_.clear();
  }
  return out;
}

std::string RankOutputFilter::finish() {
  if (pending_.empty() && !segment_started_ && !line_has_cr_) return "";
  return feed("\n");
}

std::string RankOutputFilter::end_segment(char terminator) {
  const bool progress_line = line_has_cr_ || terminator == '\r';
  std::string out;
  if (!keep_progress_ && progress_line) {
    if (segment_started_) out = "\n";  // end the part of a long line already written
  } else if (segment_started_) {
    out = pending_;
  } else if (pending_ != "\r") {  // a bare '\r' at the start of a line moves nothing
    out = prefix_ + pending_;
  }
  pending_.clear();
  segment_started_ = false;
  line_has_cr_ = terminator == '\r';
  return out;
}

namespace {

using Clock = std::chrono::steady_clock;

// A pipe whose ends are closed on exec; the read end is non-blocking.
std::pair<UniqueFd, UniqueFd> make_pipe(bool nonblocking_write = false) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw Error(std::string("pipe: ") + std::strerror(errno));
  UniqueFd read_end(fds[0]), write_end(fds[1]);
  ::fcntl(fds[0], F_SETFL, O_NONBLOCK);
  if (nonblocking_write) ::fcntl(fds[1], F_SETFL, O_NONBLOCK);
  return {std::move(read_end), std::move(write_end)};
}

// Writes all of `text`; gives up silently when the reader has gone (EPIPE) or on other errors.
void write_all(int fd, std::string_view text) {
  while (!text.empty()) {
    ssize_t n = ::write(fd, text.data(), text.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    text.remove_prefix(static_cast<size_t>(n));
  }
}

void say(const std::string& line) { write_all(STDERR_FILENO, "rlhf launch: " + line + "\n"); }

int g_signal_pipe = -1;  // write end of SignalRelay's pipe, for the handler

extern "C" void relay_signal(int sig) {
  const int saved_errno = errno;
  const unsigned char byte = static_cast<unsigned char>(sig);
  [[maybe_unused]] ssize_t n = ::write(g_signal_pipe, &byte, 1);
  errno = saved_errno;
}

// The self-pipe trick: SIGINT, SIGTERM and SIGCHLD are written to a pipe that the main loop
// polls. SIGPIPE is ignored so a closed stdout does not kill the launcher. Restores the previous
// dispositions on destruction; one instance at a time.
class SignalRelay {
 public:
  SignalRelay() {
    std::tie(read_, write_) = make_pipe(/*nonblocking_write=*/true);
    g_signal_pipe = write_.get();
    struct sigaction sa = {};
    sa.sa_handler = relay_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < kRelayed.size(); ++i) ::sigaction(kRelayed[i], &sa, &old_[i]);
    struct sigaction ignore = {};
    ignore.sa_handler = SIG_IGN;
    ::sigaction(SIGPIPE, &ignore, &old_pipe_);
  }
  SignalRelay(const SignalRelay&) = delete;
  SignalRelay& operator=(const SignalRelay&) = delete;
  ~SignalRelay() {
    for (size_t i = 0; i < kRelayed.size(); ++i) ::sigaction(kRelayed[i], &old_[i], nullptr);
    ::sigaction(SIGPIPE, &old_pipe_, nullptr);
    g_signal_pipe = -1;
  }

  int fd() const { return read_.get(); }

  // The signals received since the last call, in order.
  std::vector<int> take() {
    std::vector<int> signals;
    unsigned char buf[64];
    ssize_t n;
    while ((n = ::read(read_.get(), buf, sizeof buf)) > 0)
      signals.insert(signals.end(), buf, buf + n);
    return signals;
  }

  static constexpr std::array<int, 3> kRelayed = {SIGINT, SIGTERM, SIGCHLD};

 private:
  UniqueFd read_, write_;
  std::array<struct sigaction, 3> old_ = {};
  struct sigaction old_pipe_ = {};
};

// One started rank: its process (group), output pipes and filters.
struct RankProcess {
  int rank = 0;
  process::Child child;  // in its own process group; killed and reaped on destruction
  RankOutputFilter out_filter, err_filter;
  bool running = true;

  RankProcess(int rank_, bool keep_progress)
      : rank(rank_), out_filter(rank_, keep_progress), err_filter(rank_, keep_progress) {}
};

// Starts `argv` (argv[0] resolved to `path`) as rank `rank` in its own process group, with stdin
// from /dev/null, stdout and stderr into pipes, `env` set on top of this process's environment.
RankProcess spawn_rank(const std::string& path, const std::vector<std::string>& argv,
                       std::vector<std::pair<std::string, std::string>> env, int rank) {
  RankProcess p(rank, /*keep_progress=*/rank == 0);
  process::Options o;
  o.argv = argv;
  o.program = path;
  o.env = std::move(env);
  o.stdin_redirect = process::Redirect::null();
  o.stdout_redirect = process::Redirect::pipe();
  o.stderr_redirect = process::Redirect::pipe();
  o.own_process_group = true;
  try {
    p.child = process::Child::start(o);
  } catch (const Error& e) {
    throw Error("starting rank " + std::to_string(rank) + ": " + e.what());
  }
  return p;
}

// Runs the ranks to completion: the main loop of run_launch().
class RankSupervisor {
 public:
  explicit RankSupervisor(const LaunchOptions& options) : options_(options) {}

  int run() {
    start_ranks();
    const auto started = Clock::now();
    while (any_running()) {
      wait_for_events(started);
      for (int sig : signals_.take())
        if (sig != SIGCHLD) forward(sig);
      reap();
      if (!stopping_ && options_.timeout_s > 0 && Clock::now() >= deadline(started))
        begin_stop(124, "--timeout of " + seconds_text(options_.timeout_s) +
                            " reached; stopping the ranks");
      if (stopping_ && !killed_ && Clock::now() >= kill_at_) kill_remaining();
    }
    return exit_code_;
  }

 private:
  void start_ranks() {
    const char* path_env = std::getenv("PATH");
    const std::string path = resolve_program(options_.command[0], path_env ? path_env : "");
    // Like torchrun: ranks sharing a machine share its cores. Unless the user chose, each rank's
    // OpenMP / OpenBLAS / torch intra-op pools get cores / nproc_per_node threads (at least 1).
    const auto threads = threads_per_local_rank(options_.nproc_per_node);
    std::vector<std::pair<std::string, std::string>> thread_env;
    if (options_.nproc_per_node > 1 && !std::getenv("OMP_NUM_THREADS"))
      thread_env.emplace_back("OMP_NUM_THREADS", std::to_string(threads));
    try {
      for (int local = 0; local < options_.nproc_per_node; ++local) {
        auto env = thread_env;  // set on top of this process's environment, in order
        for (auto& kv : rank_environment(options_, local)) env.push_back(std::move(kv));
        int rank = options_.node_rank * options_.nproc_per_node + local;
        ranks_.push_back(spawn_rank(path, options_.command, std::move(env), rank));
      }
    } catch (...) {
      ranks_.clear();  // kills and reaps the ranks already started
      throw;
    }
  }

  bool any_running() const {
    return std::any_of(ranks_.begin(), ranks_.end(), [](const auto& r) { return r.running; });
  }

  Clock::time_point deadline(Clock::time_point started) const {
    return started + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(options_.timeout_s));
  }

  // Polls the signal pipe and the ranks' output until something happens or a timer is due;
  // copies the output that arrived.
  void wait_for_events(Clock::time_point started) {
    auto wake = Clock::now() + std::chrono::seconds(1);  // reap even if a SIGCHLD went missing
    if (stopping_ && !killed_) wake = std::min(wake, kill_at_);
    if (!stopping_ && options_.timeout_s > 0) wake = std::min(wake, deadline(started));
    auto ms = std::chrono::ceil<std::chrono::milliseconds>(wake - Clock::now()).count();

    std::vector<pollfd> fds = {{signals_.fd(), POLLIN, 0}};
    std::vector<std::pair<RankProcess*, bool>> owners = {{nullptr, false}};
    for (auto& r : ranks_) {
      for (bool is_stdout : {true, false}) {
        const int fd = is_stdout ? r.child.stdout_fd() : r.child.stderr_fd();
        if (fd < 0) continue;
        fds.push_back({fd, POLLIN, 0});
        owners.push_back({&r, is_stdout});
      }
    }
    if (::poll(fds.data(), fds.size(), static_cast<int>(std::max<long long>(ms, 0))) <= 0) return;
    for (size_t i = 1; i < fds.size(); ++i)
      if (fds[i].revents != 0) copy_output(*owners[i].first, owners[i].second, 64 * 1024);
  }

  // Reads up to `limit` bytes of a rank's stdout (or stderr) and writes them, filtered, to ours;
  // at end of stream writes the partial last line and closes the pipe.
  void copy_output(RankProcess& r, bool is_stdout, size_t limit) {
    RankOutputFilter& filter = is_stdout ? r.out_filter : r.err_filter;
    const int target = is_stdout ? STDOUT_FILENO : STDERR_FILENO;
    char buf[16 * 1024];
    for (size_t total = 0; total < limit;) {
      const int fd = is_stdout ? r.child.stdout_fd() : r.child.stderr_fd();
      if (fd < 0) return;
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) return;
      if (n <= 0) {
        write_all(target, filter.finish());
        close_output(r, is_stdout);
        return;
      }
      write_all(target, filter.feed(std::string_view(buf, static_cast<size_t>(n))));
      total += static_cast<size_t>(n);
    }
  }

  static void close_output(RankProcess& r, bool is_stdout) {
    if (is_stdout) {
      r.child.close_stdout();
    } else {
      r.child.close_stderr();
    }
  }

  // Collects the ranks that exited. Their pipes are drained and closed then, since a process
  // they left behind may keep the pipes open.
  void reap() {
    for (auto& r : ranks_) {
      if (!r.running) continue;
      const std::optional<process::ExitStatus> status = r.child.poll();
      if (!status) continue;
      r.running = false;
      for (bool is_stdout : {true, false}) {
        copy_output(r, is_stdout, 4 << 20);
        write_all(is_stdout ? STDOUT_FILENO : STDERR_FILENO,
                  (is_stdout ? r.out_filter : r.err_filter).finish());
        close_output(r, is_stdout);
      }
      if (!status->success() && !stopping_) {
        std::string what = "rank " + std::to_string(r.rank) + " (pid " +
                           std::to_string(r.child.pid()) + ") " + status->describe();
        if (any_running()) what += "; stopping the other ranks";
        begin_stop(status->code(), what);
      }
    }
  }

  void forward(int sig) {
    const char* name = sigabbrev_np(sig);
    say(std::string("got SIG") + (name ? name : "?") + "; forwarding it to the ranks");
    signal_running(sig);
    if (!stopping_) begin_stop(128 + sig, "");
  }

  // Records the launcher's exit code and arms the SIGKILL timer; with a reason (not for a
  // forwarded signal, which the ranks already got) also says it and SIGTERMs the ranks.
  void begin_stop(int exit_code, const std::string& reason) {
    stopping_ = true;
    exit_code_ = exit_code;
    kill_at_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                  std::chrono::duration<double>(options_.stop_grace_s));
    if (reason.empty()) return;
    say(reason);
    signal_running(SIGTERM);
  }

  void kill_remaining() {
    killed_ = true;
    if (!any_running()) return;
    say("ranks still running " + seconds_text(options_.stop_grace_s) +
        " after SIGTERM; sending SIGKILL");
    signal_running(SIGKILL);
  }

  void signal_running(int sig) {
    for (auto& r : ranks_)
      if (r.running) r.child.signal(sig);
  }

  static std::string seconds_text(double s) {
    std::string text = std::to_string(s);
    text.erase(text.find_last_not_of('0') + 1);
    if (text.back() == '.') text.pop_back();
    return text + " s";
  }

  const LaunchOptions& options_;
  SignalRelay signals_;
  std::vector<RankProcess> ranks_;
  bool stopping_ = false;  // a rank failed, a signal came or the timeout passed
  bool killed_ = false;    // SIGKILL was sent
  int exit_code_ = 0;
  Clock::time_point kill_at_;
};

}  // namespace

int run_launch(const LaunchOptions& options) { return RankSupervisor(options).run(); }

}  // namespace rlhf::launch
