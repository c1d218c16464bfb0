// Child processes: start, watch, signal and reap them. The one module behind `rlhf launch`'s ranks
// (common/launch.h), the pipeline's stage children and annotation server (pipelines/), the bench
// harness's data-parallel ranks (bench/harness/) and the tests' child processes; torch-free.
//
// A Child owns one started process. It is reaped by the Child and nowhere else: waitpid() on its
// pid only, never waitpid(-1), so Children coexist with other code that starts processes. A Child
// that is destroyed while its process runs kills it (SIGKILL; the whole process group when it was
// started in its own) and reaps it, so no zombie is left; with own_process_group the descendants
// die too, so no orphan is left either (without it, a grandchild that outlives the child is not
// this module's). `die_with_parent` covers the other way round: the child gets SIGTERM when this
// process dies without running destructors (SIGKILL, a crash).
//
// Signals: this module installs no signal handlers. Reaping needs SIGCHLD not to be ignored
// (SIG_IGN or SA_NOCLDWAIT make the kernel reap children itself; wait then throws). A caller that
// wants to wake up when a child exits installs its own SIGCHLD handler (launch.cpp writes it to a
// self-pipe) and calls poll(). Every child starts with an empty signal mask and with SIGINT,
// SIGTERM, SIGCHLD and SIGPIPE at their default actions (a parent that ignores SIGPIPE does not
// hand that on); other ignored signals stay ignored (as nohup intends), handlers are reset by exec.
//
// Thread safety: a Child is not thread-safe (one thread at a time; any thread may wait on it, not
// only the one that started it, except for die_with_parent, see Options). Distinct Children may be
// used from distinct threads. start() forks: only async-signal-safe calls run in the child before
// exec, so starting from a multi-threaded process is safe; Child::fork_call is the exception (see
// there).
//
// Errors: start() and the helpers throw rlhf::Error naming the program and the reason (not found,
// not executable, a redirect file or working directory that cannot be opened, fork failure);
// poll/wait throw rlhf::Error when the child was reaped elsewhere. A child that starts and then
// fails is not an error here: its ExitStatus says how it ended.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/unique_fd.h"

namespace rlhf::process {

// ---- wait statuses -----------------------------------------------------------------------------

// The one description of a waitpid() status: "exited with status 3", "was killed by signal 9
// (SIGKILL)", or "stopped with wait status N" for anything else.
std::string describe_wait_status(int wait_status);

// The shell's exit code for a waitpid() status: the exit status, or 128 + the signal number; 1 for
// anything else.
int exit_code_of(int wait_status);

// How a reaped child ended.
struct ExitStatus {
  int wait_status = 0;     // as waitpid() reports it
  double cpu_seconds = 0;  // user + system CPU time the child (and the children it reaped) used

  bool exited() const;                               // it called exit (any status)
  int signal() const;                                // the signal that killed it, 0 when it exited
  int code() const;                                  // exit_code_of(wait_status)
  bool success() const { return wait_status == 0; }  // exited with status 0
  std::string describe() const { return describe_wait_status(wait_status); }
};

// ---- starting ----------------------------------------------------------------------------------

// Where one of a child's standard streams goes.
struct Redirect {
  enum class Kind {
    kInherit,  // this process's stream
    kNull,     // /dev/null
    kPipe,     // a pipe whose other end the Child holds (stdout_fd() / stderr_fd())
    kFile,     // `path`, created (mode 0644) or truncated; for stdin: opened for reading
    kAppend,   // `path`, created (mode 0644) or appended to
    kFd,       // `fd`, a descriptor the caller keeps owning (duplicated into the child)
    kStdout,   // stderr only: wherever the child's stdout goes (2>&1)
  };
  Kind kind = Kind::kInherit;
  std::string path;  // kFile, kAppend
  int fd = -1;       // kFd

  static Redirect inherit() { return {}; }
  static Redirect null() { return {Kind::kNull, "", -1}; }
  static Redirect pipe() { return {Kind::kPipe, "", -1}; }
  static Redirect file(std::string path) { return {Kind::kFile, std::move(path), -1}; }
  static Redirect append(std::string path) { return {Kind::kAppend, std::move(path), -1}; }
  static Redirect descriptor(int fd) { return {Kind::kFd, "", fd}; }
  static Redirect to_stdout() { return {Kind::kStdout, "", -1}; }
};

// What to start and how. Defaults: this process's environment, working directory and streams, the
// same process group, no limits changed.
struct Options {
  // The program and its arguments; argv[0] is what the program sees as its name. Not empty.
  std::vector<std::string> argv;
  // The file to execute: "" = argv[0]. A name without '/' is looked up in this process's PATH.
  std::string program;
  // Variables set for the child, in order: a name already in the base environment is replaced in
  // place, a new one appended (merge_environment).
  std::vector<std::pair<std::string, std::string>> env;
  // The base environment: false = this process's (environ), true = empty (only `env`).
  bool clear_env = false;
  std::string working_dir;   // "" = this process's
  Redirect stdin_redirect;   // kInherit, kNull, kFile or kFd
  Redirect stdout_redirect;  // any kind but kStdout
  Redirect stderr_redirect;  // any kind
  // The child leads a new process group (its pgid = its pid): signal() and the destructor reach
  // its descendants too, and a terminal's Ctrl-C does not.
  bool own_process_group = false;
  // The kernel sends the child SIGTERM when this process dies (PR_SET_PDEATHSIG). Linux ties it
  // to the thread that started the child: start such children from a thread that lives as long as
  // they should (the main thread).
  bool die_with_parent = false;
  // The child's RLIMIT_NOFILE (soft and hard); 0 = inherited.
  rlim_t max_open_files = 0;
};

// ---- the child ---------------------------------------------------------------------------------

class Child {
 public:
  // No process (pid() == -1); assign a started one.
  Child() = default;

