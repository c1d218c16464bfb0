#include "annotation/web_relay.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>

#include "annotation/client.h"
#include "common/error.h"

namespace rlhf::annotation {

using nlohmann::json;

namespace {

constexpr const char* kCookieName = "rlhf_session";
constexpr size_t kMaxFlagChars = 1000;

std::string random_hex(size_t bytes) {
  std::vector<unsigned char> buf(bytes);
  if (RAND_bytes(buf.data(), static_cast<int>(buf.size())) != 1)
    throw Error("OpenSSL RAND_bytes failed to make a session id");
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : buf) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

bool equal_secrets(const std::string& a, const std::string& b) {
  return a.size() == b.size() && !a.empty() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

// The value of cookie `name` in a Cookie header ("a=1; rlhf_session=abc"), or "".
std::string cookie_value(const std::string& header, const std::string& name) {
  size_t pos = 0;
  while (pos < header.size()) {
    size_t end = header.find(';', pos);
    if (end == std::string::npos) end = header.size();
    std::string part = header.substr(pos, end - pos);
    size_t b = part.find_first_not_of(' ');
    if (b != std::string::npos && part.compare(b, name.size() + 1, name + "=") == 0)
      return part.substr(b + name.size() + 1);
    pos = end + 1;
  }
  return "";
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

WebResponse json_response(int status, const json& body) {
  WebResponse r;
  r.status = status;
  r.body = dump(body);
  return r;
}

WebResponse error_response(int status, const std::string& code, const std::string& message) {
  return json_response(status, {{"error", code}, {"message", message}});
}

std::string session_cookie(const std::string& id, double max_age_seconds) {
  return std::string(kCookieName) + "=" + id + "; Path=/; HttpOnly; SameSite=Strict; Max-Age=" +
         std::to_string(static_cast<long long>(max_age_seconds));
}

json task_json(const proto::Task& t) {
  json answers = json::array();
  for (const auto& a : t.answers()) answers.push_back(a);
  return {{"id", t.task_id()},
          {"prompt", t.prompt()},
          {"answers", answers},
          {"lease_seconds_left", t.lease_seconds_left()}};
}

json progress_json(const proto::Progress& p) {
  return {{"done", p.done()}, {"remaining", p.remaining()}, {"median_seconds", p.median_seconds()}};
}

// Adds {task} or {no_task} from a GetTask (or SubmitOk) answer.
void put_task(json& out, const proto::Task* task, const proto::NoTask* no_task) {
  if (task) out["task"] = task_json(*task);
  if (no_task) out["no_task"] = {{"retry_after_seconds", no_task->retry_after_seconds()}};
}

enum class ServerState { kDown, kHung, kRefusesToken, kUp };

using Clock = Connection::Clock;

// Asks the server directly (one Hello on a fresh connection) why a call failed.
ServerState probe_server(const std::string& socket_path, const std::string& token,
                         Clock::time_point deadline) {
  try {
    Connection c(socket_path, std::nullopt, deadline);
    proto::Request r;
    r.set_schema_version(1);
    r.set_request_id(1);
    r.mutable_hello()->set_token(token);
    r.mutable_hello()->set_client("rlhf-web-probe/1");
    proto::Response resp = c.call(r);
    if (!resp.has_error()) return ServerState::kUp;
    if (resp.error().code() == proto::Error::UNAUTHENTICATED) return ServerState::kRefusesToken;
    if (resp.error().code() == proto::Error::SHUTTING_DOWN) return ServerState::kDown;
    return ServerState::kUp;
  } catch (const DeadlineExceeded&) {
    return ServerState::kHung;
  } catch (const ConnectionLost&) {
    return ServerState::kDown;
  } catch (const std::exception&) {
    return ServerState::kUp;
  }
}

const char* kDownMessage =
    "The annotation server is down or restarting. Your ranking is kept; retrying...";
const char* kHungMessage =
    "The annotation server is not answering (hung or overloaded). Your ranking is kept; "
    "retrying...";

json parse_object(const std::string& body) {
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) throw UsageError("the request body is not a JSON object");
  return j;
}

// j[name] as a bool; `fallback` when absent; throws UsageError naming the field otherwise.
bool optional_bool(const json& j, const char* name, bool fallback) {
  auto it = j.find(name);
  if (it == j.end()) return fallback;
  if (!it->is_boolean()) throw UsageError(std::string(name) + ": expected true or false");
  return it->get<bool>();
}

// The task_id of a submit body: an integer 1..2^63-1 (never wrapped into another id).
int64_t task_id_of(const json& j) {
  auto it = j.find("task_id");
  const char* expected = "task_id: expected a task id, an integer 1..9223372036854775807";
  if (it == j.end() || !it->is_number_integer()) throw UsageError(expected);
  if (it->is_number_unsigned()) {
    if (it->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        it->get<uint64_t>() == 0)
      throw UsageError(expected);
    return static_cast<int64_t>(it->get<uint64_t>());
  }
  if (it->get<int64_t>() < 1) throw UsageError(expected);
  return it->get<int64_t>();
}

void parse_groups(const json& groups, proto::SubmitRanking* s) {
  if (!groups.is_array()) throw UsageError("groups: expected a list of lists of indices");
  for (const auto& g : groups) {
    if (!g.is_array()) throw UsageError("groups: expected a list of lists of indices");
    auto* pg = s->add_groups();
    for (const auto& i : g) {
      if (!i.is_number_unsigned() || i.get<uint64_t>() > 1000)
        throw UsageError("groups: answer indices must be integers 0..1000");
      pg->add_answers(i.get<uint32_t>());
    }
  }
}

// Fills `s` from the page's submit body; throws UsageError naming the field.
void parse_submission(const json& j, proto::SubmitRanking* s) {
  s->set_task_id(task_id_of(j));
  int kinds = 0;
  if (j.contains("groups")) {
    ++kinds;
    parse_groups(j["groups"], s);
  }
  if (optional_bool(j, "none_acceptable", false)) ++kinds, s->set_none_acceptable(true);
  if (optional_bool(j, "skip", false)) ++kinds, s->set_skip(true);
  if (j.contains("flag")) {
    if (!j["flag"].is_string() || j["flag"].get<std::string>().empty())
      throw UsageError("flag: expected a non-empty reason");
    std::string reason = j["flag"].get<std::string>();
    if (reason.size() > kMaxFlagChars)
      throw UsageError("flag: the reason is longer than " + std::to_string(kMaxFlagChars) +
                       " bytes");
    s->set_flag(reason);
    ++kinds;
  }
  if (kinds != 1) throw UsageError("give exactly one of groups, none_acceptable, skip, flag");
  double seconds = 0;
  if (j.contains("seconds")) {
    if (!j["seconds"].is_number()) throw UsageError("seconds: expected a number of seconds");
    seconds = j["seconds"].get<double>();
  }
  s->set_seconds(std::min(std::max(seconds, 0.0), 86400.0));
  s->set_want_next_task(true);
}

}  // namespace

struct WebRelay::Session {
  std::string id;
  std::string csrf;
  std::string annotator;
  std::string token;
  double lease_seconds = 0;
  double signed_in = 0;                      // when (now_), for ending the annotator's oldest
  double last_seen = 0;                      // guarded by Table::mutex
  std::mutex upstream;                       // one upstream call at a time
  std::unique_ptr<AnnotationClient> client;  // guarded by upstream
  // The submission an undo removes: this session's latest (SubmitOk.ranking_id), 0 before any.
  // Undo names it, so a retried Undo (a lost answer, INTERNAL retried) never removes a second
  // one. Guarded by upstream (the session's calls run one at a time).
  int64_t undo_ranking_id = 0;
};

namespace {

// Failed sign-ins from one client address (WebRelayOptions::signin_*).
struct SignInFailures {
  int failures = 0;     // in a row, since the last success or pause
  double last = 0;      // when the last one was
  double next_try = 0;  // attempts before this are refused (429)
  int64_t refused = 0;  // attempts refused since the last logged failure
};

constexpr double kForgetFailuresSeconds = 3600;
constexpr size_t kMaxTrackedAddresses = 10000;

// Whether the annotation server is known not to answer (a call missed its deadline); then one
// request at a time goes through to find out when it answers again.
struct UpstreamHealth {
  std::atomic<bool> hung{false};
  std::atomic<bool> probing{false};
};

}  // namespace

struct WebRelay::Table {
  mutable std::mutex mutex;
  std::map<std::string, std::shared_ptr<Session>> sessions;
  std::map<std::string, SignInFailures> sign_ins;  // by client address
  UpstreamHealth health;
};

struct WebRelay::Call {
  const std::string& socket_path;
  UpstreamHealth& health;
  Clock::time_point deadline;
  double timeout_seconds;
};

namespace {

// One upstream call, or the HTTP answer to give instead (503 down, 401 token refused, 502).
struct Upstream {
  std::optional<proto::Response> response;
  WebResponse failure;
};

// Lets one request through to a server marked hung (and only one at a time): the one that
// acquires it is the probe; the others are answered 503 at once.
class HungGate {
 public:
  explicit HungGate(UpstreamHealth& h) : h_(h) {
    passes_ = !h_.hung || !h_.probing.exchange(true);
    probe_ = passes_ && h_.hung;
  }
  ~HungGate() {
    if (probe_) h_.probing = false;
  }
  HungGate(const HungGate&) = delete;
  HungGate& operator=(const HungGate&) = delete;
  bool passes() const { return passes_; }

