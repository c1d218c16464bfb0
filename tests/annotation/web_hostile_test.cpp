// The relay's hostile suite (issue #29), like the service's (hostile_test.cpp): a real annotation
// server process (annotation_test_server) and a real `rlhf annotate web` process on TCP loopback,
// attacked from other loopback addresses (127.0.0.2 and up; any 127.0.0.0/8 address is local on
// Linux), while a fresh annotator on 127.0.0.1 must be served. Each case starts the relay with
// short timeouts (flags), so the suite takes seconds. The invariants (expect_fresh_served, checked
// while every attack runs, and TearDown):
//   - a fresh annotator's GET / is answered 200 within kWithinSeconds;
//   - its sign-in is answered within kWithinSeconds: 200 when the annotation server is up, 503
//     UPSTREAM_DOWN during an outage or a hang;
//   - the relay process is up and its CPU time stayed bounded (no busy loop).
// Adding a case: a TEST_F(WebHostile, ...) that calls start_relay() with its flags, starts the
// attack with attack(), calls expect_fresh_served() while it runs, then stop_attack().
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <thread>

#include "annotation/sqlite_store.h"
#include "common/process.h"
#include "tests/annotation/web_http.h"
#include "tests/fixtures/annotation_server.h"
#include "tests/test_support.h"

namespace ann = rlhf::annotation;
namespace http = rlhf::annotation::testing;
using Clock = std::chrono::steady_clock;
using nlohmann::json;
using rlhf::testing::TempDir;

