// The pure Request -> Response handler, driven without sockets on a real SQLite file.
#include <gtest/gtest.h>

#include <mutex>
#include <set>

#include "annotation/group_commit.h"
#include "annotation/request_handler.h"
#include "tests/test_support.h"

namespace ann = rlhf::annotation;
namespace pb = rlhf::proto;
using rlhf::testing::TempDir;

namespace {

struct Fixture {
  TempDir dir{"handler"};
  ann::Store store{dir / "a.db"};
  double now = 1000;
  ann::RequestHandler handler{store, ann::HandlerOptions{60}, [this] { return now; }};

  pb::Response call(const pb::Request& r, ann::SessionState& s) {
    ann::Store::Transaction txn(store);
    pb::Response out = handler.handle(r, s);
    txn.commit();
    return out;
  }
  ann::SessionState login(const std::string& token) {
    ann::SessionState s;
    pb::Request r;
    r.mutable_hello()->set_token(token);
    pb::Response resp = call(r, s);
    EXPECT_TRUE(resp.has_hello()) << resp.DebugString();
    return s;
  }
  pb::Response get(ann::SessionState& s) {
    pb::Request r;
    r.mutable_get_task();
    return call(r, s);
  }
  pb::Response submit(ann::SessionState& s, int64_t task, ann::Groups groups) {
    pb::Request r;
    r.set_request_id(7);
    auto* sub = r.mutable_submit();
    sub->set_task_id(task);
    sub->set_seconds(2.5);
    for (auto& g : groups) {
      auto* pg = sub->add_groups();
      for (int i : g) pg->add_answers(i);
    }
    return call(r, s);
  }
  void add_tasks(int n, int overlap, int answers = 3) {
    ann::Store::Transaction txn(store);
    for (int i = 0; i < n; ++i) {
      ann::TaskInput t;
      t.prompt = "prompt " + std::to_string(i);
      for (int k = 0; k < answers; ++k) t.answers.push_back(std::string(k + 1, 'x'));
      store.add_task(t, overlap);
    }
    txn.commit();
  }
};

}  // namespace

TEST(Handler, RequiresAValidActiveToken) {
  Fixture f;
  f.add_tasks(1, 1);
  std::string tok = f.store.add_annotator("alice", "annotator");
  ann::SessionState s;
  EXPECT_EQ(f.get(s).error().code(), pb::Error::UNAUTHENTICATED);  // no hello
  pb::Request bad;
  bad.mutable_hello()->set_token("wrong");
  EXPECT_EQ(f.call(bad, s).error().code(), pb::Error::UNAUTHENTICATED);
  s = f.login(tok);
  EXPECT_TRUE(f.get(s).has_task());
  f.store.set_annotator_active("alice", false);  // revoked while connected
  pb::Response r = f.get(s);
  EXPECT_EQ(r.error().code(), pb::Error::UNAUTHENTICATED);
  EXPECT_NE(r.error().message().find("revoked"), std::string::npos);
  pb::Request again;
  again.mutable_hello()->set_token(tok);
  EXPECT_EQ(f.call(again, s).error().code(), pb::Error::UNAUTHENTICATED);
}

// Revoking an annotator frees the tasks it had leased at once (not when the leases expire).
TEST(Handler, RevokingAnAnnotatorReleasesItsLeases) {
  Fixture f;
  f.add_tasks(1, 1);
  auto a = f.login(f.store.add_annotator("a", "annotator"));
  auto b = f.login(f.store.add_annotator("b", "annotator"));
  ASSERT_TRUE(f.get(a).has_task());
  EXPECT_FALSE(f.get(b).has_task());  // the only slot is leased to a
  f.store.set_annotator_active("a", false);
  pb::Response tb = f.get(b);
  ASSERT_TRUE(tb.has_task()) << tb.DebugString();
  EXPECT_EQ(tb.task().task_id(), 1);
  EXPECT_TRUE(f.submit(b, 1, {{0}, {1}, {2}}).has_submitted());
}

