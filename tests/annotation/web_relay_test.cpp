// The browser client's relay (annotation/web_relay.h) against a real annotation server on a real
// Unix socket and SQLite file, without HTTP: sessions, CSRF, refusals, a server restart. The page
// itself is tested in a browser by tests/annotation/web/browser_test.mjs.
#include "annotation/web_relay.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <future>
#include <limits>
#include <nlohmann/json.hpp>
#include <thread>

#include "annotation/client.h"
#include "annotation/server.h"
#include "annotation/sqlite_store.h"
#include "annotation/web_server.h"
#include "common/error.h"
#include "tests/annotation/web_http.h"
#include "tests/fixtures/annotation_server.h"
#include "tests/test_support.h"

namespace ann = rlhf::annotation;
using nlohmann::json;
using rlhf::annotation::testing::RunningServer;
using rlhf::testing::TempDir;

namespace {

constexpr const char* kHost = "127.0.0.1:8080";

struct Fixture {
  TempDir dir;
  std::vector<std::string> tokens;
  ann::ServerOptions server_options;
  std::unique_ptr<RunningServer> server;
  double now = 1000;
  std::unique_ptr<ann::WebRelay> relay;

  explicit Fixture(const std::function<void(ann::WebRelayOptions&)>& tweak = {}) {
    const std::string db = dir / "a.db";
    {
      ann::Store store(db);
      ann::Store::Transaction txn(store);
      for (int i = 0; i < 3; ++i)
        store.add_task({"prompt " + std::to_string(i), {"a", "b", "c"}, "", "", "test"}, 1);
      tokens = {store.add_annotator("alice", "annotator"), store.add_annotator("bob", "annotator")};
      txn.commit();
    }
    server_options.db_path = db;
    server_options.socket_path = dir / "s.sock";
    server_options.handle_signals = false;
    server = std::make_unique<RunningServer>(server_options);
    ann::WebRelayOptions o;
    o.socket_path = server_options.socket_path;
    o.upstream_retry_seconds = 0.2;
    o.session_idle_seconds = 60;
    o.allowed_hosts = {kHost};
    o.log_sign_ins = false;
    if (tweak) tweak(o);
    relay = std::make_unique<ann::WebRelay>(o, [this] { return now; });
  }

  ann::WebResponse post(const std::string& path, const json& body, const std::string& cookie = "",
                        const std::string& csrf = "", const std::string& peer = "127.0.0.1") {
    ann::WebRequest r;
    r.peer = peer;
    r.method = "POST";
    r.target = path;
    r.host = kHost;
    r.content_type = "application/json";
    r.cookie = cookie;
    r.csrf = csrf;
    r.body = body.dump();
    return relay->handle(r);
  }