namespace {

constexpr double kWithinSeconds = 1.0;   // the issue's bound for the fresh annotator
constexpr double kCpuBaseSeconds = 1.5;  // the relay's start (libtorch is linked) plus
constexpr double kCpuShare = 0.3;        // this share of the case's wall time

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

void sleep_s(double s) { std::this_thread::sleep_for(std::chrono::duration<double>(s)); }

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// CPU seconds (user + system) of a running process.
double cpu_seconds(pid_t pid) {
  std::string text = read_text("/proc/" + std::to_string(pid) + "/stat");
  std::istringstream fields(text.substr(text.rfind(')') + 2));
  std::string f;
  double ticks = 0;
  for (int i = 3; fields >> f && i <= 15; ++i)
    if (i == 14 || i == 15) ticks += std::stod(f);
  return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

struct Session {
  std::string cookie, csrf;
};

class WebHostile : public ::testing::Test {
 protected:
  void SetUp() override {
    rlimit lim{};
    ::getrlimit(RLIMIT_NOFILE, &lim);
    lim.rlim_cur = lim.rlim_max;  // the attacks hold hundreds of connections
    ::setrlimit(RLIMIT_NOFILE, &lim);
    {
      ann::Store store(db_);
      ann::Store::Transaction txn(store);
      for (int i = 0; i < 40; ++i)
        store.add_task({"prompt " + std::to_string(i), {"a", "bb", "ccc"}, "", "", "web"}, 2);
      attacker_token_ = store.add_annotator("mallory", "annotator");
      fresh_token_ = store.add_annotator("fresh", "annotator");
      txn.commit();
    }
    start_server();
  }

  void TearDown() override {
    stop_attack();
    if (relay_) {
      EXPECT_TRUE(relay_.running()) << "the relay process is gone: " << read_text(dir_ / "web.err");
      if (relay_.running()) {
        double cpu = cpu_seconds(relay_.pid());
        double wall = since(relay_start_);
        EXPECT_LE(cpu, kCpuBaseSeconds + kCpuShare * wall)
            << "relay CPU time " << cpu << " s in a case of " << wall << " s";
      }
    }
    if (server_ && server_->alive()) ::kill(server_->pid(), SIGCONT);
  }

  void start_server() {
    server_.reset();
    ann::testing::ServerProcessOptions o;
    o.kill_on_destroy = true;
    server_ = std::make_unique<ann::testing::ServerProcess>(
        std::vector<std::string>{RLHF_TEST_SERVER, "--db", db_, "--socket", socket_}, socket_, o);
  }

  // Starts `rlhf annotate web` on 127.0.0.1 with the suite's short timeouts, then `extra` flags
  // (later ones win); nofile > 0: its RLIMIT_NOFILE.
  void start_relay(const std::vector<std::string>& extra = {}, rlim_t nofile = 0) {
    rlhf::process::Options o;
    o.argv = {rlhf::testing::rlhf_binary(),
              "annotate",
              "web",
              "--socket",
              socket_,
              "--listen",
              "127.0.0.1:0",
              "--upstream-timeout",
              "0.5",
              "--retry-seconds",
              "0.2",
              "--header-timeout",
              "1",
              "--idle-timeout",
              "1"};
    o.argv.insert(o.argv.end(), extra.begin(), extra.end());
    o.stdout_redirect = rlhf::process::Redirect::file(dir_ / "web.out");
    o.stderr_redirect = rlhf::process::Redirect::file(dir_ / "web.err");
    o.max_open_files = nofile;
    relay_start_ = Clock::now();
    relay_ = rlhf::process::Child::start(o);
    std::smatch m;
    std::regex url(R"(open http://127\.0\.0\.1:([0-9]+)/)");
    std::string out;
    while (since(relay_start_) < 20 && relay_.running()) {
      out = read_text(dir_ / "web.out");
      if (std::regex_search(out, m, url)) break;
      sleep_s(0.02);
    }
    ASSERT_TRUE(std::regex_search(out, m, url))
        << "the relay did not start: " << out << read_text(dir_ / "web.err");
    port_ = static_cast<uint16_t>(std::stoi(m[1]));
  }

  http::HttpAnswer call(http::HttpCall c) { return http::http_call(port_, c); }

  http::HttpAnswer get_page(const std::string& source = "127.0.0.1", double timeout = 5) {
    http::HttpCall c;
    c.source = source;
    c.timeout_seconds = timeout;
    c.host = "127.0.0.1:" + std::to_string(port_);
    return call(c);
  }

  http::HttpAnswer sign_in(const std::string& token, const std::string& source = "127.0.0.1",
                           double timeout = 5) {
    http::HttpCall c;
    c.method = "POST";
    c.path = "/api/signin";
    c.body = json{{"token", token}}.dump();
    c.source = source;
    c.timeout_seconds = timeout;
    c.host = "127.0.0.1:" + std::to_string(port_);
    return call(c);
  }

  http::HttpAnswer api(const Session& s, const std::string& path,
                       const std::string& source = "127.0.0.2", double timeout = 5) {
    http::HttpCall c;
    c.method = "POST";
    c.path = path;
    c.body = "{}";
    c.cookie = s.cookie;
    c.csrf = s.csrf;
    c.source = source;
    c.timeout_seconds = timeout;
    c.host = "127.0.0.1:" + std::to_string(port_);
    return call(c);
  }

  Session session_of(const http::HttpAnswer& a) {
    Session s;
    std::string set_cookie = http::header_value(a, "Set-Cookie");
    s.cookie = set_cookie.substr(0, set_cookie.find(';'));
    json j = json::parse(a.body, nullptr, false);
    if (j.is_object()) s.csrf = j.value("csrf", "");
    return s;
  }

  // The fresh annotator on 127.0.0.1: the page and a sign-in, each answered within
  // kWithinSeconds (sign-in 200 when the server is up, else 503).
  void expect_fresh_served(bool upstream_up, const std::string& when) {
    http::HttpAnswer page = get_page("127.0.0.1", 10);
    EXPECT_EQ(page.status, 200) << when << ": GET / " << page.error;
    EXPECT_LE(page.seconds, kWithinSeconds) << when << ": GET / took " << page.seconds << " s";
    http::HttpAnswer in = sign_in(fresh_token_, "127.0.0.1", 10);
    EXPECT_EQ(in.status, upstream_up ? 200 : 503) << when << ": sign-in " << in.error << in.body;
    EXPECT_LE(in.seconds, kWithinSeconds) << when << ": sign-in took " << in.seconds << " s";
  }

  // Runs `body(i)` on `threads` threads again and again until stop_attack().
  void attack(int threads, const std::function<void(int)>& body) {
    stop_ = false;
    for (int i = 0; i < threads; ++i)
      attackers_.emplace_back([this, i, body] {
        while (!stop_) body(i);
      });
  }

  void stop_attack() {
    stop_ = true;
    for (auto& t : attackers_) t.join();
    attackers_.clear();
  }

  void count(int status) {
    std::lock_guard<std::mutex> lock(counts_mutex_);
    ++counts_[status];
  }
  int counted(int status) {
    std::lock_guard<std::mutex> lock(counts_mutex_);
    return counts_[status];
  }

  TempDir dir_{"webhostile"};
  std::string db_ = dir_ / "a.db";
  std::string socket_ = dir_ / "s.sock";
  std::string attacker_token_, fresh_token_;
  std::unique_ptr<ann::testing::ServerProcess> server_;
  rlhf::process::Child relay_;
  Clock::time_point relay_start_;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> attackers_;
  std::mutex counts_mutex_;
  std::map<int, int> counts_;
};

// True when the peer has closed `fd` (EOF or reset), checked without waiting.
bool peer_closed(int fd) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, 0) <= 0) return false;
  char buf[4096];
  ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN);
}