 private:
  UpstreamHealth& h_;
  bool passes_ = true;
  bool probe_ = false;
};

WebResponse hung_response(double timeout_seconds) {
  return error_response(503, "UPSTREAM_DOWN",
                        std::string(kHungMessage) + " (no answer within " +
                            std::to_string(static_cast<int64_t>(std::ceil(timeout_seconds))) +
                            " s)");
}

Upstream call_upstream(WebRelay::Session& s, const WebRelay::Call& call,
                       const proto::Request& request);

}  // namespace

void check_web_relay_options(const WebRelayOptions& o) {
  auto range = [](double v, double lo, double hi, const char* name, const char* unit) {
    if (!std::isfinite(v) || v < lo || v > hi)
      throw UsageError(std::string(name) + ": expected " + unit + " in " + std::to_string(lo) +
                       ".." + std::to_string(hi) + ", got " + std::to_string(v));
  };
  range(o.upstream_retry_seconds, 0, 86400, "upstream_retry_seconds", "seconds");
  range(o.upstream_timeout_seconds, 0.001, 86400, "upstream_timeout_seconds", "seconds");
  range(o.session_idle_seconds, 1, 366 * 86400.0, "session_idle_seconds", "seconds");
  range(o.signin_delay_seconds, 0, 86400, "signin_delay_seconds", "seconds");
  range(o.signin_max_delay_seconds, 0, 86400, "signin_max_delay_seconds", "seconds");
  if (o.signin_free_failures < 0)
    throw UsageError("signin_free_failures: expected a count >= 0, got " +
                     std::to_string(o.signin_free_failures));
  if (o.max_sessions < 1) throw UsageError("max_sessions: expected >= 1, got 0");
  if (o.max_sessions_per_annotator < 1)
    throw UsageError("max_sessions_per_annotator: expected >= 1, got 0");
}

WebRelay::WebRelay(WebRelayOptions options, std::function<double()> now)
    : opts_(std::move(options)), now_(std::move(now)), table_(std::make_unique<Table>()) {
  check_web_relay_options(opts_);
  if (!now_)
    now_ = [] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
          .count();
    };
}

WebRelay::~WebRelay() = default;

size_t WebRelay::session_count() const {
  std::lock_guard<std::mutex> lock(table_->mutex);
  return table_->sessions.size();
}

namespace {

WebResponse with_security_headers(WebResponse r) {
  r.headers.push_back({"Cache-Control", "no-store"});
  r.headers.push_back({"X-Content-Type-Options", "nosniff"});
  r.headers.push_back({"Referrer-Policy", "no-referrer"});
  r.headers.push_back({"X-Frame-Options", "DENY"});
  r.headers.push_back({"Content-Security-Policy",
                       "default-src 'none'; script-src 'self'; style-src 'self'; "
                       "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
                       "frame-ancestors 'none'"});
  return r;
}

// The answer to an exception thrown while handling a request (call inside a catch block).
WebResponse current_exception_response() {
  try {
    throw;
  } catch (const UsageError& e) {
    return error_response(400, "BAD_REQUEST", e.what());
  } catch (const json::exception& e) {
    return error_response(400, "BAD_REQUEST", std::string("the request body: ") + e.what());
  } catch (const std::exception& e) {
    return error_response(500, "INTERNAL", e.what());
  }
}

}  // namespace

WebResponse WebRelay::handle(const WebRequest& request) {
  WebResponse r;
  try {
    r = route_upstream(request);
  } catch (...) {
    r = current_exception_response();
  }
  return with_security_headers(std::move(r));
}

std::optional<WebResponse> WebRelay::answer_locally(const WebRequest& request, std::string* lane) {
  std::optional<WebResponse> r;
  try {
    r = route_local(request, lane);
  } catch (...) {
    r = current_exception_response();
  }
  if (!r) return std::nullopt;
  return with_security_headers(std::move(*r));
}

std::optional<WebResponse> WebRelay::route_local(const WebRequest& req, std::string* lane) {
  const auto& hosts = opts_.allowed_hosts;
  if (!hosts.empty() && std::find(hosts.begin(), hosts.end(), req.host) == hosts.end())
    return error_response(
        403, "BAD_HOST",
        "Host " + req.host + " is not this server (open it as http://" + hosts.front() + "/)");
  const std::string path = req.target.substr(0, req.target.find('?'));
  if (req.method == "GET") {
    for (const auto& a : web_assets()) {
      if (path == a.path) {
        WebResponse r;
        r.content_type = a.content_type;
        r.body.assign(a.data, a.size);
        return r;
      }
    }
    if (path == "/api/session") {
      auto s = find_session(cookie_value(req.cookie, kCookieName));
      if (!s) return error_response(401, "SIGNED_OUT", "not signed in");
      return session_info(s);
    }
    return error_response(404, "NOT_FOUND", "no page " + path);
  }
  if (req.method != "POST") return error_response(405, "METHOD", "only GET and POST are served");
  if (!req.origin.empty() && req.origin != "http://" + req.host &&
      req.origin != "https://" + req.host)
    return error_response(403, "BAD_ORIGIN", "cross-origin requests are refused");
  if (req.content_type.rfind("application/json", 0) != 0)
    return error_response(415, "CONTENT_TYPE", "POST bodies must be application/json");
  if (path == "/api/signin") {
    if (auto refused = sign_in_throttled(req.peer)) return refused;
    *lane = "signin " + req.peer;
    return std::nullopt;
  }
  const std::string id = cookie_value(req.cookie, kCookieName);
  auto session = find_session(id);
  if (!session)
    return error_response(401, "SIGNED_OUT", "sign in first (your session ended or never began)");
  if (!equal_secrets(req.csrf, session->csrf))
    return error_response(403, "CSRF", "missing or wrong X-CSRF-Token for this session");
  if (path == "/api/signout") return sign_out(id);
  if (path != "/api/task" && path != "/api/submit" && path != "/api/undo")
    return error_response(404, "NOT_FOUND", "no API " + path);
  *lane = "session " + id;
  return std::nullopt;
}

WebResponse WebRelay::route_upstream(const WebRequest& req) {
  std::string lane;
  if (auto local = route_local(req, &lane)) return *local;
  // The deadline starts now, or, for a session, once its earlier call is done: waiting for that
  // is not the server's slowness.
  auto start_call = [this] {
    return Call{opts_.socket_path, table_->health,
                Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                   std::chrono::duration<double>(opts_.upstream_timeout_seconds)),
                opts_.upstream_timeout_seconds};
  };
  const std::string path = req.target.substr(0, req.target.find('?'));
  if (path == "/api/signin") return sign_in(req, start_call());
  const std::string id = cookie_value(req.cookie, kCookieName);
  auto session = find_session(id);
  if (!session) return error_response(401, "SIGNED_OUT", "your session ended");
  std::lock_guard<std::mutex> lock(session->upstream);
  const Call call = start_call();
  WebResponse r;
  if (path == "/api/task")
    r = get_task(*session, call);
  else if (path == "/api/submit")
    r = submit(*session, req.body, call);
  else
    r = undo(*session, call);
  if (r.status == 401) {  // the server refused the token (revoked): end the session
    sign_out(id);
    r.headers.push_back({"Set-Cookie", session_cookie("", 0)});
  }
  return r;
}

