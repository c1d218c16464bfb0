// annotation_test_server --db FILE --socket PATH [--normal] [--lease-seconds N] [--verbose]
//     [--hello-timeout S] [--frame-timeout S] [--idle-timeout S] [--write-timeout S]
//     [--stop-timeout S] [--max-connections N] [--max-unauthenticated N] [--leave-free-fds N]
// Runs the annotation Server until SIGINT/SIGTERM (used by the durability test, which SIGKILLs
// it, and by the hostile suite). --leave-free-fds N, after the server is set up (its connection
// cap fixed), opens /dev/null until the descriptor table is full and then closes N of them, so
// the server runs out of descriptors after N more connections (the EMFILE back-off test).
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "annotation/server.h"

int main(int argc, char** argv) {
  rlhf::annotation::ServerOptions o;
  long leave_free = -1;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    bool has_value = i + 1 < argc;
    if (a == "--normal") {
      o.synchronous_full = false;
    } else if (a == "--verbose") {
      o.verbose = true;
    } else if (has_value && a == "--db") {
      o.db_path = argv[++i];
    } else if (has_value && a == "--socket") {
      o.socket_path = argv[++i];
    } else if (has_value && a == "--lease-seconds") {
      o.lease_seconds = std::stod(argv[++i]);
    } else if (has_value && a == "--hello-timeout") {
      o.hello_timeout_seconds = std::stod(argv[++i]);
    } else if (has_value && a == "--frame-timeout") {
      o.frame_timeout_seconds = std::stod(argv[++i]);
    } else if (has_value && a == "--idle-timeout") {
      o.idle_timeout_seconds = std::stod(argv[++i]);
    } else if (has_value && a == "--write-timeout") {
      o.write_timeout_seconds = std::stod(argv[++i]);
    } else if (has_value && a == "--stop-timeout") {
      o.stop_timeout_seconds = std::stod(argv[++i]);
    } else if (has_value && a == "--max-connections") {
      o.max_connections = std::stoul(argv[++i]);
    } else if (has_value && a == "--max-unauthenticated") {
      o.max_unauthenticated = std::stoul(argv[++i]);
    } else if (has_value && a == "--leave-free-fds") {
      leave_free = std::stol(argv[++i]);
    } else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  try {
    rlhf::annotation::Server server(o);
    if (leave_free >= 0) {
      std::vector<int> held;
      for (int fd; (fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;) held.push_back(fd);
      for (long n = 0; n < leave_free && !held.empty(); ++n) {
        ::close(held.back());
        held.pop_back();
      }
    }
    server.run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "annotation_test_server: %s\n", e.what());
    return 1;
  }
  return 0;
}