size_t count_closed(const std::vector<int>& fds) {
  size_t n = 0;
  for (int fd : fds) n += peer_closed(fd);
  return n;
}

}  // namespace

TEST_F(WebHostile, HungUpstream) {
  start_relay();
  http::HttpAnswer in = sign_in(attacker_token_, "127.0.0.2");
  ASSERT_EQ(in.status, 200) << in.body;
  Session mallory = session_of(in);
  ::kill(server_->pid(), SIGSTOP);
  attack(8, [&](int i) {
    std::string source = "127.0.0.1" + std::to_string(i);  // 127.0.0.10 .. 127.0.0.17
    http::HttpAnswer a = i < 4 ? sign_in("garbage-token", source) : api(mallory, "/api/task");
    count(a.status);
  });
  sleep_s(0.8);  // past the upstream deadline: the hang is known
  for (int round = 0; round < 3; ++round) {
    expect_fresh_served(false, "server stopped, round " + std::to_string(round));
    sleep_s(0.2);
  }
  stop_attack();
  EXPECT_GT(counted(503), 0);
  EXPECT_EQ(counted(0), 0) << "attack requests went unanswered";
  ::kill(server_->pid(), SIGCONT);
  expect_fresh_served(true, "server resumed");
}

TEST_F(WebHostile, OneSessionsParallelRequestsDuringAnOutage) {
  start_relay();
  http::HttpAnswer in = sign_in(attacker_token_, "127.0.0.2");
  ASSERT_EQ(in.status, 200) << in.body;
  Session mallory = session_of(in);
  server_->terminate(10);
  attack(16, [&](int) { count(api(mallory, "/api/task", "127.0.0.2", 10).status); });
  sleep_s(0.3);
  for (int round = 0; round < 3; ++round) {
    expect_fresh_served(false, "outage, round " + std::to_string(round));
    sleep_s(0.2);
  }
  stop_attack();
  EXPECT_GT(counted(503), 0);
  EXPECT_GT(counted(429), 0) << "the session's queue never filled: the case tested little";
  EXPECT_EQ(counted(0), 0) << "attack requests went unanswered";
  start_server();
  expect_fresh_served(true, "server back");
}

TEST_F(WebHostile, ManySlowAndIdleConnections) {
  start_relay();
  // 300 connections from one address that send a request's first bytes and then one byte every
  // 0.3 s, reconnecting when closed; 100 more that send nothing.
  std::vector<int> idle;
  for (int i = 0; i < 100; ++i) idle.push_back(http::tcp_connect("127.0.0.3", "127.0.0.1", port_));
  std::vector<std::vector<int>> drip(4);
  attack(4, [&](int t) {
    auto& fds = drip[static_cast<size_t>(t)];
    if (fds.empty())
      for (int i = 0; i < 75; ++i) fds.push_back(-1);
    for (int& fd : fds) {
      if (fd >= 0 && peer_closed(fd)) {
        ::close(fd);
        fd = -1;
        count(1);  // closed by the relay
      }
      if (fd < 0) {
        fd = http::tcp_connect("127.0.0.2", "127.0.0.1", port_);
        if (fd >= 0) ::send(fd, "GET / HTTP/1.1\r\nX: ", 19, MSG_NOSIGNAL);
      } else {
        ::send(fd, "a", 1, MSG_NOSIGNAL);
      }
    }
    sleep_s(0.3);
  });
  sleep_s(0.5);
  // Over the per-address cap (32), connections are closed at once.
  EXPECT_GE(count_closed(idle), idle.size() - 32);
  for (int round = 0; round < 5; ++round) {
    expect_fresh_served(true, "slow connections, round " + std::to_string(round));
    sleep_s(0.3);
  }
  // Those within the cap are cut by the header timeout (1 s).
  auto start = Clock::now();
  while (count_closed(idle) < idle.size() && since(start) < 3) sleep_s(0.05);
  EXPECT_EQ(count_closed(idle), idle.size()) << "idle connections outlived the header timeout";
  stop_attack();
  for (auto& fds : drip)
    for (int fd : fds)
      if (fd >= 0) ::close(fd);
  for (int fd : idle) ::close(fd);
  // A request sent at 5 bytes per second is cut by the header timeout too.
  int slow = http::tcp_connect("127.0.0.5", "127.0.0.1", port_);
  start = Clock::now();
  std::string get = "GET / HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port_) + "\r\n\r\n";
  for (size_t i = 0; i < get.size() && !peer_closed(slow); ++i) {
    ::send(slow, &get[i], 1, MSG_NOSIGNAL);
    sleep_s(0.2);
  }
  EXPECT_TRUE(peer_closed(slow) || (sleep_s(0.3), peer_closed(slow)));
  EXPECT_GE(since(start), 0.8);
  EXPECT_LE(since(start), 2.5) << "a slow request was not cut off by the header timeout";
  ::close(slow);
  // A kept-alive connection that is idle after its request is closed by the idle timeout (1 s).
  int fd = http::tcp_connect("127.0.0.4", "127.0.0.1", port_);
  ASSERT_EQ(::send(fd, get.data(), get.size(), MSG_NOSIGNAL), static_cast<ssize_t>(get.size()));
  start = Clock::now();
  while (!peer_closed(fd) && since(start) < 5) sleep_s(0.05);
  EXPECT_GE(since(start), 0.8);
  EXPECT_LE(since(start), 3.0) << "an idle kept-alive connection was not closed";
  ::close(fd);
}

