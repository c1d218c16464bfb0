// The pure Request -> Response handler, driven without sockets on a real SQLite file.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <algorithm>
#include <future>
#include <mutex>
#include <set>

#include "annotation/frame.h"
#include "annotation/group_commit.h"
#include "annotation/request_handler.h"
#include "annotation/stats.h"
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

// Issue #13 point 8: an Error answer computed inside a batch waits for the batch, and when the
// batch's transaction is lost every request of it is answered alike (INTERNAL) and its session
// changes (Hello) are undone.
TEST(GroupCommit, ErrorsWaitForTheBatchAndALostBatchAnswersEveryRequestAlike) {
  Fixture f;
  f.add_tasks(3, 1);
  std::string ta = f.store.add_annotator("a", "x");
  std::string tb = f.store.add_annotator("b", "x");
  std::string tc = f.store.add_annotator("c", "x");
  ann::SessionState sa = f.login(ta), sb = f.login(tb);
  ASSERT_EQ(f.get(sa).task().task_id(), 1);
  ASSERT_EQ(f.get(sb).task().task_id(), 2);
  // Any ranking of task 2 makes SQLite roll the whole transaction back (like an I/O error).
  ASSERT_EQ(sqlite3_exec(f.store.db(),
                         "CREATE TEMP TRIGGER poison BEFORE INSERT ON main.rankings WHEN "
                         "NEW.task_id = 2 BEGIN SELECT RAISE(ROLLBACK, 'injected'); END",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  auto a = std::make_shared<ann::SessionState>(sa);
  auto b = std::make_shared<ann::SessionState>(sb);
  auto c = std::make_shared<ann::SessionState>();
  std::mutex mu;
  std::vector<std::pair<int, pb::Response>> answers;
  auto record = [&](int job) {
    return [&, job](pb::Response r) {
      std::lock_guard<std::mutex> l(mu);
      answers.emplace_back(job, std::move(r));
    };
  };
  {
    ann::GroupCommitter gc(f.handler, 64);
    std::promise<void> release;
    std::shared_future<void> released = release.get_future().share();
    pb::Request progress;
    progress.mutable_get_progress();
    // Job 0's answer blocks the store thread, so jobs 1-3 queue up and share the next batch.
    gc.submit(progress, a, [&, released](pb::Response) { released.wait(); });
    pb::Request unknown;
    unknown.mutable_submit()->set_task_id(99);
    unknown.mutable_submit()->set_skip(true);
    gc.submit(unknown, a, record(1));  // UNKNOWN_TASK, were it answered at once
    pb::Request poisoned;
    poisoned.mutable_submit()->set_task_id(2);
    for (int i : {0, 1, 2}) poisoned.mutable_submit()->add_groups()->add_answers(i);
    gc.submit(poisoned, b, record(2));
    pb::Request hello;
    hello.mutable_hello()->set_token(tc);
    gc.submit(hello, c, record(3));
    release.set_value();
    gc.stop();
  }
  ASSERT_EQ(answers.size(), 3u);
  for (const auto& [job, r] : answers) {
    ASSERT_TRUE(r.has_error()) << job << ": " << r.DebugString();
    EXPECT_EQ(r.error().code(), pb::Error::INTERNAL) << job << ": " << r.DebugString();
    EXPECT_NE(r.error().message().find("nothing of this request was stored"), std::string::npos)
        << r.error().message();
  }
  EXPECT_FALSE(c->annotator_id) << "the Hello of a lost batch must not authenticate";
  EXPECT_EQ(f.store.ranking_count(), 0);
  EXPECT_EQ(f.store.held_lease(*sb.annotator_id, f.now), 2);  // b's earlier lease is intact
  EXPECT_EQ(f.store.integrity_check(), "ok");
}

// Issue #13 point 8: requests before Hello are answered without the store.
TEST(Handler, RequestsBeforeHelloAreAnsweredWithoutTheStore) {
  ann::SessionState anonymous;
  pb::Request get;
  get.set_request_id(5);
  get.mutable_get_task();
  auto early = ann::answer_without_store(get, anonymous);
  ASSERT_TRUE(early);
  EXPECT_EQ(early->error().code(), pb::Error::UNAUTHENTICATED);
  EXPECT_EQ(early->request_id(), 5u);
  pb::Request hello;
  hello.mutable_hello()->set_token("t");
  EXPECT_FALSE(ann::answer_without_store(hello, anonymous));
  pb::Request newer = hello;
  newer.set_schema_version(99);
  ASSERT_TRUE(ann::answer_without_store(newer, anonymous));
  EXPECT_EQ(ann::answer_without_store(newer, anonymous)->error().code(),
            pb::Error::UNSUPPORTED_VERSION);
  pb::Request empty;
  EXPECT_EQ(ann::answer_without_store(empty, anonymous)->error().code(), pb::Error::BAD_MESSAGE);
  ann::SessionState known;
  known.annotator_id = 1;
  EXPECT_FALSE(ann::answer_without_store(get, known));
}

// Issue #13 point 7: a task too large to send (an old database, added before add-tasks checked)
// is quarantined with a named reason and never leased, also when an annotator already held it.
TEST(Handler, ATaskTooLargeToSendIsQuarantinedAndNeverLeased) {
  Fixture f;
  {
    ann::Store::Transaction txn(f.store);
    const std::string half(ann::kMaxFrameBytes / 2, 'x');
    f.store.add_task({"too big", {half, half + "y"}, "", "", "old"}, 2);  // bypasses the check
    f.store.add_task({"fine", {"a", "b"}, "", "", "test"}, 2);
    txn.commit();
  }
  ann::SessionState a = f.login(f.store.add_annotator("a", "x"));
  ann::SessionState b = f.login(f.store.add_annotator("b", "x"));
  {
    ann::Store::Transaction txn(f.store);
    f.store.put_lease(1, *b.annotator_id, f.now + 60);  // leased by an older server
    txn.commit();
  }
  ::testing::internal::CaptureStderr();
  pb::Response ra = f.get(a);
  pb::Response rb = f.get(b);
  const std::string log = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(ra.has_task()) << ra.DebugString();
  EXPECT_EQ(ra.task().task_id(), 2);
  ASSERT_TRUE(rb.has_task()) << rb.DebugString();
  EXPECT_EQ(rb.task().task_id(), 2);
  EXPECT_FALSE(f.store.lease_expiry(1, *b.annotator_id));
  auto q = f.store.quarantined_tasks();
  ASSERT_EQ(q.size(), 1u);
  EXPECT_EQ(q[0].task_id, 1);
  EXPECT_EQ(q[0].reason.rfind("task_too_large: ", 0), 0u) << q[0].reason;
  EXPECT_NE(log.find("task 1 quarantined, never leased: task_too_large"), std::string::npos) << log;
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << log;  // logged once, when found
  EXPECT_EQ(f.get(a).task().task_id(), 2);  // a renews its lease; task 1 stays out
  ann::Stats st = ann::compute_stats(f.store);
  EXPECT_EQ(st.pending_tasks, 1);  // a pipeline waiting for "no pending task" is not stuck
  ASSERT_EQ(st.quarantined.size(), 1u);
  EXPECT_NE(ann::stats_to_text(st).find("quarantined (never leased): task 1: task_too_large"),
            std::string::npos);
}