TEST(Handler, OverlapLeasesAndNoTaskTwice) {
  Fixture f;
  f.add_tasks(2, 2);
  auto a = f.login(f.store.add_annotator("a", "annotator"));
  auto b = f.login(f.store.add_annotator("b", "annotator"));
  auto c = f.login(f.store.add_annotator("c", "annotator"));
  pb::Response ta = f.get(a), tb = f.get(b), tc = f.get(c);
  ASSERT_TRUE(ta.has_task() && tb.has_task() && tc.has_task());
  EXPECT_EQ(ta.task().task_id(), 1);
  EXPECT_EQ(tb.task().task_id(), 1);        // overlap 2: two annotators share task 1
  EXPECT_EQ(tc.task().task_id(), 2);        // task 1's slots are all leased
  EXPECT_EQ(f.get(a).task().task_id(), 1);  // asking again returns the held lease
  EXPECT_EQ(ta.task().answers_size(), 3);
  EXPECT_NEAR(ta.task().lease_seconds_left(), 60, 1e-6);

  pb::Response ok = f.submit(a, 1, {{0}, {1, 2}});
  ASSERT_TRUE(ok.has_submitted()) << ok.DebugString();
  EXPECT_EQ(ok.request_id(), 7u);
  EXPECT_EQ(f.submit(a, 1, {{0}, {1}, {2}}).error().code(), pb::Error::ALREADY_SUBMITTED);
  EXPECT_EQ(f.get(a).task().task_id(), 2);  // never task 1 again
  EXPECT_EQ(f.submit(b, 1, {{2}, {1}, {0}}).submitted().task_id(), 1);
  EXPECT_EQ(f.store.task(1)->done_count, 2);
  // c had task 2, a too: overlap 2 reached after both submit; then nothing is left.
  EXPECT_TRUE(f.submit(c, 2, {{0, 1, 2}}).has_submitted());
  EXPECT_TRUE(f.submit(a, 2, {{1}, {0}, {2}}).has_submitted());
  pb::Response none = f.get(b);
  ASSERT_TRUE(none.has_no_task());
  EXPECT_EQ(none.no_task().retry_after_seconds(), 0);
}

TEST(Handler, ExpiredLeaseReturnsTaskAndLateSubmitIsJudgedByNeed) {
  Fixture f;
  f.add_tasks(1, 1);
  auto a = f.login(f.store.add_annotator("a", "annotator"));
  auto b = f.login(f.store.add_annotator("b", "annotator"));
  ASSERT_EQ(f.get(a).task().task_id(), 1);
  pb::Response wait = f.get(b);
  ASSERT_TRUE(wait.has_no_task());
  EXPECT_NEAR(wait.no_task().retry_after_seconds(), 60, 1e-6);  // a's lease blocks it
  f.now += 61;                                                  // a's lease expires
  ASSERT_EQ(f.get(b).task().task_id(), 1);                      // back in the queue
  EXPECT_TRUE(f.submit(b, 1, {{1}, {0}, {2}}).has_submitted());
  // a's lease was lost and the task is full now: a clear error, nothing stored.
  pb::Response late = f.submit(a, 1, {{0}, {1}, {2}});
  EXPECT_EQ(late.error().code(), pb::Error::TASK_FULL);
  EXPECT_EQ(f.store.ranking_count(), 1);
}

TEST(Handler, LateSubmitAcceptedWhileTaskStillNeedsRankings) {
  Fixture f;
  f.add_tasks(1, 2);
  auto a = f.login(f.store.add_annotator("a", "annotator"));
  ASSERT_EQ(f.get(a).task().task_id(), 1);
  f.now += 1000;  // lease long gone
  EXPECT_TRUE(f.submit(a, 1, {{0}, {1}, {2}}).has_submitted());
}

TEST(Handler, SubmitForATaskNeverLeasedToYouIsRefused) {
  Fixture f;
  f.add_tasks(2, 1);
  auto a = f.login(f.store.add_annotator("a", "annotator"));
  auto b = f.login(f.store.add_annotator("b", "annotator"));
  ASSERT_EQ(f.get(b).task().task_id(), 1);  // b leases task 1; a never received it
  pb::Response stolen = f.submit(a, 1, {{0}, {1}, {2}});
  EXPECT_EQ(stolen.error().code(), pb::Error::NOT_LEASED);
  EXPECT_NE(stolen.error().message().find("never leased to you"), std::string::npos);
  pb::Request skip;  // skips and flags need a lease too
  skip.mutable_submit()->set_task_id(1);
  skip.mutable_submit()->set_skip(true);
  EXPECT_EQ(f.call(skip, a).error().code(), pb::Error::NOT_LEASED);
  EXPECT_EQ(f.store.ranking_count(), 0);
  EXPECT_EQ(f.store.task(1)->done_count, 0);
  EXPECT_TRUE(f.submit(b, 1, {{2}, {1}, {0}}).has_submitted());  // the lease holder's work counts
  EXPECT_EQ(f.store.task(1)->done_count, 1);
  // An expired lease of someone else does not make the task yours either.
  f.now += 1000;
  EXPECT_EQ(f.submit(a, 2, {{0}, {1}, {2}}).error().code(), pb::Error::NOT_LEASED);
}

