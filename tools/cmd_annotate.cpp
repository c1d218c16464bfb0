// `rlhf annotate ...`: the annotation store's data commands and the server.
//   add-tasks, add-annotator, revoke, import, export, stats, serve
// The client and the simulator are in cmd_annotate_client.cpp.
#include <cstdio>
#include <iostream>
#include <sstream>

#include "annotation/import_export.h"
#include "annotation/server.h"
#include "annotation/sqlite_store.h"
#include "annotation/stats.h"
#include "common/error.h"
#include "common/files.h"
#include "tools/cli.h"

namespace {

using rlhf::cli::Args;
using rlhf::cli::Command;
using rlhf::cli::FlagSpec;
using rlhf::cli::Register;
namespace ann = rlhf::annotation;

FlagSpec db_flag() { return {"db", "annotation database (SQLite file)", "", false, true}; }

ann::StoreOptions existing() {
  ann::StoreOptions o;
  o.create = false;
  return o;
}

Register add_tasks({"annotate add-tasks",
                    "add ranking tasks from JSON lines {\"prompt\", \"answers\": [...]}",
                    "--db FILE --input tasks.jsonl [--overlap N]",
                    {db_flag(),
                     {"input", "JSON lines file (may be .gz)", "", false, true},
                     {"overlap", "rankings each task needs from different annotators", "1"}},
                    [](const Args& a) {
                      ann::Store store(a.get("db"));
                      int64_t n = ann::add_tasks_jsonl(store, a.get("input"),
                                                       static_cast<int>(a.get_int("overlap")));
                      std::printf("added %lld tasks to %s (%lld in total)\n",
                                  static_cast<long long>(n), a.get("db").c_str(),
                                  static_cast<long long>(store.task_count()));
                      return 0;
                    }});

Register add_annotator({"annotate add-annotator",
                        "create an annotator; prints its token as the last line (store it: only "
                        "its SHA-256 is kept)",
                        "--db FILE --name NAME [--role ROLE]",
                        {db_flag(),
                         {"name", "annotator name (unique)", "", false, true},
                         {"role", "free-text role, e.g. annotator, expert, admin", "annotator"}},
                        [](const Args& a) {
                          ann::Store store(a.get("db"));
                          std::string token = store.add_annotator(a.get("name"), a.get("role"));
                          std::printf("created annotator %s; token:\n%s\n", a.get("name").c_str(),
                                      token.c_str());
                          return 0;
                        }});

Register revoke({"annotate revoke",
                 "revoke an annotator's token (takes effect at once)",
                 "--db FILE --name NAME",
                 {db_flag(), {"name", "annotator name", "", false, true}},
                 [](const Args& a) {
                   ann::Store store(a.get("db"), existing());
                   store.set_annotator_active(a.get("name"), false);
                   std::printf("revoked annotator %s\n", a.get("name").c_str());
                   return 0;
                 }});

Register import_cmd({"annotate import",
                     "import preference data (pairs JSONL or Anthropic HH-RLHF) as ranked tasks",
                     "--db FILE --format pairs|hh --input FILE[.gz]",
                     {db_flag(),
                      {"format", "pairs or hh", "", false, true},
                      {"input", "JSON lines file, optionally gzip-compressed", "", false, true}},
                     [](const Args& a) {
                       ann::Store store(a.get("db"));
                       auto r = ann::import_preferences(store, a.get("input"), a.get("format"));
                       std::printf("imported %lld comparisons, skipped %lld lines\n",
                                   static_cast<long long>(r.imported),
                                   static_cast<long long>(r.skipped));
                       if (r.resumed_from > 0)
                         std::printf(
                             "(completed an interrupted import: its first %lld were "
                             "already stored)\n",
                             static_cast<long long>(r.resumed_from));
                       return 0;
                     }});

Register export_cmd({"annotate export",
                     "export judgements as JSON lines: pairs (for reward training) or rankings",
                     "--db FILE --format pairs|rankings|messages [--output FILE]",
                     {db_flag(),
                      {"format", "pairs, rankings or messages (pairs as conversations)", "pairs"},
                      {"output", "output file (written atomically); stdout when absent", ""}},
                     [](const Args& a) {
                       ann::Store store(a.get("db"), existing());
                       std::ostringstream out;
                       int64_t n = ann::export_jsonl(store, a.get("format"), out);
                       if (a.has("output")) {
                         rlhf::write_file_atomic(a.get("output"), out.str());
                         std::fprintf(stderr, "wrote %lld lines to %s\n", static_cast<long long>(n),
                                      a.get("output").c_str());
                       } else {
                         std::cout << out.str();
                         std::cout.flush();
                       }
                       return 0;
                     }});

Register stats_cmd({"annotate stats",
                    "task progress, per-annotator counts and times, inter-annotator agreement",
                    "--db FILE [--json]",
                    {db_flag(), {"json", "print one JSON object", "", true}},
                    [](const Args& a) {
                      ann::Store store(a.get("db"), existing());
                      auto s = ann::compute_stats(store);
                      std::string text =
                          a.get_bool("json") ? ann::stats_to_json(s) + "\n" : ann::stats_to_text(s);
                      std::fputs(text.c_str(), stdout);
                      return 0;
                    }});

std::string seconds_text(double s) {
  std::ostringstream o;
  o << s;
  return o.str();
}

// Reads a --*-timeout flag: seconds > 0.
double timeout_flag(const Args& a, const std::string& name) {
  double v = a.get_double(name);
  if (!(v > 0)) throw rlhf::UsageError("--" + name + ": expected seconds > 0, got " + a.get(name));
  return v;
}

size_t count_flag(const Args& a, const std::string& name) {
  int64_t v = a.get_int(name);
  if (v < 1) throw rlhf::UsageError("--" + name + ": expected a count >= 1, got " + a.get(name));
  return static_cast<size_t>(v);
}

const ann::ServerOptions kServeDefaults;

Register serve(
    {"annotate serve",
     "serve annotation tasks over a Unix socket until SIGINT/SIGTERM",
     "--db FILE [--socket PATH] [--lease-seconds N] [--synchronous FULL|NORMAL] [timeouts, "
     "limits]",
     {db_flag(),
      {"socket",
       "Unix socket path to listen on (default: $XDG_RUNTIME_DIR/rlhf/annotation.sock, else "
       "/tmp/rlhf-UID/annotation.sock, in a 0700 directory)",
       ""},
      {"lease-seconds", "how long a handed-out task stays reserved", "600"},
      {"synchronous", "SQLite synchronous level: FULL (power-cut safe) or NORMAL", "FULL"},
      {"socket-mode", "socket file permissions, 0600 or 0660 (0660 admits the group's users)",
       "0600"},
      {"hello-timeout", "seconds from connect to a successful Hello",
       seconds_text(kServeDefaults.hello_timeout_seconds)},
      {"frame-timeout", "seconds from a frame's first byte to its last",
       seconds_text(kServeDefaults.frame_timeout_seconds)},
      {"idle-timeout", "seconds an authenticated connection may wait between requests",
       seconds_text(kServeDefaults.idle_timeout_seconds)},
      {"write-timeout", "seconds a client has to take a response",
       seconds_text(kServeDefaults.write_timeout_seconds)},
      {"stop-timeout", "seconds SIGTERM waits for clients to take their last responses",
       seconds_text(kServeDefaults.stop_timeout_seconds)},
      {"max-connections", "open connections (lowered to the descriptor limit minus 64)",
       std::to_string(kServeDefaults.max_connections)},
      {"max-unauthenticated", "connections that have not completed Hello",
       std::to_string(kServeDefaults.max_unauthenticated)},
      {"verbose", "log connection problems", "", true}},
     [](const Args& a) {
       ann::ServerOptions o;
       o.db_path = a.get("db");
       o.socket_path = a.get("socket");
       o.lease_seconds = a.get_double("lease-seconds");
       if (o.lease_seconds <= 0) throw rlhf::UsageError("--lease-seconds must be > 0");
       std::string sync = a.get("synchronous");
       if (sync != "FULL" && sync != "NORMAL")
         throw rlhf::UsageError("--synchronous: expected FULL or NORMAL, got '" + sync + "'");
       o.synchronous_full = sync == "FULL";
       std::string mode = a.get("socket-mode");
       if (mode != "0600" && mode != "0660" && mode != "600" && mode != "660")
         throw rlhf::UsageError("--socket-mode: expected 0600 or 0660, got '" + mode + "'");
       o.socket_mode = mode.find("66") != std::string::npos ? 0660 : 0600;
       o.hello_timeout_seconds = timeout_flag(a, "hello-timeout");
       o.frame_timeout_seconds = timeout_flag(a, "frame-timeout");
       o.idle_timeout_seconds = timeout_flag(a, "idle-timeout");
       o.write_timeout_seconds = timeout_flag(a, "write-timeout");
       o.stop_timeout_seconds = timeout_flag(a, "stop-timeout");
       o.max_connections = count_flag(a, "max-connections");
       o.max_unauthenticated = count_flag(a, "max-unauthenticated");
       o.verbose = a.get_bool("verbose");
       ann::Server server(o);
       std::fprintf(stderr,
                    "rlhf annotate serve: listening on %s (db %s, %s; at most %zu connections, "
                    "descriptor limit %zu)\n",
                    server.socket_path().c_str(), o.db_path.c_str(), sync.c_str(),
                    server.max_connections(), server.descriptor_limit());
       server.run();
       auto st = server.stats();
       std::fprintf(stderr,
                    "rlhf annotate serve: stopped after %lld requests in %lld "
                    "transactions\n",
                    static_cast<long long>(st.requests), static_cast<long long>(st.batches));
       return 0;
     }});

}  // namespace
