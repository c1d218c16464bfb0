#include "annotation/group_commit.h"

#include <chrono>
#include <cstdio>

#include "common/error.h"

namespace rlhf::annotation {

namespace {

// Store failures are logged at most once per second (a full disk fails every request that
// writes); the lines left out are counted in the next one.
void log_store_failure(const std::string& line) {
  static std::mutex mu;
  static std::chrono::steady_clock::time_point last{};
  static int64_t left_out = 0;
  std::lock_guard<std::mutex> lock(mu);
  const auto now = std::chrono::steady_clock::now();
  if (now - last < std::chrono::seconds(1)) {
    ++left_out;
    return;
  }
  last = now;
  if (left_out > 0)
    std::fprintf(stderr, "annotation server: %s (and %lld more store failures not shown)\n",
                 line.c_str(), static_cast<long long>(left_out));
  else
    std::fprintf(stderr, "annotation server: %s\n", line.c_str());
  left_out = 0;
}

}  // namespace

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

void GroupCommitter::run_batch(std::deque<Job>& batch) {
  std::vector<SessionState> before;
  before.reserve(batch.size());
  for (const auto& job : batch) before.push_back(*job.session);
  std::vector<proto::Response> responses(batch.size());
  const std::string failure = execute_batch(batch, responses);
  if (!failure.empty()) {
    for (size_t i = 0; i < batch.size(); ++i) {
      *batch[i].session = before[i];
      responses[i] = error_response(proto::Error::INTERNAL,
                                    "the batch's transaction was rolled back (" + failure +
                                        "); nothing of this request was stored, send it again",
                                    batch[i].request.request_id());
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.batches += failure.empty();
    stats_.requests += static_cast<int64_t>(batch.size());
    stats_.max_batch = std::max<int64_t>(stats_.max_batch, static_cast<int64_t>(batch.size()));
  }
  for (size_t i = 0; i < batch.size(); ++i) batch[i].done(std::move(responses[i]));
}

std::string GroupCommitter::execute_batch(std::deque<Job>& batch,
                                          std::vector<proto::Response>& responses) {
  try {
    Store::Transaction txn(handler_.store());
    for (size_t i = 0; i < batch.size(); ++i) {
      std::string lost = run_request(batch[i], responses[i]);
      if (!lost.empty()) {
        log_store_failure("batch of " + std::to_string(batch.size()) + " aborted: " + lost);
        return lost;  // `txn` rolls back whatever is left
      }
    }
    txn.commit();
    return "";
  } catch (const std::exception& e) {
    log_store_failure("batch of " + std::to_string(batch.size()) +
                      " aborted, commit failed: " + e.what());
    return e.what();
  }
}

std::string GroupCommitter::run_request(Job& job, proto::Response& response) {
  const SessionState before = *job.session;
  Store::Savepoint sp(handler_.store());  // throws (aborting the batch) outside a transaction
  try {
    response = handler_.handle(job.request, *job.session);
    sp.release();
    return "";
  } catch (const std::exception& e) {
    *job.session = before;
    const std::string why = std::string("store error: ") + e.what();
    log_store_failure("request failed: " + why);
    response = error_response(proto::Error::INTERNAL, why + "; nothing of this request was stored",
                              job.request.request_id());
    if (!sp.roll_back()) return why + " (the transaction did not survive it)";
    return "";
  }
}

}  // namespace rlhf::annotation