std::shared_ptr<WebRelay::Session> WebRelay::find_session(const std::string& id) {
  if (id.empty()) return nullptr;
  double now = now_();
  std::lock_guard<std::mutex> lock(table_->mutex);
  drop_expired_sessions(now);
  auto it = table_->sessions.find(id);
  if (it == table_->sessions.end()) return nullptr;
  it->second->last_seen = now;
  return it->second;
}

void WebRelay::drop_expired_sessions(double now) {
  for (auto it = table_->sessions.begin(); it != table_->sessions.end();) {
    if (now - it->second->last_seen > opts_.session_idle_seconds)
      it = table_->sessions.erase(it);
    else
      ++it;
  }
}

std::optional<WebResponse> WebRelay::sign_in_throttled(const std::string& peer) {
  double now = now_();
  std::lock_guard<std::mutex> lock(table_->mutex);
  auto it = table_->sign_ins.find(peer);
  if (it == table_->sign_ins.end()) return std::nullopt;
  SignInFailures& f = it->second;
  if (now - f.last > kForgetFailuresSeconds && now >= f.next_try) {
    table_->sign_ins.erase(it);
    return std::nullopt;
  }
  if (now >= f.next_try) return std::nullopt;
  ++f.refused;
  auto wait = static_cast<int64_t>(std::ceil(f.next_try - now));
  WebResponse r =
      json_response(429, {{"error", "TOO_MANY_SIGN_INS"},
                          {"message", "too many failed sign-ins from your address; try again in " +
                                          std::to_string(wait) + " s"},
                          {"retry_after_seconds", wait}});
  r.headers.push_back({"Retry-After", std::to_string(wait)});
  return r;
}