TEST(Handler, LateSubmitAfterExpiryTakesOnlyAFreeSlot) {
  // Overlap 2: b's lease expires, a leases the task; b (who received it) submits late into the
  // free slot and a, within their lease, still gets theirs.
  Fixture f;
  f.add_tasks(1, 2);
  auto a = f.login(f.store.add_annotator("a", "annotator"));
  auto b = f.login(f.store.add_annotator("b", "annotator"));
  ASSERT_EQ(f.get(b).task().task_id(), 1);
  f.now += 61;  // b's lease expires
  ASSERT_EQ(f.get(a).task().task_id(), 1);
  EXPECT_TRUE(f.submit(b, 1, {{1}, {0}, {2}}).has_submitted());
  EXPECT_TRUE(f.submit(a, 1, {{0}, {1}, {2}}).has_submitted());
  EXPECT_EQ(f.store.task(1)->done_count, 2);
}

TEST(Handler, LateSubmitNeverTakesTheSlotOfALiveLease) {
  // Overlap 1: b's lease expired and a holds the only slot now. b's late work is refused with
  // TASK_FULL (a clear error), a's submission within their lease is accepted.
  Fixture f;
  f.add_tasks(1, 1);
  auto a = f.login(f.store.add_annotator("a", "annotator"));
  auto b = f.login(f.store.add_annotator("b", "annotator"));
  ASSERT_EQ(f.get(b).task().task_id(), 1);
  f.now += 61;
  ASSERT_EQ(f.get(a).task().task_id(), 1);
  pb::Response late = f.submit(b, 1, {{1}, {0}, {2}});
  EXPECT_EQ(late.error().code(), pb::Error::TASK_FULL);
  EXPECT_EQ(f.store.ranking_count(), 0);
  EXPECT_TRUE(f.submit(a, 1, {{0}, {1}, {2}}).has_submitted());
  // Once a's lease has expired too without a submission, b's late work fills the free slot.
  Fixture g;
  g.add_tasks(1, 1);
  auto c = g.login(g.store.add_annotator("c", "annotator"));
  auto d = g.login(g.store.add_annotator("d", "annotator"));
  ASSERT_EQ(g.get(c).task().task_id(), 1);
  g.now += 61;
  ASSERT_EQ(g.get(d).task().task_id(), 1);
  g.now += 61;
  EXPECT_TRUE(g.submit(c, 1, {{1}, {0}, {2}}).has_submitted());
}

TEST(Handler, RejectsBadSubmissions) {
  Fixture f;
  f.add_tasks(1, 1);
  auto a = f.login(f.store.add_annotator("a", "annotator"));
  f.get(a);
  EXPECT_EQ(f.submit(a, 99, {{0}, {1}, {2}}).error().code(), pb::Error::UNKNOWN_TASK);
  EXPECT_EQ(f.submit(a, 1, {{0}, {1}}).error().code(), pb::Error::NOT_PERMUTATION);
  EXPECT_EQ(f.submit(a, 1, {{0}, {0}, {2}}).error().code(), pb::Error::NOT_PERMUTATION);
  EXPECT_EQ(f.submit(a, 1, {{0}, {1}, {7}}).error().code(), pb::Error::NOT_PERMUTATION);
  pb::Request both;
  both.mutable_submit()->set_task_id(1);
  both.mutable_submit()->set_skip(true);
  both.mutable_submit()->set_flag("bad prompt");
  EXPECT_EQ(f.call(both, a).error().code(), pb::Error::BAD_MESSAGE);
  pb::Request empty;
  empty.mutable_submit()->set_task_id(1);
  EXPECT_EQ(f.call(empty, a).error().code(), pb::Error::BAD_MESSAGE);
  pb::Request future;
  future.set_schema_version(9);
  future.mutable_get_task();
  EXPECT_EQ(f.call(future, a).error().code(), pb::Error::UNSUPPORTED_VERSION);
  EXPECT_EQ(f.store.ranking_count(), 0);
}

