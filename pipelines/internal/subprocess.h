// Child processes for the pipeline: stages run as `rlhf <stage> ...` children of the same
// executable, so a stage's memory is returned when it ends and a crash names the stage.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace rlhf::pipelines {

// Path of the running rlhf executable (/proc/self/exe).
std::string self_executable();

// Runs argv (argv[0] = program path) to completion with inherited stdio; returns the exit code
// (128 + signal when killed). `stdout_path`: when non-empty, the child's stdout goes there.
int run_child(const std::vector<std::string>& argv, const std::string& stdout_path = "");

// Runs argv and returns its stdout; throws rlhf::Error naming the command on non-zero exit.
std::string run_child_capture(const std::vector<std::string>& argv);

// A child running in the background (e.g. the annotation server). The destructor terminates it
// (SIGTERM, then SIGKILL after 10 s) and reaps it. When this process dies without running the
// destructor (SIGKILL, crash), the kernel sends the child SIGTERM (PR_SET_PDEATHSIG), so it does
// not outlive its parent. Construct it on the main thread (the signal follows the forking thread).
class BackgroundChild {
 public:
  explicit BackgroundChild(const std::vector<std::string>& argv, const std::string& log_path = "");
  ~BackgroundChild();
  BackgroundChild(const BackgroundChild&) = delete;
  BackgroundChild& operator=(const BackgroundChild&) = delete;

  bool running();
  // Sends SIGTERM and waits; returns the exit code.
  int stop();
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
};

// Writes `content` to `path` readable and writable by this user only (mode 0600 from creation on;
// an existing file is truncated and set to 0600). Throws rlhf::Error naming the path.
void write_private_file(const std::string& path, const std::string& content);

// "a b 'c d'" for messages.
std::string join_command(const std::vector<std::string>& argv);

}  // namespace rlhf::pipelines