  struct SignedIn {
    std::string cookie, csrf, set_cookie;
  };
  SignedIn sign_in(const std::string& token, const std::string& peer = "127.0.0.1") {
    ann::WebResponse r = post("/api/signin", {{"token", token}}, "", "", peer);
    EXPECT_EQ(r.status, 200) << r.body;
    SignedIn s;
    for (const auto& [k, v] : r.headers)
      if (k == "Set-Cookie") s.set_cookie = v;
    s.cookie = s.set_cookie.substr(0, s.set_cookie.find(';'));
    s.csrf = json::parse(r.body).value("csrf", "");
    return s;
  }
};

TEST(WebRelay, SignInSetsAnHttpOnlyStrictCookieAndRefusesAWrongToken) {
  Fixture f;
  auto s = f.sign_in(f.tokens[0]);
  EXPECT_NE(s.set_cookie.find("HttpOnly"), std::string::npos);
  EXPECT_NE(s.set_cookie.find("SameSite=Strict"), std::string::npos);
  EXPECT_EQ(s.csrf.size(), 64u);
  EXPECT_EQ(f.relay->session_count(), 1u);
  ann::WebResponse bad = f.post("/api/signin", {{"token", "wrong"}});
  EXPECT_EQ(bad.status, 401) << bad.body;
  EXPECT_EQ(f.relay->session_count(), 1u);
}

TEST(WebRelay, StateChangesNeedTheSessionsOwnCsrfToken) {
  Fixture f;
  auto alice = f.sign_in(f.tokens[0]);
  auto bob = f.sign_in(f.tokens[1]);
  EXPECT_EQ(f.post("/api/task", json::object(), alice.cookie).status, 403);
  EXPECT_EQ(f.post("/api/task", json::object(), bob.cookie, alice.csrf).status, 403);
  EXPECT_EQ(f.post("/api/task", json::object(), "", alice.csrf).status, 401);
  ann::WebResponse ok = f.post("/api/task", json::object(), alice.cookie, alice.csrf);
  ASSERT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(json::parse(ok.body)["task"]["id"], 1);
  // bob's own session cannot submit alice's task: the server refuses (nothing stored).
  ann::WebResponse steal =
      f.post("/api/submit", {{"task_id", 1}, {"groups", {{0}, {1, 2}}}}, bob.cookie, bob.csrf);
  EXPECT_EQ(steal.status, 409);
  EXPECT_EQ(json::parse(steal.body)["error"], "NOT_LEASED");
}

TEST(WebRelay, SubmitStoresTheGroupsAndUndoReturnsTheTask) {
  Fixture f;
  auto a = f.sign_in(f.tokens[0]);
  ASSERT_EQ(f.post("/api/task", json::object(), a.cookie, a.csrf).status, 200);
  ann::WebResponse saved =
      f.post("/api/submit", {{"task_id", 1}, {"groups", {{1, 2}, {0}}}, {"seconds", 3.5}}, a.cookie,
             a.csrf);
  ASSERT_EQ(saved.status, 200) << saved.body;
  json j = json::parse(saved.body);
  EXPECT_EQ(j["task"]["id"], 2);
  EXPECT_EQ(j["progress"]["done"], 1);
  ann::WebResponse none =
      f.post("/api/submit", {{"task_id", 2}, {"none_acceptable", true}}, a.cookie, a.csrf);
  ASSERT_EQ(none.status, 200) << none.body;
  ann::WebResponse undone = f.post("/api/undo", json::object(), a.cookie, a.csrf);
  ASSERT_EQ(undone.status, 200) << undone.body;
  EXPECT_EQ(json::parse(undone.body)["undone"]["task_id"], 2);
  // Sent again (the page retrying a lost answer): the undo names that submission, so the one
  // before it (task 1) stays.
  ann::WebResponse again = f.post("/api/undo", json::object(), a.cookie, a.csrf);
  EXPECT_TRUE(again.status == 200 || again.status == 409) << again.body;
  // A session that submitted nothing has nothing to undo.
  auto b = f.sign_in(f.tokens[0]);
  ann::WebResponse fresh = f.post("/api/undo", json::object(), b.cookie, b.csrf);
  EXPECT_EQ(fresh.status, 409) << fresh.body;
  EXPECT_EQ(json::parse(fresh.body)["error"], "NOTHING_TO_UNDO");
  f.server.reset();
  ann::Store store(f.server_options.db_path);
  auto rows = store.all_rankings();
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].task_id, 1);
  EXPECT_EQ(rows[0].groups, (ann::Groups{{1, 2}, {0}}));
}

