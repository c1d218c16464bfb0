// annotation_test_server --db FILE --socket PATH [--normal] [--lease-seconds N]
// Runs the annotation Server until SIGINT/SIGTERM (used by the durability test, which SIGKILLs it).
#include <cstdio>
#include <cstring>
#include <string>

#include "annotation/server.h"

int main(int argc, char** argv) {
  rlhf::annotation::ServerOptions o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--db" && i + 1 < argc)
      o.db_path = argv[++i];
    else if (a == "--socket" && i + 1 < argc)
      o.socket_path = argv[++i];
    else if (a == "--lease-seconds" && i + 1 < argc)
      o.lease_seconds = std::stod(argv[++i]);
    else if (a == "--normal")
      o.synchronous_full = false;
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  try {
    rlhf::annotation::Server server(o);
    server.run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "annotation_test_server: %s\n", e.what());
    return 1;
  }
  return 0;
}
