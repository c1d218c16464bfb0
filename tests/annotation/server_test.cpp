// The Asio server over a real Unix socket: many connections, hostile bytes, stop, stale sockets.
#include "annotation/server.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <random>
#include <thread>

#include "annotation/client.h"
#include "annotation/frame.h"
#include "common/error.h"
#include "common/files.h"
#include "tests/fixtures/annotation_server.h"
#include "tests/test_support.h"

namespace ann = rlhf::annotation;
namespace pb = rlhf::proto;
using rlhf::annotation::testing::hello_request;
using rlhf::annotation::testing::RunningServer;
using rlhf::annotation::testing::test_server_options;
using rlhf::testing::TempDir;

namespace {

std::vector<std::string> seed_store(const std::string& db, int tasks, int overlap, int annotators) {
  ann::Store store(db);
  ann::Store::Transaction txn(store);
  for (int i = 0; i < tasks; ++i)
    store.add_task({"prompt " + std::to_string(i), {"a", "bb", "ccc"}, "", "", "test"}, overlap);
  std::vector<std::string> tokens;
  for (int i = 0; i < annotators; ++i)
    tokens.push_back(store.add_annotator("ann" + std::to_string(i), "annotator"));
  txn.commit();
  return tokens;
}

pb::Request get_task() {
  pb::Request r;
  r.mutable_get_task();
  return r;
}

pb::Request submit(int64_t task, ann::Groups groups) {
  pb::Request r;
  r.mutable_submit()->set_task_id(task);
  for (auto& g : groups) {
    auto* pg = r.mutable_submit()->add_groups();
    for (int i : g) pg->add_answers(i);
  }
  return r;
}

std::string header(uint32_t n) {
  std::string h(4, '\0');
  h[0] = static_cast<char>(n >> 24);
  h[1] = static_cast<char>(n >> 16);
  h[2] = static_cast<char>(n >> 8);
  h[3] = static_cast<char>(n);
  return h;
}

}  // namespace

