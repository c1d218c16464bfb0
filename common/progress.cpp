#include "common/progress.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace rlhf {

std::string format_duration(double s) {
  if (s < 0 || s != s) return "?";
  char buf[32];
  long t = static_cast<long>(s + 0.5);
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  else if (t >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

bool Progress::interactive() {
  return ::isatty(STDERR_FILENO) && std::getenv("RLHF_NO_PROGRESS") == nullptr;
}

Progress::Progress(std::string label, int64_t total, std::string unit, double log_every_seconds)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      log_every_(log_every_seconds),
      interactive_(interactive()),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_) {}

Progress::~Progress() {
  if (!finished_ && interactive_ && done_ > 0) std::fputc('\n', stderr);
}

void Progress::update(int64_t done, const std::string& extra) {
  done_ = done;
  extra_ = extra;
  auto now = std::chrono::steady_clock::now();
  double since = std::chrono::duration<double>(now - last_print_).count();
  if (interactive_ ? since >= 0.1 : since >= log_every_) {
    last_print_ = now;
    render(false);
  }
}

void Progress::finish(const std::string& extra) {
  if (finished_) return;
  if (!extra.empty()) extra_ = extra;
  render(true);
  finished_ = true;
}

void Progress::render(bool final_line) {
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double rate = elapsed > 0 ? done_ / elapsed : 0.0;
  char line[512];
  if (total_ > 0) {
    double eta = rate > 0 ? (total_ - done_) / rate : -1;
    std::snprintf(line, sizeof line, "%s %lld/%lld %s (%.0f%%) %.2f %s/s %s %s", label_.c_str(),
                  static_cast<long long>(done_), static_cast<long long>(total_), unit_.c_str(),
                  100.0 * done_ / total_, rate, unit_.c_str(),
                  final_line ? ("in " + format_duration(elapsed)).c_str()
                             : ("ETA " + format_duration(eta)).c_str(),
                  extra_.c_str());
  } else {
    std::snprintf(line, sizeof line, "%s %lld %s %.2f %s/s %s %s", label_.c_str(),
                  static_cast<long long>(done_), unit_.c_str(), rate, unit_.c_str(),
                  format_duration(elapsed).c_str(), extra_.c_str());
  }
  if (interactive_) {
    std::fprintf(stderr, "\r\033[K%s%s", line, final_line ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line);
  }
  std::fflush(stderr);
}

}  // namespace rlhf