TEST(Handler, SkipAndFlagDoNotCountTowardOverlap) {
  Fixture f;
  f.add_tasks(1, 1);
  auto a = f.login(f.store.add_annotator("a", "annotator"));
  auto b = f.login(f.store.add_annotator("b", "annotator"));
  f.get(a);
  pb::Request skip;
  skip.mutable_submit()->set_task_id(1);
  skip.mutable_submit()->set_skip(true);
  ASSERT_TRUE(f.call(skip, a).has_submitted());
  EXPECT_EQ(f.store.task(1)->done_count, 0);
  EXPECT_TRUE(f.get(a).has_no_task());  // a skipped it: not shown again
  ASSERT_EQ(f.get(b).task().task_id(), 1);
  pb::Request none;
  none.mutable_submit()->set_task_id(1);
  none.mutable_submit()->set_none_acceptable(true);
  ASSERT_TRUE(f.call(none, b).has_submitted());
  EXPECT_EQ(f.store.task(1)->done_count, 1);  // none-acceptable is a judgement
}

TEST(Handler, UndoWhileOpenLeasesTheTaskAgain) {
  Fixture f;
  f.add_tasks(2, 1);
  auto a = f.login(f.store.add_annotator("a", "annotator"));
  pb::Request undo;
  undo.mutable_undo();
  EXPECT_EQ(f.call(undo, a).error().code(), pb::Error::NOTHING_TO_UNDO);
  ASSERT_EQ(f.get(a).task().task_id(), 1);
  ASSERT_TRUE(f.submit(a, 1, {{2}, {1}, {0}}).has_submitted());
  pb::Response u = f.call(undo, a);
  ASSERT_TRUE(u.has_undone()) << u.DebugString();
  EXPECT_EQ(u.undone().task_id(), 1);
  EXPECT_EQ(f.store.ranking_count(), 0);
  EXPECT_EQ(f.store.task(1)->done_count, 0);
  EXPECT_EQ(f.get(a).task().task_id(), 1);  // shown again
  ASSERT_TRUE(f.submit(a, 1, {{0}, {1}, {2}}).has_submitted());
  f.now += 61;  // older than the lease time: closed
  EXPECT_EQ(f.call(undo, a).error().code(), pb::Error::NOTHING_TO_UNDO);
  pb::Request prog;
  prog.mutable_get_progress();
  pb::Response p = f.call(prog, a);
  EXPECT_EQ(p.progress().done(), 1);
  EXPECT_EQ(p.progress().remaining(), 1);
  EXPECT_DOUBLE_EQ(p.progress().median_seconds(), 2.5);
}

TEST(GroupCommit, AnswersOnlyAfterCommitAndIsolatesFailures) {
  Fixture f;
  f.add_tasks(50, 1);
  std::vector<std::string> tokens;
  for (int i = 0; i < 8; ++i) tokens.push_back(f.store.add_annotator("s" + std::to_string(i), "x"));
  ann::HandlerOptions ho{60};
  ann::RequestHandler handler(f.store, ho);
  std::mutex mu;
  std::vector<pb::Response> answers;
  {
    ann::GroupCommitter gc(handler, 64);
    std::vector<std::shared_ptr<ann::SessionState>> sessions;
    for (auto& t : tokens) {
      auto s = std::make_shared<ann::SessionState>();
      pb::Request hello;
      hello.mutable_hello()->set_token(t);
      gc.submit(hello, s, [&](pb::Response r) {
        std::lock_guard<std::mutex> l(mu);
        answers.push_back(r);
      });
      pb::Request get;
      get.mutable_get_task();
      gc.submit(get, s, [&](pb::Response r) {
        std::lock_guard<std::mutex> l(mu);
        answers.push_back(r);
      });
      sessions.push_back(s);
    }
    gc.stop();  // drains
    auto st = gc.stats();
    EXPECT_EQ(st.requests, 16);
    EXPECT_GE(st.batches, 1);
    pb::Request late;
    late.mutable_get_task();
    gc.submit(late, sessions[0],
              [&](pb::Response r) { EXPECT_EQ(r.error().code(), pb::Error::SHUTTING_DOWN); });
  }
  ASSERT_EQ(answers.size(), 16u);
  std::set<int64_t> tasks;
  for (auto& r : answers)
    if (r.has_task()) tasks.insert(r.task().task_id());
  EXPECT_EQ(tasks.size(), 8u);  // overlap 1: eight annotators, eight different tasks
}
