#include "annotation/group_commit.h"

#include <cstdio>

#include "common/error.h"

namespace rlhf::annotation {

GroupCommitter::GroupCommitter(RequestHandler& handler, size_t max_batch)
    : handler_(handler), max_batch_(max_batch ? max_batch : 1) {
  thread_ = std::thread([this] { loop(); });
}

GroupCommitter::~GroupCommitter() { stop(); }

void GroupCommitter::submit(proto::Request request, std::shared_ptr<SessionState> session,
                            Completion done) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      queue_.push_back(Job{std::move(request), std::move(session), std::move(done)});
      cv_.notify_one();
      return;
    }
  }
  done(error_response(proto::Error::SHUTTING_DOWN, "the server is shutting down",
                      request.request_id()));
}

void GroupCommitter::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

GroupCommitStats GroupCommitter::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void GroupCommitter::loop() {
  for (;;) {
    std::deque<Job> batch;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping and drained
      while (!queue_.empty() && batch.size() < max_batch_) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    run_batch(batch);
  }
}

namespace {
// Whether the response may only be sent after the batch committed.
bool waits_for_commit(const proto::Request& request, const proto::Response& response) {
  if (response.has_error()) return false;
  return request.body_case() == proto::Request::kSubmit ||
         request.body_case() == proto::Request::kUndo ||
         (request.body_case() == proto::Request::kGetTask && response.has_task());
}
}  // namespace

void GroupCommitter::run_batch(std::deque<Job>& batch) {
  std::vector<proto::Response> responses(batch.size());
  std::vector<char> answered(batch.size(), 0);
  Store& store = handler_.store();
  bool committed = false;
  std::string failure;
  try {
    Store::Transaction txn(store);
    for (size_t i = 0; i < batch.size(); ++i) {
      Store::Savepoint sp(store);
      try {
        responses[i] = handler_.handle(batch[i].request, *batch[i].session);
        sp.release();
        if (!waits_for_commit(batch[i].request, responses[i])) {
          answered[i] = 1;
          batch[i].done(std::move(responses[i]));
        }
      } catch (const std::exception& e) {
        // `sp` rolls this request back; the rest of the batch goes on.
        responses[i] =
            error_response(proto::Error::INTERNAL, std::string("store error: ") + e.what(),
                           batch[i].request.request_id());
        std::fprintf(stderr, "annotation server: request failed: %s\n", e.what());
      }
    }
    txn.commit();
    committed = true;
  } catch (const std::exception& e) {
    failure = e.what();
    std::fprintf(stderr, "annotation server: commit failed: %s\n", e.what());
  }
  if (!committed) {
    for (size_t i = 0; i < batch.size(); ++i)
      if (!answered[i])
        responses[i] = error_response(proto::Error::INTERNAL,
                                      "the commit failed, nothing was stored: " + failure,
                                      batch[i].request.request_id());
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.batches += committed;
    stats_.requests += static_cast<int64_t>(batch.size());
    stats_.max_batch = std::max<int64_t>(stats_.max_batch, static_cast<int64_t>(batch.size()));
  }
  for (size_t i = 0; i < batch.size(); ++i)
    if (!answered[i]) batch[i].done(std::move(responses[i]));
}

}  // namespace rlhf::annotation