void WebRelay::sign_in_failed(const std::string& peer) {
  double now = now_();
  SignInFailures f;
  {
    std::lock_guard<std::mutex> lock(table_->mutex);
    auto& sign_ins = table_->sign_ins;
    if (sign_ins.size() >= kMaxTrackedAddresses && !sign_ins.count(peer)) {
      for (auto it = sign_ins.begin(); it != sign_ins.end();)
        it = now - it->second.last > 60 && now >= it->second.next_try ? sign_ins.erase(it)
                                                                      : std::next(it);
    }
    SignInFailures& slot = sign_ins[peer];
    if (now - slot.last > kForgetFailuresSeconds) slot.failures = 0;
    ++slot.failures;
    slot.last = now;
    int over = slot.failures - opts_.signin_free_failures;
    double delay =
        over <= 0 ? 0
                  : std::min(opts_.signin_max_delay_seconds,
                             opts_.signin_delay_seconds * std::ldexp(1.0, std::min(over - 1, 30)));
    slot.next_try = now + delay;
    f = slot;
    slot.refused = 0;
  }
  if (opts_.log_sign_ins)
    std::fprintf(stderr,
                 "annotate web: failed sign-in from %s (%d in a row, %lld attempts refused "
                 "since the last; next attempt allowed in %.0f s)\n",
                 peer.c_str(), f.failures, static_cast<long long>(f.refused), f.next_try - now);
}

