// The ranking tool for people (`rlhf annotate client`): shows a task, reads a ranking, submits it.
// Works the same on a terminal and with piped stdin, so it can be scripted and tested.
//
// Commands at the prompt: a ranking like `B>A=C>D` (ties with '='), `n` none acceptable, `s` skip,
// `f [reason]` flag (asks for the reason when missing), `u` undo the last submission of this
// session while it is still open (once: the Undo names it, so a retry undoes nothing more), `?`
// help, `q` quit. Invalid input is explained and asked again. End of input quits.
//
// Errors: run_terminal_client throws rlhf::Error when the server answers get_task with an error,
// and passes on the client's exceptions (rlhf::Error when the server stays away longer than its
// retry_seconds or refuses the token, WrongServerUser; annotation/client.h).
// Thread safety: run_terminal_client runs on the calling thread and uses `client`, `in` and `out`
// there only (the client, like every AnnotationClient, one thread at a time); wrap_text is pure.
#pragma once

#include <istream>
#include <ostream>
#include <string>

#include "annotation/client.h"

namespace rlhf::annotation {

struct TerminalClientOptions {
  int width = 80;                // wrap text to this many columns
  double idle_poll_seconds = 2;  // wait between polls while other annotators hold the last tasks
};

struct TerminalClientResult {
  int64_t submitted = 0;  // acknowledged submissions (rankings, none, skips, flags)
  int64_t undone = 0;
  // What `u` undoes: the ranking id of this session's latest acknowledged submission, 0 when there
  // is none (nothing submitted yet, or it was undone). Undo names it, so a retried Undo (a lost
  // reply) never undoes an earlier submission too.
  int64_t last_ranking_id = 0;
  bool finished = false;  // the queue ran out (as opposed to q / end of input)
};

TerminalClientResult run_terminal_client(AnnotationClient& client, std::istream& in,
                                         std::ostream& out, const TerminalClientOptions& options);

// Word-wraps `text` to `width` columns, prefixing every line with `indent`; keeps the text's own
// line breaks.
std::string wrap_text(const std::string& text, int width, const std::string& indent);

}  // namespace rlhf::annotation
