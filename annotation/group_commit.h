// Group commit: one store thread executes requests from many connections in batches, one SQLite
// transaction per batch, and answers each request only after its batch's transaction ended.
//
// At synchronous=FULL every commit costs an fsync (~0.6 ms here), so one transaction per ranking
// caps a server at ~1,700 rankings/s. Requests that arrive while a commit is in progress queue up
// and share the next transaction.
//
// The commit rule: no answer leaves before its batch's transaction ended, whatever the answer
// (a lease, a SubmitOk, an Error such as TASK_FULL that dropped a lease, a Hello, a read). An
// answer may depend on what earlier requests of the same batch wrote, so it is only true once
// those writes are durable. Clients that use SubmitRanking.want_next_task get their next task in
// the committed SubmitOk, so they pay no extra round trip per ranking.
//
// Failures inside a batch (the batch is answered consistently, never "nothing was stored" for
// something that was):
//  - a request that throws (a store error) while the transaction stays usable is rolled back to
//    its own savepoint and answered INTERNAL; the rest of the batch goes on and commits, and
//    their answers are true;
//  - when the failure takes the transaction with it (SQLite rolled it back: disk full, I/O
//    error, RAISE(ROLLBACK), or the savepoint rollback itself failed), or the COMMIT fails, the
//    whole batch is aborted: the transaction is rolled back, no further request of it runs,
//    every request of the batch is answered INTERNAL ("nothing of this request was stored;
//    send it again") and each connection's session state (Hello) is restored to what it was
//    before the batch. A request never runs outside the batch's transaction
//    (Store::Savepoint refuses to start one).
// Failures are logged to stderr, at most one line per second (the count of lines left out is in
// the next one).
//
// Errors: nothing is thrown to the callers of submit(): a failing request is answered INTERNAL as
// above. The constructor throws std::system_error when the store thread cannot start.
//
// Thread safety: submit(), stop() and stats() may be called from any thread. Completions run on the
// store thread; they must be short (post the response to the connection's executor). A session must
// not have two requests in the same batch (the server keeps one request in flight per
// connection).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

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
  // Runs the batch in one transaction; "" when it committed, else why it was rolled back.
  std::string execute_batch(std::deque<Job>& batch, std::vector<proto::Response>& responses);
  // Runs one request inside its own savepoint (see the failure rules above). Returns why the
  // batch must be aborted, or "" when the transaction is still usable.
  std::string run_request(Job& job, proto::Response& response);

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