WebResponse WebRelay::sign_in(const WebRequest& req, const Call& call) {
  json j = parse_object(req.body);
  if (!j.contains("token") || !j["token"].is_string() || j["token"].get<std::string>().empty())
    throw UsageError("token: expected the annotator token as a string");
  auto s = std::make_shared<Session>();
  s->token = j["token"].get<std::string>();
  while (!s->token.empty() && std::isspace(static_cast<unsigned char>(s->token.back())))
    s->token.pop_back();
  while (!s->token.empty() && std::isspace(static_cast<unsigned char>(s->token.front())))
    s->token.erase(0, 1);
  HungGate gate(call.health);
  if (!gate.passes()) return hung_response(call.timeout_seconds);
  // One direct Hello first, so a wrong token or a stopped server is answered at once rather
  // than after the client's reconnect attempts.
  switch (probe_server(call.socket_path, s->token, call.deadline)) {
    case ServerState::kDown:
      return error_response(503, "UPSTREAM_DOWN", "the annotation server is not running");
    case ServerState::kHung:
      call.health.hung = true;
      return hung_response(call.timeout_seconds);
    case ServerState::kRefusesToken:
      call.health.hung = false;
      sign_in_failed(req.peer);
      return error_response(
          401, "TOKEN_REFUSED",
          "the annotation server does not accept this token (unknown or revoked)");
    case ServerState::kUp:
      call.health.hung = false;
      break;
  }
  ClientOptions o;
  o.socket_path = opts_.socket_path;
  o.token = s->token;
  o.retry_seconds = opts_.upstream_retry_seconds;
  o.call_timeout_seconds = opts_.upstream_timeout_seconds;
  o.client_name = "rlhf-web/1";
  s->client = std::make_unique<AnnotationClient>(o);
  proto::Request hello_check;
  hello_check.mutable_get_progress();
  Upstream up = call_upstream(*s, call, hello_check);
  if (!up.response) return up.failure;
  s->annotator = s->client->annotator();
  s->lease_seconds = s->client->lease_seconds();
  {
    std::lock_guard<std::mutex> lock(table_->mutex);
    table_->sign_ins.erase(req.peer);
  }
  return admit(s);
}

