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

}  // namespace

TerminalClientResult run_terminal_client(AnnotationClient& client, std::istream& in,
                                         std::ostream& out, const TerminalClientOptions& options) {
  TerminalClientResult result;
  bool waiting_note = false;
  for (;;) {
    proto::Request get;
    get.mutable_get_task();
    proto::Response r = client.call(get);
    if (r.has_error()) throw Error("get_task: " + r.error().message());
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
    const proto::Task& task = r.task();
    int n = task.answers_size();

    proto::Request preq;
    preq.mutable_get_progress();
    proto::Response pr = client.call(preq);
    std::string rule(static_cast<size_t>(std::max(20, std::min(options.width, 100))), '-');
    out << rule << "\n";
    if (pr.has_progress()) {
      char buf[200];
      std::snprintf(
          buf, sizeof buf, "Task %lld   done %lld, remaining %lld, your median %.1f s\n",
          static_cast<long long>(task.task_id()), static_cast<long long>(pr.progress().done()),
          static_cast<long long>(pr.progress().remaining()), pr.progress().median_seconds());
      out << buf;
    }
    out << "\nPrompt:\n" << wrap_text(task.prompt(), options.width, "  ") << "\n";
    for (int i = 0; i < n; ++i) {
      std::string label(1, static_cast<char>('A' + i));
      out << label << ")\n" << wrap_text(task.answers(i), options.width, "   ") << "\n";
    }
    auto shown = std::chrono::steady_clock::now();

    bool next_task = false;
    while (!next_task) {
      out << "ranking (e.g. " << (n >= 3 ? "B>A=C" : "B>A")
          << "; n none, s skip, f flag, u undo, ? help, q quit)> ";
      out.flush();
      std::string line;
      if (!std::getline(in, line)) {
        out << "\n";
        return result;
      }
      line = trim(line);
      if (line.empty()) continue;
      proto::Request sub;
      auto* s = sub.mutable_submit();
      s->set_task_id(task.task_id());
      if (line == "?" || line == "h" || line == "help") {
        out << kHelp;
        continue;
      } else if (line == "q") {
        return result;
      } else if (line == "u") {
        proto::Request u;
        u.mutable_undo();
        proto::Response ur = client.call(u);
        if (ur.has_undone()) {
          ++result.undone;
          --result.submitted;
          out << "Undid your submission of task " << ur.undone().task_id()
              << "; it will be shown again.\n";
          next_task = true;
        } else {
          out << "Cannot undo: " << ur.error().message() << "\n";
        }
        continue;
      } else if (line == "n") {
        s->set_none_acceptable(true);
      } else if (line == "s") {
        s->set_skip(true);
      } else if (line[0] == 'f' && (line.size() == 1 || line[1] == ' ')) {
        std::string reason = trim(line.substr(1));
        while (reason.empty()) {
          out << "reason for flagging> ";
          out.flush();
          if (!std::getline(in, reason)) return result;
          reason = trim(reason);
        }
        s->set_flag(reason);
      } else {
        try {
          for (const auto& g : parse_ranking(line, n)) {
            auto* pg = s->add_groups();
            for (int i : g) pg->add_answers(static_cast<uint32_t>(i));
          }
        } catch (const Error& e) {
          out << "Not a ranking: " << e.what() << ". Type ? for help.\n";
          continue;
        }
      }
      s->set_seconds(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - shown).count());
      proto::Response ack = client.call(sub);
      if (ack.has_submitted()) {
        ++result.submitted;
        out << "Saved.\n";
        next_task = true;
      } else {
        out << "Not saved: " << ack.error().message() << "\n";
        auto code = ack.error().code();
        next_task = code == proto::Error::TASK_FULL || code == proto::Error::ALREADY_SUBMITTED ||
                    code == proto::Error::UNKNOWN_TASK || code == proto::Error::NOT_LEASED;
      }
    }
  }
}

}  // namespace rlhf::annotation
