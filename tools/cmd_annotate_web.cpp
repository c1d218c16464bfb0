// `rlhf annotate web`: the browser client, a local HTTP server relaying to the annotation server
// (annotation/web_server.h, annotation/web_relay.h).
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

Register web({"annotate web",
              "rank tasks in a browser: serves a local page that relays to the annotation server",
              "[--socket PATH] [--listen 127.0.0.1:8080] [--allow-remote]",
              {{"socket",
                "the annotation server's Unix socket (default: the server's default, "
                "$XDG_RUNTIME_DIR/rlhf/annotation.sock or /tmp/rlhf-UID/annotation.sock)",
                ""},
               {"listen", "HOST:PORT to serve the page on (port 0: any free port)",
                "127.0.0.1:8080"},
               {"allow-remote",
                "allow a non-loopback --listen address (anyone who can reach it can try tokens: "
                "put a TLS proxy in front)",
                "", true},
               {"session-hours", "a signed-in session unused this long ends", "8"},
               {"retry-seconds",
                "per request, how long to retry a down annotation server before the page shows "
                "the banner (it keeps retrying)",
                "2"}},
              [](const Args& a) {
                ann::WebServerOptions o;
                o.listen = a.get("listen");
                o.allow_remote = a.get_bool("allow-remote");
                o.relay.socket_path =
                    a.get("socket").empty() ? ann::default_socket_path() : a.get("socket");
                o.relay.session_idle_seconds = a.get_double("session-hours") * 3600;
                o.relay.upstream_retry_seconds = a.get_double("retry-seconds");
                if (o.relay.session_idle_seconds <= 0)
                  throw rlhf::UsageError("--session-hours must be > 0");
                if (o.relay.upstream_retry_seconds < 0)
                  throw rlhf::UsageError("--retry-seconds must be >= 0");
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
