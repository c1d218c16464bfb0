// Child processes for the pipeline: stages run as `rlhf <stage> ...` children of the same
// executable, so a stage's memory is returned when it ends and a crash names the stage. A thin
// layer over common/process.h (which starts, watches, signals and reaps them), in the pipeline's
// terms.
//
// Thread safety: none of these is thread-safe for the same BackgroundChild; the pipeline calls
// them from its main thread (BackgroundChild must be constructed there, see below).
// Errors: rlhf::Error naming the command or path, as listed per function.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "common/process.h"

namespace rlhf::pipelines {

// Runs argv (argv[0] = program path) to completion with inherited stdio; returns the exit code
// (128 + signal when killed). `stdout_path`: when non-empty, the child's stdout goes there
// (created or truncated). Throws rlhf::Error when the program cannot be started or the file
// cannot be created.
int run_child(const std::vector<std::string>& argv, const std::string& stdout_path = "");

// Runs argv and returns its stdout (stderr is inherited); throws rlhf::Error naming the command on
// a non-zero exit.
std::string run_child_capture(const std::vector<std::string>& argv);

// A child running in the background (e.g. the annotation server), owned by this object. The
// destructor terminates it (SIGTERM, then SIGKILL after 10 s) and reaps it. When this process dies
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
  // Sends SIGTERM (SIGKILL after 10 s) and waits; returns the exit code (128 + signal when
  // killed); at once when it has ended already.
  int stop();
  pid_t pid() const { return child_.pid(); }

 private:
  process::Child child_;
};

// Writes `content` to `path` readable and writable by this user only (mode 0600 from creation on;
// an existing file is truncated and set to 0600). Throws rlhf::Error naming the path.
void write_private_file(const std::string& path, const std::string& content);

}  // namespace rlhf::pipelines
