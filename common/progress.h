// Progress display for long work: step, rate, ETA on a terminal; quiet when stderr is not a TTY
// (logs, CI), where it prints at most one line every `log_every_seconds`.
// Thread safety: a Progress is updated from one thread at a time (it writes stderr unlocked).
// Never throws beyond std::bad_alloc.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace rlhf {

class Progress {
 public:
  // total: number of steps (0 = unknown). unit: what a step is ("step", "task", "tok").
  Progress(std::string label, int64_t total, std::string unit = "step",
           double log_every_seconds = 30.0);
  ~Progress();

  // Sets the absolute position and an optional extra text (e.g. "loss 2.31").
  void update(int64_t done, const std::string& extra = "");
  // Ends the line (terminal) and prints a final summary line.
  void finish(const std::string& extra = "");

  // True when stderr is a terminal and RLHF_NO_PROGRESS is unset.
  static bool interactive();

 private:
  void render(bool final_line);

  std::string label_, unit_, extra_;
  int64_t total_, done_ = 0;
  double log_every_;
  bool interactive_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_print_;
};

// "1h02m", "3m05s", "12s"
std::string format_duration(double seconds);

}  // namespace rlhf
