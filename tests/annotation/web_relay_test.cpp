// The browser client's relay (annotation/web_relay.h) against a real annotation server on a real
// Unix socket and SQLite file, without HTTP: sessions, CSRF, refusals, a server restart. The page
// itself is tested in a browser by tests/annotation/web/browser_test.mjs.
#include "annotation/web_relay.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <thread>

#include "annotation/server.h"
#include "annotation/sqlite_store.h"
#include "annotation/web_server.h"
#include "common/error.h"
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

  Fixture() {
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
    relay = std::make_unique<ann::WebRelay>(o, [this] { return now; });
  }

  ann::WebResponse post(const std::string& path, const json& body, const std::string& cookie = "",
                        const std::string& csrf = "") {
    ann::WebRequest r;
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
  SignedIn sign_in(const std::string& token) {
    ann::WebResponse r = post("/api/signin", {{"token", token}});
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

}  // namespace
