// The annotation protocol's logic as a pure function of (request, session state, store): no
// sockets, no threads. The server runs it on its store thread inside a group-commit transaction;
// tests call it directly.
//
// Rules it enforces:
//  - every request but Hello needs an authenticated session whose annotator is still active
//    (revocation takes effect on the next request);
//  - GetTask returns the task the annotator already leases, else leases the first open task the
//    annotator has not judged whose remaining slots are not all leased by others; an annotator
//    never gets a task twice and a task never gets more counted rankings than its overlap;
//  - SubmitRanking (a ranking, none-acceptable, skip or flag) must come from an annotator the task
//    was leased to: one holding a live lease, or one whose lease expired (a delivery is recorded
//    in the store). Anyone else gets NOT_LEASED and nothing is stored, so guessing task ids
//    cannot take a slot from the annotator who holds the lease. A live lease is a reservation
//    that is always honoured; a late submission (lease expired) is accepted only into a slot
//    that is neither judged nor leased live to someone else (done + others' live leases <
//    overlap), otherwise TASK_FULL. So a task never exceeds its overlap and an annotator who
//    submits within their lease never loses their work. Skips and flags are stored but do not
//    count toward overlap;
//  - a task whose reply would exceed the frame limit (kMaxFrameBytes; an old database may hold
//    one added before add-tasks checked sizes) is never leased: GetTask quarantines it
//    (Store::quarantine_task, reason "task_too_large: ..."), logs one line naming it to stderr,
//    and hands out the next task instead;
//  - Undo removes the annotator's latest submission while it is "still open": younger than the
//    lease time (the window in which the task would still be reserved for them). The task is
//    leased to them again so they can re-rank it. An Undo naming the submission (ranking_id) is
//    idempotent: once that submission is gone, a retry removes nothing (UndoOk again when this
//    handler removed it, else NOTHING_TO_UNDO), so a lost reply never undoes a second one.
//
// Thread safety: a RequestHandler (like its Store) is used from one thread at a time, the
// server's store thread; answer_without_store and error_response are pure and may be called
// from any thread. Errors: client mistakes are answers, not exceptions; store failures throw
// rlhf::Error (see handle()).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>

#include "annotation/sqlite_store.h"
#include "proto/annotation.pb.h"

namespace rlhf::annotation {

constexpr uint32_t kProtocolVersion = 1;

// Per-connection state the handler reads and updates (Hello sets it).
struct SessionState {
  std::optional<int64_t> annotator_id;
  std::string annotator_name;
};

struct HandlerOptions {
  double lease_seconds = 600;  // how long a leased task is reserved for its annotator
};

// Unix time in seconds (the default clock).
double unix_seconds();

// The checks made before a request may reach the store thread: a schema_version newer than the
// server's, a Request without a body, or anything but Hello on a connection that has not
// authenticated. Returns the Error answer for such a request (the connection answers it at
// once; nothing was read or written), or nullopt when the request may go to the store. Needs no
// store. The server calls it on the I/O thread while the connection has no request in flight
// (so `session` is not being written by the store thread); handle() runs it first as well.
std::optional<proto::Response> answer_without_store(const proto::Request& request,
                                                    const SessionState& session);

class RequestHandler {
 public:
  // `store` must outlive the handler. `clock` returns Unix seconds (tests pass a fake one).
  RequestHandler(Store& store, HandlerOptions options,
                 std::function<double()> clock = unix_seconds);

  // Answers one request. Client mistakes become an Error response; the store is changed only
  // for successful requests. Store failures throw rlhf::Error: the caller must roll back what the
  // request did (Store::Savepoint) and answer INTERNAL. Call inside a Store::Transaction.
  proto::Response handle(const proto::Request& request, SessionState& session);

  Store& store() { return store_; }
  const HandlerOptions& options() const { return options_; }

 private:
  proto::Response get_task(int64_t annotator_id);
  // Leases the task and returns its reply, or quarantines it and returns nullopt when the reply
  // would exceed the frame limit.
  std::optional<proto::Response> lease_if_sendable(int64_t task_id, int64_t annotator_id,
                                                   double expires_at);
  proto::Response submit(const proto::SubmitRanking& s, int64_t annotator_id);
  // ranking_id 0: the latest submission; else that one, once (see proto Undo).
  proto::Response undo(int64_t annotator_id, int64_t ranking_id);
  proto::Response progress(int64_t annotator_id);
  proto::Response task_response(int64_t task_id, double expires_at);

  Store& store_;
  HandlerOptions options_;
  std::function<double()> clock_;
  double last_cleanup_ = 0;
  // Per annotator, the submission undone last: a retried Undo of it (whose removal was committed)
  // is answered UndoOk again without removing anything.
  std::unordered_map<int64_t, RankingRecord> last_undone_;
};

// Helper: a Response holding an Error.
proto::Response error_response(proto::Error::Code code, const std::string& message,
                               uint64_t request_id = 0);

}  // namespace rlhf::annotation
