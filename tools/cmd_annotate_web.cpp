// `rlhf annotate web`: the browser client, a local HTTP server relaying to the annotation server
// (annotation/web_server.h, annotation/web_relay.h).
#include <cmath>
#include <cstdio>

#include "annotation/client.h"
#include "annotation/local_socket.h"
#include "annotation/web_server.h"
#include "common/error.h"
#include "tools/cli.h"

namespace {

using rlhf::cli::Args;
using rlhf::cli::Register;
namespace ann = rlhf::annotation;

bool annotation_server_reachable(const std::string& socket_path) {
  try {
    ann::Connection probe(socket_path);
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// The value of --NAME, refused (naming the flag) unless finite and in (lo, hi] ([lo, hi] when
// lo_inclusive).
double bounded(const Args& a, const std::string& name, double lo, double hi,
               bool lo_inclusive = false) {
  double v = a.get_double(name);
  if (!std::isfinite(v) || v > hi || v < lo || (!lo_inclusive && v == lo))
    throw rlhf::UsageError("--" + name + ": expected a number in " + (lo_inclusive ? "[" : "(") +
                           number(lo) + ", " + number(hi) + "], got '" + a.get(name) + "'");
  return v;
}

size_t count_flag(const Args& a, const std::string& name, int64_t lo, int64_t hi) {
  int64_t v = a.get_int(name);
  if (v < lo || v > hi)
    throw rlhf::UsageError("--" + name + ": expected an integer " + std::to_string(lo) + ".." +
                           std::to_string(hi) + ", got " + a.get(name));
  return static_cast<size_t>(v);
}

ann::WebServerOptions web_options(const Args& a) {
  ann::WebServerOptions o;
  o.listen = a.get("listen");
  o.allow_remote = a.get_bool("allow-remote");
  o.relay.socket_path = a.get("socket").empty() ? ann::default_socket_path() : a.get("socket");
  o.relay.session_idle_seconds = bounded(a, "session-hours", 0, 24 * 366) * 3600;
  o.relay.upstream_retry_seconds = bounded(a, "retry-seconds", 0, 3600, true);
  o.relay.upstream_timeout_seconds = bounded(a, "upstream-timeout", 0, 3600);
  o.relay.max_sessions_per_annotator = count_flag(a, "max-sessions-per-annotator", 1, 1000);
  o.relay.signin_free_failures = static_cast<int>(count_flag(a, "signin-free-failures", 0, 1000));
  o.relay.signin_delay_seconds = bounded(a, "signin-delay", 0, 3600);
  o.header_timeout_seconds = bounded(a, "header-timeout", 0, 3600);
  o.idle_timeout_seconds = bounded(a, "idle-timeout", 0, 86400);
  o.max_connections_per_address = count_flag(a, "max-connections-per-address", 1, 100000);
  return o;
}

Register web(
    {"annotate web",
     "rank tasks in a browser: serves a local page that relays to the annotation server",
     "[--socket PATH] [--listen 127.0.0.1:8080] [--allow-remote] [limits...]",
     {{"socket",
       "the annotation server's Unix socket (default: the server's default, "
       "$XDG_RUNTIME_DIR/rlhf/annotation.sock or /tmp/rlhf-UID/annotation.sock)",
       ""},
      {"listen", "HOST:PORT to serve the page on (port 0: any free port)", "127.0.0.1:8080"},
      {"allow-remote",
       "allow a non-loopback --listen address (anyone who can reach it can try tokens: "
       "put a TLS proxy in front)",
       "", true},
      {"session-hours", "a signed-in session unused this long ends (at most 8784)", "8"},
      {"retry-seconds",
       "per request, how long to retry a down annotation server before the page shows "
       "the banner (it keeps retrying)",
       "2"},
      {"upstream-timeout",
       "per request, seconds to wait for a hung annotation server before answering 503 "
       "(then requests are answered 503 at once until it answers again)",
       "10"},
      {"header-timeout", "seconds a connection has to send a request's headers", "10"},
      {"idle-timeout", "seconds a kept-alive connection may wait between requests", "30"},
      {"max-connections-per-address",
       "connections from one client IP address (further ones are closed at once; behind "
       "a proxy every annotator shares its address)",
       "32"},
      {"max-sessions-per-annotator",
       "signed-in sessions of one annotator; signing in once more ends the oldest", "8"},
      {"signin-free-failures",
       "failed sign-ins from one address before each further one is delayed", "5"},
      {"signin-delay",
       "seconds of the first sign-in delay; it doubles with each failure, up to 300 s", "1"}},
     [](const Args& a) {
       ann::WebServerOptions o = web_options(a);
       ann::WebServer server(o);
       if (!annotation_server_reachable(o.relay.socket_path))
         std::fprintf(stderr,
                      "warning: nothing answers on %s yet; the page will say the "
                      "annotation server is down until `rlhf annotate serve` runs\n",
                      o.relay.socket_path.c_str());
       auto [host, port] = ann::split_listen_address(o.listen);
       if (host == "0.0.0.0" || host == "::") host = "127.0.0.1";
       if (host.find(':') != std::string::npos) host = "[" + host + "]";
       std::printf(
           "annotate web: open http://%s:%u/ and sign in with your token "
           "(Ctrl-C stops)\n",
           host.c_str(), static_cast<unsigned>(server.port()));
       std::fflush(stdout);
       server.run();
       return 0;
     }});

}  // namespace
