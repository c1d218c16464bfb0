// `rlhf teacher serve`: the sample external scorer (pipelines/teachers.h): a built-in rule behind
// the teacher socket protocol (proto/teacher.proto), until SIGINT / SIGTERM.
#include <csignal>
#include <cstdio>
#include <functional>

#include "pipelines/teachers.h"
#include "tools/cli.h"

namespace {

std::atomic<bool> g_stop{false};

void on_signal(int) { g_stop.store(true); }

int serve(const rlhf::cli::Args& args) {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  rlhf::pipelines::serve_rule_teacher(args.get("rule"), args.get("socket"), &g_stop, [&] {
    std::fprintf(stderr, "teacher: serving rule \"%s\" on %s\n", args.get("rule").c_str(),
                 args.get("socket").c_str());
  });
  return 0;
}

rlhf::cli::Register reg({
    "teacher serve",
    "serve a built-in rule teacher over the teacher socket protocol (a sample external scorer for "
    "PpoConfig teacher { socket: PATH }) until SIGINT/SIGTERM",
    "--socket PATH [--rule arithmetic]",
    {
        {"socket", "Unix socket path to listen on (mode 0600)", "", false, true},
        {"rule", "the rule: arithmetic (1 when the answer solves the prompt's problem, else 0)",
         "arithmetic"},
    },
    serve,
});

}  // namespace