TEST(WebRelay, BadBodiesNameTheField) {
  Fixture f;
  auto a = f.sign_in(f.tokens[0]);
  ann::WebResponse r = f.post("/api/submit", {{"task_id", "one"}}, a.cookie, a.csrf);
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("task_id"), std::string::npos) << r.body;
  r = f.post("/api/submit", {{"task_id", 1}, {"skip", true}, {"none_acceptable", true}}, a.cookie,
             a.csrf);
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("exactly one"), std::string::npos) << r.body;
  // Wrong JSON types are 400 naming the field (not 500 with the JSON library's message).
  std::vector<std::pair<json, std::string>> wrong = {
      {{{"task_id", 1}, {"skip", "yes"}}, "skip"},
      {{{"task_id", 1}, {"none_acceptable", 1}}, "none_acceptable"},
      {{{"task_id", 1}, {"skip", true}, {"seconds", "3"}}, "seconds"},
      {{{"task_id", 1}, {"flag", 7}}, "flag"},
      {{{"task_id", 1}, {"groups", {{0}, {"b"}}}}, "groups"},
      {{{"task_id", 1.5}, {"skip", true}}, "task_id"},
      {{{"task_id", -1}, {"skip", true}}, "task_id"},
      {{{"task_id", 0}, {"skip", true}}, "task_id"},
      // 2^63 and 2^64-1 would wrap to negative ids: refused instead.
      {{{"task_id", uint64_t{1} << 63}, {"skip", true}}, "task_id"},
      {{{"task_id", std::numeric_limits<uint64_t>::max()}, {"skip", true}}, "task_id"},
  };
  for (const auto& [body, field] : wrong) {
    r = f.post("/api/submit", body, a.cookie, a.csrf);
    EXPECT_EQ(r.status, 400) << body.dump() << " -> " << r.body;
    EXPECT_EQ(json::parse(r.body)["error"], "BAD_REQUEST") << r.body;
    EXPECT_EQ(json::parse(r.body)["message"].get<std::string>().rfind(field + ":", 0), 0u)
        << body.dump() << " -> " << r.body;
  }
  // The largest int64 id is passed on (the server does not know it).
  r = f.post("/api/submit", {{"task_id", std::numeric_limits<int64_t>::max()}, {"skip", true}},
             a.cookie, a.csrf);
  EXPECT_EQ(r.status, 409) << r.body;
  EXPECT_EQ(json::parse(r.body)["error"], "UNKNOWN_TASK");
}

TEST(WebRelay, ForeignHostsOriginsAndFormPostsAreRefused) {
  Fixture f;
  ann::WebRequest r;
  r.method = "GET";
  r.target = "/";
  r.host = "evil.example:8080";
  EXPECT_EQ(f.relay->handle(r).status, 403);
  r.host = kHost;
  ann::WebResponse page = f.relay->handle(r);
  EXPECT_EQ(page.status, 200);
  EXPECT_EQ(page.content_type.rfind("text/html", 0), 0u);
  r.method = "POST";
  r.target = "/api/signin";
  r.content_type = "application/x-www-form-urlencoded";
  r.body = "token=" + f.tokens[0];
  EXPECT_EQ(f.relay->handle(r).status, 415);
  r.content_type = "application/json";
  r.origin = "http://evil.example";
  r.body = json{{"token", f.tokens[0]}}.dump();
  EXPECT_EQ(f.relay->handle(r).status, 403);
  EXPECT_EQ(f.relay->session_count(), 0u);
}

TEST(WebRelay, SessionsExpireWhenIdle) {
  Fixture f;
  auto a = f.sign_in(f.tokens[0]);
  f.now += 30;
  EXPECT_EQ(f.post("/api/task", json::object(), a.cookie, a.csrf).status, 200);
  f.now += 61;
  EXPECT_EQ(f.post("/api/task", json::object(), a.cookie, a.csrf).status, 401);
  EXPECT_EQ(f.relay->session_count(), 0u);
}

TEST(WebRelay, ARevokedTokenEndsTheSession) {
  Fixture f;
  auto a = f.sign_in(f.tokens[0]);
  ASSERT_EQ(f.post("/api/task", json::object(), a.cookie, a.csrf).status, 200);
  {
    ann::Store store(f.server_options.db_path);
    store.set_annotator_active("alice", false);
  }
  ann::WebResponse r = f.post("/api/task", json::object(), a.cookie, a.csrf);
  EXPECT_EQ(r.status, 401) << r.body;
  EXPECT_EQ(f.relay->session_count(), 0u);
  EXPECT_EQ(f.post("/api/signin", {{"token", f.tokens[0]}}).status, 401);
}

