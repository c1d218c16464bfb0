// Group commit: one store thread executes requests from many connections in batches, one SQLite
// transaction per batch, and answers each request only after its batch committed.
//
// At synchronous=FULL every commit costs an fsync (~0.6 ms here), so one transaction per ranking
// caps a server at ~1,700 rankings/s. Requests that arrive while a commit is in progress queue up
// and share the next transaction. Each request runs inside its own savepoint: a request that
// fails with a store error is rolled back alone and answered INTERNAL; if the COMMIT itself fails,
// every request of the batch is answered INTERNAL and nothing of it is acknowledged.
//
// Submissions, undos and GetTask answers that hand out a task wait for the commit: a lease is the
// permission to submit (a task never leased to an annotator is refused NOT_LEASED), so it must
// survive a crash before the annotator starts working on the task. Requests whose effect need
// not survive a crash (Hello, GetProgress, GetTask answered NoTask) and every Error answer are
// sent as soon as they are handled. Clients that use SubmitRanking.want_next_task get their next
// task in the committed SubmitOk, so they pay no extra round trip per ranking.
//
// Thread safety: submit() and stop() may be called from any thread. Completions run on the store
// thread; they must be short (post the response to the connection's executor).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "annotation/request_handler.h"

namespace rlhf::annotation {

struct GroupCommitStats {
  int64_t batches = 0;   // transactions committed
  int64_t requests = 0;  // requests answered
  int64_t max_batch = 0;
};

class GroupCommitter {
 public:
  using Completion = std::function<void(proto::Response)>;

  // Takes ownership of nothing; `handler` (and its store) must outlive this object. Starts the
  // store thread. max_batch bounds the requests in one transaction.
  explicit GroupCommitter(RequestHandler& handler, size_t max_batch = 512);
  ~GroupCommitter();  // stop()
  GroupCommitter(const GroupCommitter&) = delete;
  GroupCommitter& operator=(const GroupCommitter&) = delete;

  // Queues a request. `session` is only touched on the store thread. After stop() began, the
  // request is answered SHUTTING_DOWN at once.
  void submit(proto::Request request, std::shared_ptr<SessionState> session, Completion done);

  // Finishes every queued request (committed and answered), then joins the store thread.
  void stop();

  GroupCommitStats stats() const;

 private:
  struct Job {
    proto::Request request;
    std::shared_ptr<SessionState> session;
    Completion done;
  };
  void loop();
  void run_batch(std::deque<Job>& batch);

  RequestHandler& handler_;
  size_t max_batch_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  bool stopping_ = false;
  GroupCommitStats stats_;
  std::thread thread_;
};

}  // namespace rlhf::annotation
