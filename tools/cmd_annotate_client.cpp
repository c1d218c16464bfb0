// `rlhf annotate client` (the terminal ranking tool) and `rlhf annotate simulate` (a programmatic
// annotator that ranks with a registered teacher).
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>

#include "annotation/client.h"
#include "annotation/simulator.h"
#include "annotation/terminal_client.h"
#include "common/error.h"
#include "common/files.h"
#include "tools/cli.h"

namespace {

using rlhf::cli::Args;
using rlhf::cli::Register;
namespace ann = rlhf::annotation;

// The annotator token: --token-file FILE (first line), else $RLHF_TOKEN, else --token T, which
// every local user can read in the process list (ps), hence the warning.
std::string token_from(const Args& a) {
  if (a.has("token-file") && a.has("token"))
    throw rlhf::UsageError("--token and --token-file: give one of them");
  if (a.has("token-file")) {
    const std::string path = a.get("token-file");
    if (!rlhf::file_exists(path)) throw rlhf::UsageError("--token-file " + path + ": no such file");
    std::string t = rlhf::read_file(path);
    t = t.substr(0, t.find_first_of("\r\n"));
    if (t.empty())
      throw rlhf::UsageError("--token-file " + path + ": expected the token on its first line");
    return t;
  }
  if (a.has("token")) {
    std::fprintf(stderr,
                 "warning: --token is visible to other users in the process list; use "
                 "--token-file FILE or RLHF_TOKEN\n");
    return a.get("token");
  }
  if (const char* t = std::getenv("RLHF_TOKEN")) return t;
  throw rlhf::UsageError("no token: pass --token-file FILE or set RLHF_TOKEN");
}

// --server-uid: the uid the server must run as (default: ours), checked with SO_PEERCRED.
std::optional<uid_t> server_uid_from(const Args& a) {
  if (!a.has("server-uid")) return std::nullopt;
  int64_t uid = a.get_int("server-uid");
  if (uid < 0 || uid > 0x7fffffff)
    throw rlhf::UsageError("--server-uid: expected a numeric uid, got " + a.get("server-uid"));
  return static_cast<uid_t>(uid);
}

rlhf::cli::FlagSpec socket_flag() {
  return {"socket",
          "server's Unix socket (default: the server's default, $XDG_RUNTIME_DIR/rlhf/"
          "annotation.sock or /tmp/rlhf-UID/annotation.sock)",
          ""};
}

rlhf::cli::FlagSpec server_uid_flag() {
  return {"server-uid",
          "numeric uid the server must run as; a server of any other uid is refused before the "
          "token is sent (default: your own uid)",
          ""};
}

int terminal_width() {
  winsize ws{};
  if (::isatty(STDOUT_FILENO) && ::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
    return ws.ws_col;
  if (const char* c = std::getenv("COLUMNS")) {
    int w = std::atoi(c);
    if (w > 0) return w;
  }
  return 80;
}

Register client({"annotate client",
                 "rank tasks in the terminal (also works with piped stdin)",
                 "[--socket PATH] [--token-file F] [--server-uid UID]   (token also from "
                 "RLHF_TOKEN)",
                 {socket_flag(),
                  server_uid_flag(),
                  {"token-file", "file whose first line is the annotator token", ""},
                  {"token", "annotator token (visible in ps: prefer --token-file / RLHF_TOKEN)",
                   ""}},
                 [](const Args& a) {
                   ann::ClientOptions o;
                   o.socket_path = a.get("socket");
                   o.token = token_from(a);
                   o.server_uid = server_uid_from(a);
                   ann::AnnotationClient c(o);
                   ann::TerminalClientOptions t;
                   t.width = terminal_width();
                   ann::run_terminal_client(c, std::cin, std::cout, t);
                   return 0;
                 }});

Register simulate({"annotate simulate",
                   "rank tasks with a programmatic teacher through the protocol; exits 0 when no "
                   "tasks are left",
                   "[--socket PATH] --token-file F --teacher NAME [--noise P] [--max-tasks N] "
                   "[--seed S] [--server-uid UID]   (token also from RLHF_TOKEN)",
                   {socket_flag(),
                    server_uid_flag(),
                    {"token-file", "file whose first line is the annotator token", ""},
                    {"token", "annotator token (visible in ps: prefer --token-file / RLHF_TOKEN)",
                     ""},
                    {"teacher", "teacher name (length, or one registered by a module)", "length"},
                    {"noise", "probability of a random ranking instead of the teacher's", "0"},
                    {"max-tasks", "stop after N acknowledged submissions (-1: all)", "-1"},
                    {"seed", "random seed", "0"},
                    {"retry-seconds", "keep reconnecting this long when the server is gone", "30"}},
                   [](const Args& a) {
                     ann::SimulateOptions o;
                     o.socket_path = a.get("socket");
                     o.token = token_from(a);
                     o.server_uid = server_uid_from(a);
                     o.teacher = a.get("teacher");
                     o.noise = a.get_double("noise");
                     if (o.noise < 0 || o.noise > 1)
                       throw rlhf::UsageError("--noise must be in [0, 1]");
                     o.max_tasks = a.get_int("max-tasks");
                     o.seed = static_cast<uint64_t>(a.get_int("seed"));
                     o.retry_seconds = a.get_double("retry-seconds");
                     auto r = ann::simulate(o);
                     std::printf("submitted %lld rankings (%lld rejected, %d reconnects)\n",
                                 static_cast<long long>(r.acknowledged),
                                 static_cast<long long>(r.rejected), r.reconnects);
                     return 0;
                   }});

}  // namespace