  // Starts options.argv; returns once the program has been executed (exec succeeded). Throws
  // rlhf::Error "cannot start 'PROGRAM': REASON" when it cannot be started (nothing is left
  // running then). Flushes stdout and stderr first, so the parent's buffered output comes before
  // the child's.
  static Child start(const Options& options);

  // Runs body() in a forked copy of this process, which exits with its return value (125 when it
  // throws). options.argv, program, env and clear_env must be empty (rlhf::Error otherwise); the
  // streams, working directory, process group, die_with_parent and limits apply. The copy has
  // only the calling thread: in a multi-threaded process body() may use only async-signal-safe
  // calls (no allocation, no locks); for tests and single-threaded programs.
  static Child fork_call(const std::function<int()>& body, const Options& options = {});

  Child(Child&& other) noexcept;
  Child& operator=(Child&& other) noexcept;  // the process held before is killed and reaped
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  // Kills (SIGKILL) and reaps the process if it still runs; with own_process_group the group is
  // killed as well. Blocks until it is reaped. Never throws.
  ~Child();

  pid_t pid() const { return pid_; }
  explicit operator bool() const { return pid_ > 0; }

  // Non-blocking: reaps the process if it has ended; true while it runs.
  bool running() { return !poll().has_value(); }
  // Non-blocking: how it ended, or nullopt while it runs (and after it was reaped, the same
  // status again). Throws rlhf::Error on an empty Child or when the process was reaped elsewhere.
  std::optional<ExitStatus> poll();
  // Blocks until the process ends; returns how.
  ExitStatus wait();
  // Waits at most `seconds` (>= 0); nullopt when it still runs then.
  std::optional<ExitStatus> wait_for(double seconds);
  // Sends `sig` to the process, or to its whole group when it was started in its own. Returns
  // false when there was nothing to signal (already reaped, or gone).
  bool signal(int sig);
  // SIGTERM, then SIGKILL when it still runs after `grace_seconds`; waits and returns how it ended
  // (at once when it had ended already).
  ExitStatus stop(double grace_seconds);
  // How it ended, once reaped.
  const std::optional<ExitStatus>& status() const { return status_; }

  // The read ends of kPipe stdout / stderr (non-blocking, close-on-exec), -1 when there is none.
  // The Child owns them; close_output() closes them early (e.g. at end of stream).
  int stdout_fd() const { return out_.get(); }
  int stderr_fd() const { return err_.get(); }
  void close_stdout() { out_.reset(); }
  void close_stderr() { err_.reset(); }
  // Reads the stdout pipe to its end (blocking; stderr, if also a pipe, is read alongside and
  // discarded unless `stderr_text` is given) and closes it. Throws rlhf::Error without a pipe.
  std::string read_stdout(std::string* stderr_text = nullptr);

 private:
  void kill_and_reap() noexcept;

  pid_t pid_ = -1;
  bool own_group_ = false;
  std::optional<ExitStatus> status_;
  UniqueFd out_, err_;
};

// ---- one-call helpers --------------------------------------------------------------------------

// Starts options and waits for the end; returns how it ended.
ExitStatus run(const Options& options);

// What run_capture() returns: how the child ended and what it wrote to stdout (and to stderr when
// that was Redirect::to_stdout()).
struct Captured {
  ExitStatus status;
  std::string out;
};

// Starts options with stdout into a pipe (options.stdout_redirect is ignored), reads it to the end
// and waits. A descendant that keeps the pipe open keeps this waiting, as a shell's $(...) does.
Captured run_capture(Options options);

// ---- pieces ------------------------------------------------------------------------------------

// `base` ("NAME=value" entries, e.g. from environ) with `overrides` set: an entry of the same
// name is replaced in place, new names are appended, in order.
std::vector<std::string> merge_environment(
    const std::vector<std::string>& base,
    const std::vector<std::pair<std::string, std::string>>& overrides);

// The first executable regular file `name` in the ':'-separated `path_env` (an empty entry is
// "."); `name` itself when it contains a '/'. Throws rlhf::Error "program 'NAME' not found in
// PATH".
std::string find_in_path(const std::string& name, const std::string& path_env);

// Path of the running executable (/proc/self/exe). Throws rlhf::Error when it cannot be read.
std::string self_executable();

// "a b 'c d'": a command line for messages (arguments with blanks or quotes single-quoted).
std::string join_command(const std::vector<std::string>& argv);

}  // namespace rlhf::process
