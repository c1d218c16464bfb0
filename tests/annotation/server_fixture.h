// Shared by the annotation tests that run a real Server: the server on its own thread, the options
// for a database and socket in a test folder, and a Hello request.
#pragma once

#include <string>
#include <thread>

#include "annotation/server.h"
#include "proto/annotation.pb.h"
#include "tests/test_support.h"

namespace rlhf::annotation::testing {

// A Server running on its own thread for the lifetime of the object (stopped and joined after).
struct RunningServer {
  explicit RunningServer(ServerOptions o) : server(o) {
    thread = std::thread([this] { server.run(); });
  }
  ~RunningServer() {
    server.stop();
    thread.join();
  }
  Server server;
  std::thread thread;
};

// dir/a.db and dir/s.sock, no signal handling (the test process owns its signals).
inline ServerOptions test_server_options(const rlhf::testing::TempDir& dir) {
  ServerOptions o;
  o.db_path = dir / "a.db";
  o.socket_path = dir / "s.sock";
  o.handle_signals = false;
  return o;
}

inline proto::Request hello_request(const std::string& token) {
  proto::Request r;
  r.set_schema_version(1);
  r.mutable_hello()->set_token(token);
  return r;
}

}  // namespace rlhf::annotation::testing
