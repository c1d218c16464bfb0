// The browser client's back end (`rlhf annotate web`): turns the page's JSON requests into the
// annotation protocol, over one AnnotationClient (annotation/client.h) per signed-in session. It
// holds no data of its own: every guarantee (leases, overlap, commit before acknowledge) stays the
// annotation server's. No sockets here; annotation/web_server.h does the HTTP I/O.
//
// Routes (JSON bodies; every POST needs Content-Type application/json):
//   GET  /, /app.js, /app.css    the page (annotation/web/*, embedded at build time)
//   GET  /api/session            {annotator, csrf} for the session cookie, or 401
//   POST /api/signin  {token}    checks the token with the server (Hello); sets the cookie
//   POST /api/signout            ends the session
//   POST /api/task               GetTask + GetProgress: {task|no_task, progress}
//   POST /api/submit  {task_id, groups | none_acceptable | skip | flag, seconds}
//                                SubmitRanking with want_next_task: {saved, task|no_task, progress}
//   POST /api/undo               Undo: {undone: {task_id}} (then /api/task shows it again)
//
// Security: the session lives in an HttpOnly, SameSite=Strict cookie holding 32 random bytes;
// every POST but /api/signin must carry the session's CSRF token in X-CSRF-Token (compared in
// constant time), so another annotator's cookie or a forged cross-site request is refused (403).
// A Host header outside allowed_hosts is refused (DNS rebinding); an Origin other than the Host is
// refused. The token is held only in memory, never logged, never put in a URL.
//
// Failures: a protocol Error from the server becomes 409 {error: CODE, message}; an unreachable
// server 503 {error: "UPSTREAM_DOWN"} (the page shows a banner and retries; the next call
// reconnects); a token the server refuses 401 and the session ends.
//
// Errors: handle() never throws for a request: a bad body is answered 400 BAD_REQUEST, any other
// exception inside it 500 INTERNAL (both JSON {error, message}).
//
// Thread safety: handle() and session_count() may be called from many threads; calls of one
// session run one at a time (each session has one upstream connection). web_assets() returns
// static data that lives as long as the program.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace rlhf::annotation {

// The parts of an HTTP request the relay looks at (filled by the HTTP server).
struct WebRequest {
  std::string method;        // "GET", "POST", ...
  std::string target;        // path (and query), e.g. "/api/task"
  std::string host;          // Host header
  std::string origin;        // Origin header; "" when absent
  std::string content_type;  // Content-Type header
  std::string cookie;        // Cookie header
  std::string csrf;          // X-CSRF-Token header
  std::string body;
};

struct WebResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers, e.g. Set-Cookie
};

struct WebRelayOptions {
  std::string socket_path;                 // the annotation server's Unix socket
  double upstream_retry_seconds = 2;       // per request, before answering 503 (the page retries)
  double session_idle_seconds = 28800;     // a session unused this long ends (8 h)
  size_t max_sessions = 256;               // further sign-ins are refused (503) until some end
  std::vector<std::string> allowed_hosts;  // accepted Host headers; empty: any (--allow-remote)
  bool log_sign_ins = true;                // "alice signed in" on stderr (never the token)
};

class WebRelay {
 public:
  // `now` returns seconds on a monotonic clock (tests pass their own).
  explicit WebRelay(WebRelayOptions options, std::function<double()> now = {});
  ~WebRelay();
  WebRelay(const WebRelay&) = delete;
  WebRelay& operator=(const WebRelay&) = delete;

  WebResponse handle(const WebRequest& request);
  size_t session_count() const;

  struct Session;

 private:
  WebResponse route(const WebRequest& request);
  WebResponse sign_in(const WebRequest& request);
  WebResponse sign_out(const std::string& session_id);
  WebResponse session_info(const std::shared_ptr<Session>& session);
  WebResponse get_task(Session& session);
  WebResponse submit(Session& session, const std::string& body);
  WebResponse undo(Session& session);
  std::shared_ptr<Session> find_session(const std::string& id);
  void drop_expired_sessions(double now);

  WebRelayOptions opts_;
  std::function<double()> now_;
  struct Table;
  std::unique_ptr<Table> table_;
};

// The embedded page files (annotation/web/*), generated at build time.
struct WebAsset {
  const char* path;          // URL path, e.g. "/app.js"
  const char* content_type;  // e.g. "text/javascript; charset=utf-8"
  const char* data;
  size_t size;
};
const std::vector<WebAsset>& web_assets();

}  // namespace rlhf::annotation
