// Child processes for the pipeline: stages run as `rlhf <stage> ...` children of the same
// executable, so a stage's memory is returned when it ends and a crash names the stage. A thin
// layer over common/process.h (which starts, watches, signals and reaps them), in the pipeline's
// terms.
//
// Stopping: while a StopOnSignals lives, SIGTERM and SIGINT do not end this process at once while
// it has children. The handler records the signal and passes it on to every child started here
// that still runs (run_child, run_child_capture, BackgroundChild; a child started later gets it at
// its start); run_child waits for its child at most the stop timeout (then SIGKILL) and throws,
// and so does every function here once a signal came, so the pipeline unwinds (BackgroundChild's
// destructor stops the server, again within the stop timeout) and exits 128 + signal. With no
// child running (the pipeline's own work: sampling, evaluation), the signal ends the process at
// once, as it would without a StopOnSignals. Children also get SIGTERM when this process dies
// without unwinding (process::Options::die_with_parent).
//
// Thread safety: none of these is thread-safe for the same BackgroundChild; the pipeline calls
// them from its main thread (children must be started there, see BackgroundChild).
// Errors: rlhf::Error naming the command or path, as listed per function; after a stop signal,
// rlhf::Error "stopped by SIGTERM" (or SIGINT) with exit code 128 + signal.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "common/process.h"

namespace rlhf::pipelines {

// Installs the stop handlers for SIGTERM and SIGINT (see above) for its lifetime; the destructor
// restores the previous ones. One at a time, on the main thread. `stop_timeout_seconds` (> 0):
// how long a child may take to end after the signal was passed on.
class StopOnSignals {
 public:
  explicit StopOnSignals(double stop_timeout_seconds);
  ~StopOnSignals();
  StopOnSignals(const StopOnSignals&) = delete;
  StopOnSignals& operator=(const StopOnSignals&) = delete;
};

// The stop signal received while a StopOnSignals lived, 0 when none.
int stop_signal();
// Throws rlhf::Error "stopped by SIG..." (exit code 128 + signal) when a stop signal was received.
void throw_if_stopped();

// Runs argv (argv[0] = program path) to completion with inherited stdio; returns the exit code
// (128 + signal when killed). `stdout_path`: when non-empty, the child's stdout goes there
// (created or truncated). Throws rlhf::Error when the program cannot be started or the file
// cannot be created, and after a stop signal (the child was stopped first).
int run_child(const std::vector<std::string>& argv, const std::string& stdout_path = "");

// Runs argv and returns its stdout (stderr is inherited); throws rlhf::Error naming the command on
// a non-zero exit.
std::string run_child_capture(const std::vector<std::string>& argv);

// A child running in the background (e.g. the annotation server), owned by this object. The
// destructor terminates it (SIGTERM, then SIGKILL after the stop timeout, 10 s without a
// StopOnSignals) and reaps it. When this process dies
// without running the destructor (SIGKILL, crash), the kernel sends the child SIGTERM
// (process::Options::die_with_parent), so it does not outlive its parent. Construct it on the main
// thread (the signal follows the thread that started the child). Throws rlhf::Error when the
// program cannot be started or the log cannot be opened.
class BackgroundChild {
 public:
  // `log_path`: when non-empty, the child's stdout is appended there.
  explicit BackgroundChild(const std::vector<std::string>& argv, const std::string& log_path = "");
  ~BackgroundChild();
  BackgroundChild(const BackgroundChild&) = delete;
  BackgroundChild& operator=(const BackgroundChild&) = delete;

  // Non-blocking: true while it runs (reaps it once it has ended).
  bool running() { return child_.running(); }
  // Sends SIGTERM (SIGKILL after the stop timeout) and waits; returns the exit code (128 + signal
  // when killed); at once when it has ended already.
  int stop();
  pid_t pid() const { return child_.pid(); }

 private:
  process::Child child_;
  int slot_ = -1;  // in the table of children a stop signal is passed on to
};

// Writes `content` to `path` readable and writable by this user only (mode 0600 from creation on;
// an existing file is truncated and set to 0600). Throws rlhf::Error naming the path.
void write_private_file(const std::string& path, const std::string& content);

}  // namespace rlhf::pipelines
