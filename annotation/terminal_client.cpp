#include "annotation/terminal_client.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>
#include <thread>

#include "annotation/ranking.h"
#include "common/error.h"

namespace rlhf::annotation {

std::string wrap_text(const std::string& text, int width, const std::string& indent) {
  int avail = std::max(20, width - static_cast<int>(indent.size()));
  std::string out;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream words(line);
    std::string word, cur;
    bool any = false;
    while (words >> word) {
      while (static_cast<int>(word.size()) > avail) {  // hard-break very long words
        if (!cur.empty()) {
          out += indent + cur + "\n";
          cur.clear();
        }
        out += indent + word.substr(0, avail) + "\n";
        word = word.substr(avail);
      }
      if (!cur.empty() && static_cast<int>(cur.size() + 1 + word.size()) > avail) {
        out += indent + cur + "\n";
        cur.clear();
      }
      cur += (cur.empty() ? "" : " ") + word;
      any = true;
    }
    if (any || cur.empty()) out += indent + cur + "\n";
  }
  return out;
}

namespace {

const char* kHelp =
    "Rank the answers from best to worst with their letters:\n"
    "  B>A=C>D   B is best, A and C tie, D is worst (every answer exactly once)\n"
    "  n         none of the answers is acceptable\n"
    "  s         skip this task (someone else will rank it)\n"
    "  f REASON  flag the task as problematic (e.g. f prompt is offensive)\n"
    "  u         undo your last submission (while it is still open) and rank it again\n"
    "  ?         this help\n"
    "  q         quit (the task goes back to the queue when its lease expires)\n";

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

// Asks the server for the next task; throws Error when it answers with an error.
proto::Response request_task(AnnotationClient& client) {
  proto::Request get;
  get.mutable_get_task();
  proto::Response r = client.call(get);
  if (r.has_error()) throw Error("get_task: " + r.error().message());
  return r;
}

// Prints the rule, the annotator's progress (when the server gives it), the prompt and the
// lettered answers.
void show_task(AnnotationClient& client, std::ostream& out, const proto::Task& task, int width) {
  proto::Request preq;
  preq.mutable_get_progress();
  proto::Response pr = client.call(preq);
  std::string rule(static_cast<size_t>(std::max(20, std::min(width, 100))), '-');
  out << rule << "\n";
  if (pr.has_progress()) {
    char buf[200];
    std::snprintf(
        buf, sizeof buf, "Task %lld   done %lld, remaining %lld, your median %.1f s\n",
        static_cast<long long>(task.task_id()), static_cast<long long>(pr.progress().done()),
        static_cast<long long>(pr.progress().remaining()), pr.progress().median_seconds());
    out << buf;
  }
  out << "\nPrompt:\n" << wrap_text(task.prompt(), width, "  ") << "\n";
  for (int i = 0; i < task.answers_size(); ++i) {
    std::string label(1, static_cast<char>('A' + i));
    out << label << ")\n" << wrap_text(task.answers(i), width, "   ") << "\n";
  }
}

// What to do after one line of input for the task on screen.
enum class Step {
  kAskAgain,  // show the prompt again for the same task
  kSubmit,    // the submission is filled in: send it
  kNextTask,  // done with this task
  kQuit,      // the annotator quit, or input ended
};

// `u`: undoes this session's last submission, named by its ranking id (client.call() sends a
// request again when its reply is lost: the server then undoes nothing more); its task comes
// back from the queue.
Step undo_last(AnnotationClient& client, std::ostream& out, TerminalClientResult& result) {
  if (result.last_ranking_id == 0) {
    out << "Nothing to undo: no submission of this session is left to undo.\n";
    return Step::kAskAgain;
  }
  proto::Request u;
  u.mutable_undo()->set_ranking_id(result.last_ranking_id);
  proto::Response ur = client.call(u);
  if (!ur.has_undone()) {
    out << "Cannot undo: " << ur.error().message() << "\n";
    return Step::kAskAgain;
  }
  result.last_ranking_id = 0;
  ++result.undone;
  --result.submitted;
  out << "Undid your submission of task " << ur.undone().task_id() << "; it will be shown again.\n";
  return Step::kNextTask;
}

// `f [reason]`: flags the task, asking for the reason until one is given.
Step fill_flag(const std::string& line, std::istream& in, std::ostream& out,
               proto::SubmitRanking* s) {
  std::string reason = trim(line.substr(1));
  while (reason.empty()) {
    out << "reason for flagging> ";
    out.flush();
    if (!std::getline(in, reason)) return Step::kQuit;
    reason = trim(reason);
  }
  s->set_flag(reason);
  return Step::kSubmit;
}

// A ranking such as B>A=C; explains a malformed one.
Step fill_ranking(const std::string& line, int n, std::ostream& out, proto::SubmitRanking* s) {
  try {
    for (const auto& g : parse_ranking(line, n)) {
      auto* pg = s->add_groups();
      for (int i : g) pg->add_answers(static_cast<uint32_t>(i));
    }
  } catch (const Error& e) {
    out << "Not a ranking: " << e.what() << ". Type ? for help.\n";
    return Step::kAskAgain;
  }
  return Step::kSubmit;
}

// Acts on one non-empty line typed for a task with `n` answers, filling `s` when it is a
// submission.
Step handle_line(AnnotationClient& client, const std::string& line, int n, std::istream& in,
                 std::ostream& out, TerminalClientResult& result, proto::SubmitRanking* s) {
  if (line == "?" || line == "h" || line == "help") {
    out << kHelp;
    return Step::kAskAgain;
  }
  if (line == "q") return Step::kQuit;
  if (line == "u") return undo_last(client, out, result);
  if (line == "n") {
    s->set_none_acceptable(true);
    return Step::kSubmit;
  }
  if (line == "s") {
    s->set_skip(true);
    return Step::kSubmit;
  }
  if (line[0] == 'f' && (line.size() == 1 || line[1] == ' ')) return fill_flag(line, in, out, s);
  return fill_ranking(line, n, out, s);
}

// Sends a filled-in submission; true when the task is done with (saved, or refused for good).
bool send_submission(AnnotationClient& client, const proto::Request& sub, std::ostream& out,
                     TerminalClientResult& result) {
  proto::Response ack = client.call(sub);
  if (ack.has_submitted()) {
    ++result.submitted;
    result.last_ranking_id = ack.submitted().ranking_id();
    out << "Saved.\n";
    return true;
  }
  out << "Not saved: " << ack.error().message() << "\n";
  auto code = ack.error().code();
  return code == proto::Error::TASK_FULL || code == proto::Error::ALREADY_SUBMITTED ||
         code == proto::Error::UNKNOWN_TASK || code == proto::Error::NOT_LEASED;
}

// Prompts for `task` (shown at `shown`) until it is done with; false when the annotator quit or
// input ended.
bool rank_task(AnnotationClient& client, std::istream& in, std::ostream& out,
               const proto::Task& task, std::chrono::steady_clock::time_point shown,
               TerminalClientResult& result) {
  int n = task.answers_size();
  for (;;) {
    out << "ranking (e.g. " << (n >= 3 ? "B>A=C" : "B>A")
        << "; n none, s skip, f flag, u undo, ? help, q quit)> ";
    out.flush();
    std::string line;
    if (!std::getline(in, line)) {
      out << "\n";
      return false;
    }
    line = trim(line);
    if (line.empty()) continue;
    proto::Request sub;
    auto* s = sub.mutable_submit();
    s->set_task_id(task.task_id());
    Step step = handle_line(client, line, n, in, out, result, s);
    if (step == Step::kQuit) return false;
    if (step == Step::kNextTask) return true;
    if (step == Step::kAskAgain) continue;
    s->set_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - shown).count());
    if (send_submission(client, sub, out, result)) return true;
  }
}

}  // namespace

TerminalClientResult run_terminal_client(AnnotationClient& client, std::istream& in,
                                         std::ostream& out, const TerminalClientOptions& options) {
  TerminalClientResult result;
  bool waiting_note = false;
  for (;;) {
    proto::Response r = request_task(client);
    if (r.has_no_task()) {
      if (r.no_task().retry_after_seconds() <= 0) {
        out << "No tasks left for you. Thank you! (" << result.submitted << " submitted)\n";
        result.finished = true;
        return result;
      }
      if (!waiting_note) out << "The remaining tasks are leased by others; waiting...\n";
      waiting_note = true;
      out.flush();
      std::this_thread::sleep_for(std::chrono::duration<double>(
          std::min(options.idle_poll_seconds, r.no_task().retry_after_seconds())));
      continue;
    }
    waiting_note = false;
    show_task(client, out, r.task(), options.width);
    auto shown = std::chrono::steady_clock::now();
    if (!rank_task(client, in, out, r.task(), shown, result)) return result;
  }
}

}  // namespace rlhf::annotation