TEST(WebRelay, ADownServerIs503AndTheSessionCarriesOnAfterARestart) {
  Fixture f;
  auto a = f.sign_in(f.tokens[0]);
  ASSERT_EQ(f.post("/api/task", json::object(), a.cookie, a.csrf).status, 200);
  f.server.reset();
  ann::WebResponse down = f.post("/api/task", json::object(), a.cookie, a.csrf);
  EXPECT_EQ(down.status, 503);
  EXPECT_EQ(json::parse(down.body)["error"], "UPSTREAM_DOWN");
  f.server = std::make_unique<RunningServer>(f.server_options);
  ann::WebResponse back = f.post("/api/task", json::object(), a.cookie, a.csrf);
  ASSERT_EQ(back.status, 200) << back.body;
  EXPECT_EQ(json::parse(back.body)["task"]["id"], 1);  // the lease survived the restart
}

TEST(WebRelay, EachAnnotatorHasASessionCapAndTheOldestSessionEnds) {
  Fixture f([](ann::WebRelayOptions& o) { o.max_sessions_per_annotator = 2; });
  auto first = f.sign_in(f.tokens[0]);
  f.now += 1;
  auto second = f.sign_in(f.tokens[0]);
  f.now += 1;
  auto third = f.sign_in(f.tokens[0]);
  EXPECT_EQ(f.relay->session_count(), 2u);
  EXPECT_EQ(f.post("/api/task", json::object(), first.cookie, first.csrf).status, 401);
  EXPECT_EQ(f.post("/api/task", json::object(), second.cookie, second.csrf).status, 200);
  EXPECT_EQ(f.post("/api/task", json::object(), third.cookie, third.csrf).status, 200);
  auto bob = f.sign_in(f.tokens[1]);  // another annotator is not affected
  EXPECT_EQ(f.post("/api/task", json::object(), bob.cookie, bob.csrf).status, 200);
  EXPECT_EQ(f.relay->session_count(), 3u);
}

TEST(WebRelay, FailedSignInsAreThrottledPerAddressWithGrowingDelaysAndLogged) {
  Fixture f([](ann::WebRelayOptions& o) {
    o.signin_free_failures = 2;
    o.signin_delay_seconds = 1;
    o.signin_max_delay_seconds = 4;
    o.log_sign_ins = true;
  });
  const std::string bad = "wrong-token-0123456789abcdef";
  const std::string peer = "10.1.2.3";
  ::testing::internal::CaptureStderr();
  auto attempt = [&](const std::string& token) {
    return f.post("/api/signin", {{"token", token}}, "", "", peer);
  };
  EXPECT_EQ(attempt(bad).status, 401);
  EXPECT_EQ(attempt(bad).status, 401);  // two free failures
  EXPECT_EQ(attempt(bad).status, 401);  // the third starts a delay of 1 s
  ann::WebResponse r = attempt(bad);
  EXPECT_EQ(r.status, 429) << r.body;
  EXPECT_EQ(json::parse(r.body)["error"], "TOO_MANY_SIGN_INS");
  EXPECT_EQ(json::parse(r.body)["retry_after_seconds"], 1);
  EXPECT_EQ(attempt(f.tokens[0]).status, 429);  // even the right token waits
  f.now += 1;
  EXPECT_EQ(attempt(bad).status, 401);  // then 2 s
  EXPECT_EQ(json::parse(attempt(bad).body)["retry_after_seconds"], 2);
  f.now += 2;
  EXPECT_EQ(attempt(bad).status, 401);  // then 4 s (the cap)
  f.now += 4;
  EXPECT_EQ(attempt(bad).status, 401);
  EXPECT_EQ(json::parse(attempt(bad).body)["retry_after_seconds"], 4);
  // Another address is not affected.
  EXPECT_EQ(f.post("/api/signin", {{"token", f.tokens[1]}}, "", "", "10.1.2.4").status, 200);
  f.now += 4;
  EXPECT_EQ(attempt(f.tokens[0]).status, 200);  // a success clears the address's failures
  EXPECT_EQ(attempt(bad).status, 401);
  EXPECT_EQ(attempt(bad).status, 401);
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(log.find("failed sign-in from 10.1.2.3 (4 in a row, 2 attempts refused"),
            std::string::npos)
      << log;
  EXPECT_EQ(log.find(bad), std::string::npos) << "the log shows a token: " << log;
  EXPECT_EQ(log.find(f.tokens[0]), std::string::npos) << "the log shows a token: " << log;
}