// Adds a signed-in session to the table: ends the annotator's oldest sessions over the cap first.
WebResponse WebRelay::admit(const std::shared_ptr<Session>& s) {
  s->id = random_hex(32);
  s->csrf = random_hex(32);
  s->signed_in = s->last_seen = now_();
  size_t ended = 0;
  {
    std::lock_guard<std::mutex> lock(table_->mutex);
    auto& sessions = table_->sessions;
    drop_expired_sessions(s->last_seen);
    for (;;) {
      auto oldest = sessions.end();
      size_t mine = 0;
      for (auto it = sessions.begin(); it != sessions.end(); ++it) {
        if (it->second->annotator != s->annotator) continue;
        ++mine;
        if (oldest == sessions.end() || it->second->signed_in < oldest->second->signed_in)
          oldest = it;
      }
      if (mine < opts_.max_sessions_per_annotator) break;
      sessions.erase(oldest);
      ++ended;
    }
    if (sessions.size() >= opts_.max_sessions)
      return error_response(503, "TOO_MANY_SESSIONS",
                            "too many signed-in sessions; try again when some have ended");
    sessions[s->id] = s;
  }
  if (opts_.log_sign_ins)
    std::fprintf(stderr, "annotate web: %s signed in%s\n", s->annotator.c_str(),
                 ended ? " (ended their oldest session: too many open)" : "");
  WebResponse r = session_info(s);
  r.headers.push_back({"Set-Cookie", session_cookie(s->id, opts_.session_idle_seconds)});
  return r;
}

WebResponse WebRelay::sign_out(const std::string& id) {
  std::shared_ptr<Session> gone;
  {
    std::lock_guard<std::mutex> lock(table_->mutex);
    auto it = table_->sessions.find(id);
    if (it != table_->sessions.end()) {
      gone = it->second;
      table_->sessions.erase(it);
    }
  }
  if (gone && opts_.log_sign_ins)
    std::fprintf(stderr, "annotate web: %s signed out\n", gone->annotator.c_str());
  WebResponse r = json_response(200, {{"signed_out", true}});
  r.headers.push_back({"Set-Cookie", session_cookie("", 0)});
  return r;
}

WebResponse WebRelay::session_info(const std::shared_ptr<Session>& s) {
  return json_response(
      200, {{"annotator", s->annotator}, {"csrf", s->csrf}, {"lease_seconds", s->lease_seconds}});
}