TEST_F(WebHostile, SessionFloodByOneToken) {
  start_relay();
  http::HttpAnswer first = sign_in(attacker_token_, "127.0.0.2");
  ASSERT_EQ(first.status, 200);
  std::atomic<int> sign_ins{0};
  attack(4, [&](int) {
    if (sign_ins++ < 400)
      count(sign_in(attacker_token_, "127.0.0.2").status);
    else
      sleep_s(0.01);
  });
  for (int round = 0; round < 3; ++round) {
    expect_fresh_served(true, "session flood, round " + std::to_string(round));
    sleep_s(0.2);
  }
  while (sign_ins < 400) sleep_s(0.05);
  stop_attack();
  EXPECT_EQ(counted(200), 400) << "sign-ins of the flooding token were refused";
  expect_fresh_served(true, "after 400 sessions of one token");
  // Its oldest sessions were ended (8 per annotator).
  EXPECT_EQ(api(session_of(first), "/api/task").status, 401);
}

TEST_F(WebHostile, SignInBruteForce) {
  start_relay();
  std::atomic<int> tries{0};
  attack(8, [&](int) {
    int n = tries++;
    if (n >= 1000) return sleep_s(0.01);
    count(sign_in("guess-" + std::to_string(n) + "-secret", "127.0.0.2").status);
  });
  for (int round = 0; round < 3; ++round) {
    expect_fresh_served(true, "brute force, round " + std::to_string(round));
    sleep_s(0.1);
  }
  while (tries < 1000) sleep_s(0.05);
  stop_attack();
  EXPECT_GE(counted(429), 900) << "wrong sign-ins were not throttled";
  EXPECT_LE(counted(401), 12) << "too many wrong sign-ins reached the server";
  std::string log = read_text(dir_ / "web.err");
  EXPECT_NE(log.find("failed sign-in from 127.0.0.2 ("), std::string::npos) << log;
  EXPECT_NE(log.find("attempts refused"), std::string::npos) << log;
  EXPECT_EQ(log.find("-secret"), std::string::npos) << "a token was logged: " << log;
}