TEST(WebRelay, ThePageAndRefusalsAreAnsweredWithoutTheServerAndUpstreamCallsNameTheirLane) {
  Fixture f;
  auto a = f.sign_in(f.tokens[0]);
  f.server.reset();  // nothing below may need it
  ann::WebRequest get;
  get.method = "GET";
  get.target = "/";
  get.host = kHost;
  std::string lane;
  auto page = f.relay->answer_locally(get, &lane);
  ASSERT_TRUE(page.has_value());
  EXPECT_EQ(page->status, 200);
  ann::WebRequest task = get;
  task.method = "POST";
  task.target = "/api/task";
  task.content_type = "application/json";
  task.cookie = a.cookie;
  task.csrf = a.csrf;
  task.body = "{}";
  EXPECT_FALSE(f.relay->answer_locally(task, &lane).has_value());
  EXPECT_EQ(lane, "session " + a.cookie.substr(a.cookie.find('=') + 1));
  task.csrf = "wrong";
  auto refused = f.relay->answer_locally(task, &lane);
  ASSERT_TRUE(refused.has_value());
  EXPECT_EQ(refused->status, 403);
  ann::WebRequest signin = task;
  signin.target = "/api/signin";
  signin.peer = "127.0.0.9";
  EXPECT_FALSE(f.relay->answer_locally(signin, &lane).has_value());
  EXPECT_EQ(lane, "signin 127.0.0.9");
}

