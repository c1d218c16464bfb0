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
// Availability: every upstream call has a deadline (upstream_timeout_seconds for one HTTP
// request, all its calls together); a server that does not answer in time (hung, SIGSTOPped) is
// answered 503 UPSTREAM_DOWN and marked hung: until a call succeeds again, only one request at a
// time is sent to it and the others are answered 503 at once, so nothing piles up behind it.
// answer_locally() answers everything that needs no upstream call (the page, refusals, session
// info, sign-out, throttled sign-ins) without blocking, and names the lane of the rest: the
// requests of one lane (one session, or the sign-ins of one address) must run one at a time, so
// the caller queues them instead of holding a thread per waiting request (web_server.h does).
// Limits: an annotator has at most max_sessions_per_annotator sessions (signing in once more ends
// the oldest); all annotators together max_sessions. Sign-in failures (a token the server
// refuses) are counted per client address: after signin_free_failures of them, each further
// failure makes the address wait signin_delay_seconds, doubling up to signin_max_delay_seconds,
// before its next attempt (earlier attempts are answered 429 TOO_MANY_SIGN_INS with Retry-After).
// Failures are forgotten after an hour without one, or when the address signs in. Each failure
// is logged with the address and the counts, never the token.
//
// Errors: handle() never throws for a request: a bad body (wrong JSON types included) is answered
// 400 BAD_REQUEST naming the field, any other exception inside it 500 INTERNAL (both JSON
// {error, message}). The constructor throws UsageError naming an option that is out of range.
//
// Thread safety: handle(), answer_locally() and session_count() may be called from many threads;
// calls of one session run one at a time (each session has one upstream connection; a second one
// waits for the first inside handle(), which is why callers queue by lane). web_assets() returns
// static data that lives as long as the program.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
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
  std::string peer;  // the client's IP address ("127.0.0.1"): sign-in throttling is per address
};

struct WebResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers, e.g. Set-Cookie
};

struct WebRelayOptions {
  std::string socket_path;                // the annotation server's Unix socket
  double upstream_retry_seconds = 2;      // per request, before answering 503 (the page retries)
  double upstream_timeout_seconds = 10;   // per request, all upstream calls: then 503 (server hung)
  double session_idle_seconds = 28800;    // a session unused this long ends (8 h); at most 1 year
  size_t max_sessions = 256;              // further sign-ins are refused (503) until some end
  size_t max_sessions_per_annotator = 8;  // signing in once more ends the annotator's oldest
  int signin_free_failures = 5;           // failed sign-ins per address before the delays begin
  double signin_delay_seconds = 1;        // the first delay; doubles with each further failure
  double signin_max_delay_seconds = 300;  // the delay grows up to this
  std::vector<std::string> allowed_hosts;  // accepted Host headers; empty: any (--allow-remote)
  bool log_sign_ins = true;  // sign-ins, sign-outs and failed sign-ins on stderr (never the token)
};

// Throws UsageError naming the first option out of range (non-finite, negative or zero where a
// positive number is needed, session_idle_seconds over a year, timeouts over a day).
void check_web_relay_options(const WebRelayOptions& options);

class WebRelay {
 public:
  // `now` returns seconds on a monotonic clock (tests pass their own).
  explicit WebRelay(WebRelayOptions options, std::function<double()> now = {});
  ~WebRelay();
  WebRelay(const WebRelay&) = delete;
  WebRelay& operator=(const WebRelay&) = delete;

  // Answers `request`, calling the annotation server when it needs to (blocks up to
  // upstream_timeout_seconds, plus the wait for an earlier call of the same session).
  WebResponse handle(const WebRequest& request);
  // The answer when it needs no upstream call (never blocks on the server); otherwise nullopt,
  // and *lane names the queue the request must wait in (then call handle() for it).
  std::optional<WebResponse> answer_locally(const WebRequest& request, std::string* lane);
  size_t session_count() const;

  struct Session;
  struct Call;  // one HTTP request's upstream context (deadline, health)

 private:
  std::optional<WebResponse> route_local(const WebRequest& request, std::string* lane);
  WebResponse route_upstream(const WebRequest& request);
  std::optional<WebResponse> sign_in_throttled(const std::string& peer);
  void sign_in_failed(const std::string& peer);
  WebResponse sign_in(const WebRequest& request, const Call& call);
  WebResponse admit(const std::shared_ptr<Session>& session);
  WebResponse sign_out(const std::string& session_id);
  WebResponse session_info(const std::shared_ptr<Session>& session);
  WebResponse get_task(Session& session, const Call& call);
  WebResponse submit(Session& session, const std::string& body, const Call& call);
  WebResponse undo(Session& session, const Call& call);
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