namespace {

Upstream call_upstream(WebRelay::Session& s, const WebRelay::Call& call,
                       const proto::Request& request) {
  Upstream out;
  HungGate gate(call.health);
  if (!gate.passes()) {
    out.failure = hung_response(call.timeout_seconds);
    return out;
  }
  try {
    out.response = s.client->call(request, call.deadline);
    call.health.hung = false;
    return out;
  } catch (const DeadlineExceeded&) {
    call.health.hung = true;
    out.failure = hung_response(call.timeout_seconds);
    return out;
  } catch (const std::exception& e) {
    switch (probe_server(call.socket_path, s.token, call.deadline)) {
      case ServerState::kDown:
        out.failure = error_response(503, "UPSTREAM_DOWN", kDownMessage);
        break;
      case ServerState::kHung:
        call.health.hung = true;
        out.failure = hung_response(call.timeout_seconds);
        break;
      case ServerState::kRefusesToken:
        out.failure =
            error_response(401, "TOKEN_REFUSED",
                           "the annotation server does not accept this token (unknown or revoked)");
        break;
      case ServerState::kUp:
        out.failure = error_response(502, "UPSTREAM", e.what());
        break;
    }
    return out;
  }
}

// A protocol Error answer as HTTP 409 {error: CODE, message} (401 for UNAUTHENTICATED).
WebResponse protocol_error(const proto::Error& e) {
  if (e.code() == proto::Error::UNAUTHENTICATED)  // revoked while signed in: the session ends
    return error_response(401, "TOKEN_REFUSED", e.message());
  return error_response(409, proto::Error::Code_Name(e.code()), e.message());
}

// Adds {progress} when the server answers; progress is informative, so a failure is ignored.
void add_progress(WebRelay::Session& s, const WebRelay::Call& call, json& out) {
  if (Clock::now() >= call.deadline) return;
  proto::Request req;
  req.mutable_get_progress();
  Upstream up = call_upstream(s, call, req);
  if (up.response && up.response->has_progress())
    out["progress"] = progress_json(up.response->progress());
}

}  // namespace

WebResponse WebRelay::get_task(Session& s, const Call& call) {
  proto::Request req;
  req.mutable_get_task();
  Upstream up = call_upstream(s, call, req);
  if (!up.response) return up.failure;
  const proto::Response& r = *up.response;
  if (r.has_error()) return protocol_error(r.error());
  json out = json::object();
  put_task(out, r.has_task() ? &r.task() : nullptr, r.has_no_task() ? &r.no_task() : nullptr);
  add_progress(s, call, out);
  return json_response(200, out);
}

WebResponse WebRelay::submit(Session& s, const std::string& body, const Call& call) {
  proto::Request req;
  parse_submission(parse_object(body), req.mutable_submit());
  Upstream up = call_upstream(s, call, req);
  if (!up.response) return up.failure;
  const proto::Response& r = *up.response;
  if (r.has_error()) return protocol_error(r.error());
  const proto::SubmitOk& ok = r.submitted();
  s.undo_ranking_id = ok.ranking_id();
  json out = {{"saved", {{"task_id", ok.task_id()}, {"ranking_id", ok.ranking_id()}}}};
  put_task(out, ok.has_next_task() ? &ok.next_task() : nullptr,
           ok.has_no_task() ? &ok.no_task() : nullptr);
  add_progress(s, call, out);
  return json_response(200, out);
}

WebResponse WebRelay::undo(Session& s, const Call& call) {
  if (s.undo_ranking_id == 0)
    return error_response(409, "NOTHING_TO_UNDO",
                          "nothing to undo: this session has submitted nothing yet");
  proto::Request req;
  req.mutable_undo()->set_ranking_id(s.undo_ranking_id);
  Upstream up = call_upstream(s, call, req);
  if (!up.response) return up.failure;
  if (up.response->has_error()) return protocol_error(up.response->error());
  // The page asks for the task next (/api/task): a lost answer there must not undo twice.
  return json_response(200, {{"undone", {{"task_id", up.response->undone().task_id()}}}});
}

}  // namespace rlhf::annotation