TEST_F(WebHostile, DescriptorExhaustion) {
  // 128 descriptors for the relay, so at most about 60 HTTP connections (half of those free).
  // 400 connections that never send anything (header timeout 30 s), from an address without a
  // cap: each new one closes the one that waited longest, and the fresh annotator gets in too.
  start_relay({"--header-timeout", "30", "--idle-timeout", "30", "--max-connections-per-address",
               "100000", "--max-sessions-per-annotator", "1000"},
              128);
  std::vector<int> held;
  for (int i = 0; i < 400; ++i) {
    int fd = http::tcp_connect("127.0.0.2", "127.0.0.1", port_);
    if (fd >= 0) held.push_back(fd);
  }
  sleep_s(0.5);
  EXPECT_GE(count_closed(held), 300u) << "more connections than descriptors were kept open";
  expect_fresh_served(true, "400 idle connections");
  // Then 120 sessions (each with its own connection to the annotation server) exhaust the
  // descriptors themselves: sign-ins are refused and accept() fails with EMFILE; it must back off,
  // not spin, and still make room for the page.
  for (int i = 0; i < 120; ++i) count(sign_in(attacker_token_, "127.0.0.2").status);
  EXPECT_GT(counted(503), 0) << "descriptors were never exhausted: the case tested little";
  for (int i = 0; i < 100; ++i) {
    int fd = http::tcp_connect("127.0.0.3", "127.0.0.1", port_);
    if (fd >= 0) held.push_back(fd);
  }
  sleep_s(0.5);
  double cpu_before = cpu_seconds(relay_.pid());
  sleep_s(2.0);
  double spent = cpu_seconds(relay_.pid()) - cpu_before;
  EXPECT_LT(spent, 0.3) << "the relay spent " << spent << " s of CPU in 2 s without descriptors";
  EXPECT_NE(read_text(dir_ / "web.err").find("accept: Too many open files"), std::string::npos)
      << "accept() never ran out of descriptors: the case tested little";
  for (int round = 0; round < 3; ++round) {
    http::HttpAnswer page = get_page("127.0.0.1", 10);
    EXPECT_EQ(page.status, 200) << "out of descriptors: GET / " << page.error;
    EXPECT_LE(page.seconds, kWithinSeconds) << "out of descriptors: GET / took " << page.seconds;
    http::HttpAnswer in = sign_in(fresh_token_, "127.0.0.1", 10);
    EXPECT_TRUE(in.status == 200 || in.status == 503) << in.status << " " << in.error << in.body;
    EXPECT_LE(in.seconds, kWithinSeconds) << "out of descriptors: sign-in took " << in.seconds;
  }
  for (int fd : held) ::close(fd);
}

// `rlhf annotate web` refuses flags out of range, naming them.
TEST(WebRelayCli, OutOfRangeFlagsAreRefused) {
  TempDir dir("webcli");
  std::vector<std::pair<std::string, std::string>> bad = {
      {"session-hours", "1e16"}, {"session-hours", "nan"}, {"session-hours", "inf"},
      {"upstream-timeout", "0"}, {"header-timeout", "-1"}, {"max-connections-per-address", "0"}};
  std::vector<rlhf::process::Child> children;  // all at once: each start loads libtorch
  for (size_t i = 0; i < bad.size(); ++i) {
    rlhf::process::Options o;
    o.argv = {rlhf::testing::rlhf_binary(),
              "annotate",
              "web",
              "--socket",
              dir / "none.sock",
              "--listen",
              "127.0.0.1:0",
              "--" + bad[i].first,
              bad[i].second};
    o.stdout_redirect = rlhf::process::Redirect::null();
    o.stderr_redirect = rlhf::process::Redirect::file(dir / ("err" + std::to_string(i)));
    children.push_back(rlhf::process::Child::start(o));
  }
  for (size_t i = 0; i < bad.size(); ++i) {
    const auto& [flag, value] = bad[i];
    auto status = children[i].wait_for(30);
    ASSERT_TRUE(status.has_value()) << "--" << flag << " " << value << " was accepted (it serves)";
    EXPECT_NE(status->code(), 0) << "--" << flag << " " << value;
    std::string err = read_text(dir / ("err" + std::to_string(i)));
    EXPECT_NE(err.find("--" + flag), std::string::npos)
        << "--" << flag << " " << value << ": " << err;
  }
}

// `--listen 127.0.0.2:0`: the printed address serves the page (not 403 BAD_HOST).
TEST(WebRelayCli, ThePrintedAddressOfAnyLoopbackListenServesThePage) {
  TempDir dir("weblisten");
  rlhf::process::Options o;
  o.argv = {rlhf::testing::rlhf_binary(),
            "annotate",
            "web",
            "--socket",
            dir / "none.sock",
            "--listen",
            "127.0.0.2:0"};
  o.stdout_redirect = rlhf::process::Redirect::file(dir / "out");
  o.stderr_redirect = rlhf::process::Redirect::null();
  auto child = rlhf::process::Child::start(o);
  std::regex url(R"(open http://(127\.0\.0\.2):([0-9]+)/)");
  std::smatch m;
  std::string out;
  for (auto start = Clock::now(); since(start) < 20 && child.running(); sleep_s(0.02)) {
    out = read_text(dir / "out");
    if (std::regex_search(out, m, url)) break;
  }
  ASSERT_TRUE(std::regex_search(out, m, url)) << out;
  http::HttpCall get;
  get.dest = m[1];
  auto port = static_cast<uint16_t>(std::stoi(m[2]));
  http::HttpAnswer page = http::http_call(port, get);  // Host: 127.0.0.2:PORT, as a browser sends
  EXPECT_EQ(page.status, 200) << page.error << page.body;
}
