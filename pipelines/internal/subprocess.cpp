#include "pipelines/internal/subprocess.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace rlhf::pipelines {
namespace {

// How long a background child has between SIGTERM and SIGKILL.
constexpr double kStopGraceSeconds = 10;

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

int run_child(const std::vector<std::string>& argv, const std::string& stdout_path) {
  process::Options o;
  o.argv = argv;
  if (!stdout_path.empty()) o.stdout_redirect = process::Redirect::file(stdout_path);
  return process::run(o).code();
}

std::string run_child_capture(const std::vector<std::string>& argv) {
  process::Options o;
  o.argv = argv;
  process::Captured c = process::run_capture(o);
  if (!c.status.success())
    throw Error("command failed (exit " + std::to_string(c.status.code()) +
                "): " + process::join_command(argv));
  return c.out;
}

BackgroundChild::BackgroundChild(const std::vector<std::string>& argv,
                                 const std::string& log_path) {
  process::Options o;
  o.argv = argv;
  if (!log_path.empty()) o.stdout_redirect = process::Redirect::append(log_path);
  o.die_with_parent = true;
  child_ = process::Child::start(o);
}

int BackgroundChild::stop() { return child_.stop(kStopGraceSeconds).code(); }

BackgroundChild::~BackgroundChild() {
  try {
    if (child_ && child_.running()) stop();
  } catch (...) {  // reaped elsewhere: nothing left to stop (the Child's destructor copes)
  }
}

}  // namespace rlhf::pipelines