TEST(Server, ServesManyConcurrentConnections) {
  TempDir dir("srv");
  auto o = test_server_options(dir);
  auto tokens = seed_store(o.db_path, 100, 1, 80);
  RunningServer rs(o);
  std::vector<ann::Connection> conns;
  for (int i = 0; i < 80; ++i) conns.emplace_back(o.socket_path);
  for (int i = 0; i < 80; ++i) conns[i].send(hello_request(tokens[i]));  // all in flight at once
  for (int i = 0; i < 80; ++i) ASSERT_TRUE(conns[i].receive().has_hello());
  EXPECT_EQ(rs.server.connections(), 80u);
  for (auto& c : conns) c.send(get_task());
  std::set<int64_t> tasks;
  for (auto& c : conns) {
    pb::Response r = c.receive();
    ASSERT_TRUE(r.has_task()) << r.DebugString();
    tasks.insert(r.task().task_id());
  }
  EXPECT_EQ(tasks.size(), 80u);  // overlap 1: 80 annotators hold 80 different tasks
  struct stat st;
  ASSERT_EQ(::stat(o.socket_path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(Server, SubmissionForATaskLeasedToSomeoneElseIsRefused) {
  TempDir dir("srv");
  auto o = test_server_options(dir);
  auto tokens = seed_store(o.db_path, 2, 1, 2);
  RunningServer rs(o);
  ann::Connection a(o.socket_path), b(o.socket_path);
  ASSERT_TRUE(a.call(hello_request(tokens[0])).has_hello());
  ASSERT_TRUE(b.call(hello_request(tokens[1])).has_hello());
  pb::Response t = b.call(get_task());  // b holds the lease; a never received the task
  ASSERT_TRUE(t.has_task());
  int64_t id = t.task().task_id();
  pb::Response stolen = a.call(submit(id, {{0}, {1}, {2}}));
  ASSERT_TRUE(stolen.has_error()) << stolen.DebugString();
  EXPECT_EQ(stolen.error().code(), pb::Error::NOT_LEASED);
  pb::Response own = b.call(submit(id, {{2}, {1}, {0}}));
  ASSERT_TRUE(own.has_submitted()) << own.DebugString();
  rs.server.stop();
  ann::Store store(o.db_path);
  auto all = store.all_rankings();
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].annotator, "ann1");
}

TEST(Server, BadInputGetsErrorsWhileAnotherClientKeepsWorking) {
  TempDir dir("srv");
  auto o = test_server_options(dir);
  auto tokens = seed_store(o.db_path, 3000, 1, 3);
  RunningServer rs(o);

  std::atomic<bool> done{false};
  std::atomic<int64_t> good_acks{0}, good_errors{0};
  std::thread good([&] {
    ann::AnnotationClient c({o.socket_path, tokens[0], 5});
    while (!done) {
      pb::Response t = c.call(get_task());
      if (!t.has_task()) break;
      pb::Response a = c.call(submit(t.task().task_id(), {{0}, {1}, {2}}));
      a.has_submitted() ? ++good_acks : ++good_errors;
    }
  });
  auto wait_progress = [&] {
    int64_t before = good_acks;
    for (int i = 0; i < 500 && good_acks < before + 3; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    EXPECT_GE(good_acks, before + 3) << "the good client stalled";
  };

  std::mt19937_64 rng(7);
  // 1. Random bytes: an Error reply or a closed connection, for many seeds.
  for (int round = 0; round < 30; ++round) {
    ann::Connection c(o.socket_path);
    std::string junk(1 + rng() % 300, '\0');
    for (auto& ch : junk) ch = static_cast<char>(rng());
    if (round % 2) junk = header(static_cast<uint32_t>(junk.size())) + junk;  // framed junk
    c.send_bytes(junk);
    ::shutdown(c.fd(), SHUT_WR);
    try {
      for (;;) {
        pb::Response r = c.receive();
        EXPECT_TRUE(r.has_error()) << r.DebugString();
      }
    } catch (const ann::ConnectionLost&) {
      // closed after the errors (or for a truncated frame): fine
    }
  }
  wait_progress();

  // 2. Oversize length: BAD_FRAME, then the connection is closed.
  {
    ann::Connection c(o.socket_path);
    c.send_bytes(header(0x7fffffff) + "xyz");
    pb::Response r = c.receive();
    EXPECT_EQ(r.error().code(), pb::Error::BAD_FRAME);
    EXPECT_TRUE(c.closed_by_peer(2000));
  }
  // 3. Truncated frame: the server drops it when the client goes away and keeps serving.
  {
    ann::Connection c(o.socket_path);
    c.send_bytes(header(100) + "only ten b");
    ::shutdown(c.fd(), SHUT_WR);
    EXPECT_TRUE(c.closed_by_peer(2000));
  }
  // 4. An undecodable frame: BAD_MESSAGE, and the connection still works afterwards.
  ann::Connection c(o.socket_path);
  c.send_bytes(header(5) + std::string("\xff\xff\xff\xff\xff", 5));
  EXPECT_EQ(c.receive().error().code(), pb::Error::BAD_MESSAGE);
  // 5. Before Hello, and with a wrong token: UNAUTHENTICATED.
  EXPECT_EQ(c.call(get_task()).error().code(), pb::Error::UNAUTHENTICATED);
  EXPECT_EQ(c.call(hello_request("0123")).error().code(), pb::Error::UNAUTHENTICATED);
  ASSERT_TRUE(c.call(hello_request(tokens[1])).has_hello());
  // 6. Non-permutation, unknown task, double submit.
  pb::Response t = c.call(get_task());
  ASSERT_TRUE(t.has_task());
  int64_t id = t.task().task_id();
  EXPECT_EQ(c.call(submit(id, {{0}, {1}})).error().code(), pb::Error::NOT_PERMUTATION);
  EXPECT_EQ(c.call(submit(id, {{0, 0}, {1, 2}})).error().code(), pb::Error::NOT_PERMUTATION);
  EXPECT_EQ(c.call(submit(987654, {{0}, {1}, {2}})).error().code(), pb::Error::UNKNOWN_TASK);
  EXPECT_TRUE(c.call(submit(id, {{2}, {1}, {0}})).has_submitted());
  EXPECT_EQ(c.call(submit(id, {{2}, {1}, {0}})).error().code(), pb::Error::ALREADY_SUBMITTED);
  wait_progress();

  done = true;
  good.join();
  EXPECT_EQ(good_errors, 0);
  ann::Store store(o.db_path);
  EXPECT_EQ(store.ranking_count(), good_acks + 1);  // nothing partial from the bad clients
  EXPECT_EQ(store.integrity_check(), "ok");
}

pb::Request undo(int64_t ranking_id) {
  pb::Request r;
  r.mutable_undo()->set_ranking_id(ranking_id);
  return r;
}

// Each AnnotationClient retry (a reply lost with its connection, or an INTERNAL answer) sends the
// same Undo again: naming the submission, it removes that one only, however often it comes.
TEST(Server, ARetriedUndoNeverUndoesASecondSubmission) {
  TempDir dir("srv");
  auto o = test_server_options(dir);
  auto tokens = seed_store(o.db_path, 3, 1, 1);
  RunningServer rs(o);
  auto c = std::make_unique<ann::Connection>(o.socket_path);
  ASSERT_TRUE(c->call(hello_request(tokens[0])).has_hello());
  std::vector<int64_t> tasks, ids;
  for (int i = 0; i < 2; ++i) {
    pb::Response t = c->call(get_task());
    ASSERT_TRUE(t.has_task()) << t.DebugString();
    pb::Response ok = c->call(submit(t.task().task_id(), {{0}, {1}, {2}}));
    ASSERT_TRUE(ok.has_submitted()) << ok.DebugString();
    tasks.push_back(t.task().task_id());
    ids.push_back(ok.submitted().ranking_id());
  }
  pb::Response first = c->call(undo(ids[1]));
  ASSERT_TRUE(first.has_undone()) << first.DebugString();
  EXPECT_EQ(first.undone().task_id(), tasks[1]);
  EXPECT_EQ(first.undone().ranking_id(), ids[1]);
  // The reply is lost with the connection; the client reconnects and sends the Undo again, twice.
  c = std::make_unique<ann::Connection>(o.socket_path);
  ASSERT_TRUE(c->call(hello_request(tokens[0])).has_hello());
  for (int retry = 0; retry < 2; ++retry) {
    pb::Response again = c->call(undo(ids[1]));
    ASSERT_TRUE(again.has_undone()) << again.DebugString();
    EXPECT_EQ(again.undone().task_id(), tasks[1]);
  }
  // The task comes back and is ranked again (SQLite gives the new ranking the freed id); a late
  // retry still removes nothing.
  pb::Response back = c->call(get_task());
  ASSERT_TRUE(back.has_task()) << back.DebugString();
  EXPECT_EQ(back.task().task_id(), tasks[1]);
  ASSERT_TRUE(c->call(submit(tasks[1], {{2}, {1}, {0}})).has_submitted());
  EXPECT_TRUE(c->call(undo(ids[1])).has_undone());
  // An id that is not the latest submission is refused.
  pb::Response stale = c->call(undo(ids[0]));
  ASSERT_TRUE(stale.has_error()) << stale.DebugString();
  EXPECT_EQ(stale.error().code(), pb::Error::NOTHING_TO_UNDO);
  EXPECT_NE(stale.error().message().find(std::to_string(ids[0])), std::string::npos);
  rs.stop();
  ann::Store store(o.db_path);
  auto all = store.all_rankings();
  ASSERT_EQ(all.size(), 2u);  // the first submission and the re-ranking: nothing undone twice
  EXPECT_EQ(all[0].task_id, tasks[0]);
  EXPECT_EQ(all[1].task_id, tasks[1]);
  EXPECT_EQ(all[1].groups, (ann::Groups{{2}, {1}, {0}}));
}

TEST(Server, GracefulStopFinishesAndRemovesTheSocket) {
  TempDir dir("srv");
  auto o = test_server_options(dir);
  auto tokens = seed_store(o.db_path, 10, 1, 1);
  RunningServer rs(o);
  ann::Connection c(o.socket_path);
  ASSERT_TRUE(c.call(hello_request(tokens[0])).has_hello());
  pb::Response t = c.call(get_task());
  ASSERT_TRUE(t.has_task());
  c.send(submit(t.task().task_id(), {{0}, {1}, {2}}));  // in flight while we stop
  rs.stop();                                            // run() returned
  EXPECT_FALSE(rlhf::file_exists(o.socket_path));
  // The in-flight submission was either answered (and then stored) or never acknowledged.
  bool acked = false;
  try {
    acked = c.receive().has_submitted();
  } catch (const ann::ConnectionLost&) {
  }
  ann::Store store(o.db_path);
  EXPECT_EQ(store.ranking_count(), acked ? 1 : 0);  // acknowledged <=> stored
  EXPECT_THROW(ann::Connection(o.socket_path), ann::ConnectionLost);
}

TEST(Server, ReplacesAStaleSocketAndRefusesALiveOne) {
  TempDir dir("srv");
  auto o = test_server_options(dir);
  seed_store(o.db_path, 1, 1, 1);
  {  // a socket file left behind by a crashed process
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, o.socket_path.c_str(), sizeof(addr.sun_path) - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ::close(fd);
    ASSERT_TRUE(rlhf::file_exists(o.socket_path));
  }
  RunningServer rs(o);  // replaced the stale file
  ann::Connection ok(o.socket_path);
  try {
    ann::Server second(o);
    FAIL() << "a second server on a live socket must be refused";
  } catch (const rlhf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("already listening"), std::string::npos) << e.what();
  }
  ann::Connection still(o.socket_path);  // the first server is unharmed

  auto o2 = test_server_options(dir);
  o2.socket_path = dir / "plain-file";
  rlhf::write_file_atomic(o2.socket_path, "not a socket");
  EXPECT_THROW(ann::Server s(o2), rlhf::Error);
  EXPECT_EQ(rlhf::read_file(o2.socket_path), "not a socket");
}