// A Unix socket that listens and never accepts: a connection is queued (connect succeeds) and never
// answered, as with a SIGSTOPped server.
struct SilentServer {
  int fd = -1;
  explicit SilentServer(const std::string& path) {
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(::listen(fd, 64), 0);
  }
  ~SilentServer() { hang_up(); }
  void hang_up() {  // resets the queued connections: unblocks a client waiting without deadline
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

TEST(WebRelay, AHungServerIsAnsweredByTheDeadline) {
  rlhf::testing::TempDir dir;
  SilentServer silent(dir / "silent.sock");
  {  // the client library: DeadlineExceeded, not a wait for ever
    ann::ClientOptions o;
    o.socket_path = dir / "silent.sock";
    o.token = "t";
    o.call_timeout_seconds = 0.3;
    auto start = std::chrono::steady_clock::now();
    auto call = std::async(std::launch::async, [&] {
      ann::AnnotationClient client(o);
      rlhf::proto::Request r;
      r.mutable_get_progress();
      try {
        client.call(r);
      } catch (const ann::DeadlineExceeded&) {
        return std::string("deadline");
      } catch (const std::exception& e) {
        return std::string(e.what());
      }
      return std::string("answered");
    });
    if (call.wait_for(std::chrono::seconds(5)) != std::future_status::ready) silent.hang_up();
    EXPECT_EQ(call.get(), "deadline");
    EXPECT_LE(seconds_since(start), 2.0);
  }
}

TEST(WebServer, ListensOnLoopbackOnlyUnlessAllowed) {
  EXPECT_EQ(ann::split_listen_address("[::1]:80"), (std::pair<std::string, uint16_t>{"::1", 80}));
  EXPECT_THROW(ann::split_listen_address("127.0.0.1"), rlhf::UsageError);
  EXPECT_THROW(ann::split_listen_address("127.0.0.1:99999"), rlhf::UsageError);
  ann::WebServerOptions o;
  o.handle_signals = false;
  o.listen = "0.0.0.0:0";
  EXPECT_THROW(ann::WebServer{o}, rlhf::UsageError);
  o.allow_remote = true;
  EXPECT_NO_THROW(ann::WebServer{o});
  o.allow_remote = false;
  o.listen = "localhost:0";
  ann::WebServer local(o);
  EXPECT_GT(local.port(), 0);
}

TEST(WebRelay, ARelayInFrontOfAHungServerAnswers503ByTheDeadlineAndThenAtOnce) {
  std::unique_ptr<SilentServer> silent;
  Fixture f([&](ann::WebRelayOptions& o) {
    o.socket_path = o.socket_path + ".silent";
    silent = std::make_unique<SilentServer>(o.socket_path);
    o.upstream_timeout_seconds = 1;
  });
  auto timed_sign_in = [&](const std::string& peer) {
    auto start = std::chrono::steady_clock::now();
    ann::WebResponse r = f.post("/api/signin", {{"token", f.tokens[0]}}, "", "", peer);
    return std::make_pair(r, seconds_since(start));
  };
  auto first = std::async(std::launch::async, [&] { return timed_sign_in("127.0.0.2"); });
  if (first.wait_for(std::chrono::seconds(10)) != std::future_status::ready) silent->hang_up();
  auto [r, took] = first.get();
  EXPECT_EQ(r.status, 503) << r.body;
  EXPECT_EQ(json::parse(r.body)["error"], "UPSTREAM_DOWN");
  EXPECT_GE(took, 0.9);
  EXPECT_LE(took, 3.0);
  // Marked hung: of 4 at once, one finds out whether it answers again (1 s), the others are
  // answered at once.
  std::vector<std::future<std::pair<ann::WebResponse, double>>> four;
  for (int i = 0; i < 4; ++i)
    four.push_back(std::async(std::launch::async,
                              [&, i] { return timed_sign_in("127.0.0.1" + std::to_string(i)); }));
  int quick = 0;
  for (auto& one : four) {
    auto [answer, seconds] = one.get();
    EXPECT_EQ(answer.status, 503) << answer.body;
    quick += seconds < 0.5;
  }
  EXPECT_GE(quick, 3);
}

TEST(WebRelay, OptionsOutOfRangeAreRefusedNamingTheOption) {
  auto refused = [](const std::function<void(ann::WebRelayOptions&)>& set, const char* name) {
    ann::WebRelayOptions o;
    set(o);
    try {
      ann::check_web_relay_options(o);
    } catch (const rlhf::UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
      return true;
    }
    return false;
  };
  const double nan = std::nan("");
  const double inf = std::numeric_limits<double>::infinity();
  for (double hours : {1e16, nan, inf, -inf, 0.0, -1.0, 1e5})
    EXPECT_TRUE(
        refused([&](auto& o) { o.session_idle_seconds = hours * 3600; }, "session_idle_seconds"))
        << hours;
  for (double s : {nan, inf, 0.0, -1.0})
    EXPECT_TRUE(
        refused([&](auto& o) { o.upstream_timeout_seconds = s; }, "upstream_timeout_seconds"))
        << s;
  EXPECT_TRUE(refused([&](auto& o) { o.upstream_retry_seconds = nan; }, "upstream_retry_seconds"));
  EXPECT_TRUE(
      refused([&](auto& o) { o.max_sessions_per_annotator = 0; }, "max_sessions_per_annotator"));
  EXPECT_FALSE(refused([](auto&) {}, ""));
  ann::WebServerOptions w;
  w.header_timeout_seconds = nan;
  EXPECT_THROW(ann::check_web_server_options(w), rlhf::UsageError);
}

TEST(WebServer, AnyLoopbackAddressServesThePageAtThePrintedAddress) {
  ann::WebServerOptions o;
  o.handle_signals = false;
  o.listen = "127.0.0.2:0";
  ann::WebServer server(o);
  std::thread t([&] { server.run(); });
  ann::testing::HttpCall get;
  get.dest = "127.0.0.2";
  get.host = "127.0.0.2:" + std::to_string(server.port());  // what the browser sends
  ann::testing::HttpAnswer page = ann::testing::http_call(server.port(), get);
  get.host = "127.0.0.3:" + std::to_string(server.port());  // another name is still refused
  ann::testing::HttpAnswer other = ann::testing::http_call(server.port(), get);
  server.stop();
  t.join();
  EXPECT_EQ(page.status, 200) << page.error << page.body;
  EXPECT_NE(page.body.find("<html"), std::string::npos);
  EXPECT_EQ(other.status, 403);
}

TEST(WebServer, OversizeHeadersAndBodiesAreRefused) {
  ann::WebServerOptions o;
  o.handle_signals = false;
  o.listen = "127.0.0.1:0";
  ann::WebServer server(o);
  std::thread t([&] { server.run(); });
  // A body refused by its Content-Length, before it is sent (so no unread bytes reset the answer).
  int fd = ann::testing::tcp_connect("127.0.0.1", "127.0.0.1", server.port());
  ASSERT_GE(fd, 0);
  std::string head =
      "POST /api/signin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
      "application/json\r\nContent-Length: 102400\r\n\r\n";
  ASSERT_EQ(::send(fd, head.data(), head.size(), MSG_NOSIGNAL), static_cast<ssize_t>(head.size()));
  std::string answer;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) answer.append(buf, n);
  ::close(fd);
  ann::testing::HttpCall cookie;
  cookie.cookie = std::string(10 * 1024, 'c');
  ann::testing::HttpAnswer headers = ann::testing::http_call(server.port(), cookie);
  server.stop();
  t.join();
  EXPECT_EQ(answer.rfind("HTTP/1.1 413", 0), 0u) << answer;
  EXPECT_EQ(headers.status, 431) << headers.error;
}

// The HTTP server's lanes: one session's parallel requests during an outage wait in the session's
// queue, not in the 4 workers, so the page and another address's sign-in are answered at once.
TEST(WebServer, OneSessionsParallelRequestsDoNotHoldTheWorkers) {
  Fixture f;
  ann::WebServerOptions o;
  o.handle_signals = false;
  o.listen = "127.0.0.1:0";
  o.relay.socket_path = f.server_options.socket_path;
  o.relay.upstream_retry_seconds = 0.4;  // each request of the session retries 0.4 s
  o.relay.log_sign_ins = false;
  ann::WebServer server(o);
  std::thread t([&] { server.run(); });
  const uint16_t port = server.port();
  ann::testing::HttpCall signin;
  signin.method = "POST";
  signin.path = "/api/signin";
  signin.body = json{{"token", f.tokens[0]}}.dump();
  ann::testing::HttpAnswer in = ann::testing::http_call(port, signin);
  ASSERT_EQ(in.status, 200) << in.error << in.body;
  std::string cookie = ann::testing::header_value(in, "Set-Cookie");
  ann::testing::HttpCall task;
  task.method = "POST";
  task.path = "/api/task";
  task.body = "{}";
  task.cookie = cookie.substr(0, cookie.find(';'));
  task.csrf = json::parse(in.body)["csrf"];
  task.timeout_seconds = 20;
  f.server.reset();                                        // the outage
  std::vector<std::future<ann::testing::HttpAnswer>> six;  // more than the 4 workers
  for (int i = 0; i < 6; ++i)
    six.push_back(
        std::async(std::launch::async, [&] { return ann::testing::http_call(port, task); }));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ann::testing::HttpCall page;
  page.source = "127.0.0.2";
  ann::testing::HttpAnswer got = ann::testing::http_call(port, page);
  signin.source = "127.0.0.2";
  ann::testing::HttpAnswer other = ann::testing::http_call(port, signin);
  int down = 0;
  for (auto& one : six) down += one.get().status == 503;
  server.stop();
  t.join();
  EXPECT_EQ(got.status, 200) << got.error;
  EXPECT_LE(got.seconds, 0.5) << "the page waited behind one session's requests";
  EXPECT_EQ(other.status, 503) << other.error << other.body;  // the server is down: at once
  EXPECT_LE(other.seconds, 0.5) << "a sign-in waited behind one session's requests";
  EXPECT_EQ(down, 6);
}

}  // namespace
