#include "annotation/request_handler.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "annotation/frame.h"
#include "common/error.h"

namespace rlhf::annotation {

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

proto::Response error_response(proto::Error::Code code, const std::string& message,
                               uint64_t request_id) {
  proto::Response r;
  r.set_schema_version(kProtocolVersion);
  r.set_request_id(request_id);
  r.mutable_error()->set_code(code);
  r.mutable_error()->set_message(message);
  return r;
}

std::optional<proto::Response> answer_without_store(const proto::Request& request,
                                                    const SessionState& session) {
  std::optional<proto::Response> r;
  if (request.schema_version() > kProtocolVersion) {
    r = error_response(proto::Error::UNSUPPORTED_VERSION,
                       "request schema_version " + std::to_string(request.schema_version()) +
                           " is newer than the server's " + std::to_string(kProtocolVersion));
  } else if (request.body_case() == proto::Request::BODY_NOT_SET) {
    r = error_response(proto::Error::BAD_MESSAGE, "the Request has no body");
  } else if (request.body_case() != proto::Request::kHello && !session.annotator_id) {
    r = error_response(proto::Error::UNAUTHENTICATED,
                       "send Hello with a token before any other request");
  }
  if (r) {
    r->set_schema_version(kProtocolVersion);
    r->set_request_id(request.request_id());
  }
  return r;
}

RequestHandler::RequestHandler(Store& store, HandlerOptions options, std::function<double()> clock)
    : store_(store), options_(options), clock_(std::move(clock)) {}

proto::Response RequestHandler::handle(const proto::Request& request, SessionState& session) {
  if (auto early = answer_without_store(request, session)) return *early;
  proto::Response response;
  if (request.body_case() == proto::Request::kHello) {
    auto a = store_.annotator_by_token(request.hello().token());
    if (!a || !a->active) {
      session = SessionState{};
      response = error_response(proto::Error::UNAUTHENTICATED,
                                a ? "the token of annotator '" + a->name + "' was revoked"
                                  : "unknown token (get one from rlhf annotate add-annotator)");
    } else {
      session.annotator_id = a->id;
      session.annotator_name = a->name;
      auto* h = response.mutable_hello();
      h->set_annotator(a->name);
      h->set_role(a->role);
      h->set_lease_seconds(options_.lease_seconds);
    }
  } else {
    auto a = store_.annotator_by_id(*session.annotator_id);
    if (!a || !a->active) {
      std::string name = session.annotator_name;
      session = SessionState{};
      response = error_response(proto::Error::UNAUTHENTICATED,
                                "the token of annotator '" + name + "' was revoked");
    } else {
      switch (request.body_case()) {
        case proto::Request::kGetTask:
          response = get_task(a->id);
          break;
        case proto::Request::kSubmit:
          response = submit(request.submit(), a->id);
          break;
        case proto::Request::kUndo:
          response = undo(a->id, request.undo().ranking_id());
          break;
        case proto::Request::kGetProgress:
          response = progress(a->id);
          break;
        default:
          response = error_response(proto::Error::BAD_MESSAGE, "the Request has no body");
      }
    }
  }
  response.set_schema_version(kProtocolVersion);
  response.set_request_id(request.request_id());
  return response;
}

proto::Response RequestHandler::task_response(int64_t task_id, double expires_at) {
  auto t = store_.task(task_id);
  if (!t) throw Error("task " + std::to_string(task_id) + " vanished");
  proto::Response r;
  auto* task = r.mutable_task();
  task->set_task_id(t->id);
  task->set_prompt(t->prompt);
  for (auto& a : t->answers) task->add_answers(a);
  task->set_lease_seconds_left(std::max(0.0, expires_at - clock_()));
  return r;
}

proto::Response RequestHandler::get_task(int64_t annotator_id) {
  double now = clock_();
  if (now - last_cleanup_ > 60) {  // keep the leases table small
    store_.drop_expired_leases(now);
    last_cleanup_ = now;
  }
  double expires = now + options_.lease_seconds;
  for (;;) {  // each round leases a task or quarantines one, so it ends
    std::optional<int64_t> id = store_.held_lease(annotator_id, now);  // renewed below
    if (!id) id = store_.next_open_task(annotator_id, now);
    if (!id) break;
    if (auto reply = lease_if_sendable(*id, annotator_id, expires)) return *reply;
  }
  proto::Response r;
  auto blocking = store_.earliest_blocking_lease(annotator_id, now);
  r.mutable_no_task()->set_retry_after_seconds(blocking ? std::max(0.1, *blocking - now) : 0.0);
  return r;
}

std::optional<proto::Response> RequestHandler::lease_if_sendable(int64_t task_id,
                                                                 int64_t annotator_id,
                                                                 double expires_at) {
  proto::Response reply = task_response(task_id, expires_at);
  const auto& t = reply.task();
  const std::vector<std::string> answers(t.answers().begin(), t.answers().end());
  const size_t bytes = task_reply_bytes(t.prompt(), answers);
  if (bytes > kMaxFrameBytes) {
    const std::string reason = "task_too_large: a reply carrying it needs " +
                               std::to_string(bytes) + " bytes, the frame limit is " +
                               std::to_string(kMaxFrameBytes);
    store_.quarantine_task(task_id, reason);
    std::fprintf(stderr, "annotation server: task %lld quarantined, never leased: %s\n",
                 static_cast<long long>(task_id), reason.c_str());
    return std::nullopt;
  }
  store_.put_lease(task_id, annotator_id, expires_at);
  return reply;
}

proto::Response RequestHandler::submit(const proto::SubmitRanking& s, int64_t annotator_id) {
  auto task = store_.task(s.task_id());
  if (!task)
    return error_response(proto::Error::UNKNOWN_TASK,
                          "there is no task " + std::to_string(s.task_id()));
  int kinds = (s.groups_size() > 0) + s.none_acceptable() + s.skip() + !s.flag().empty();
  if (kinds != 1)
    return error_response(proto::Error::BAD_MESSAGE,
                          "a submission needs exactly one of: groups, none_acceptable, skip, flag "
                          "(got " +
                              std::to_string(kinds) + ")");
  if (!std::isfinite(s.seconds()) || s.seconds() < 0)
    return error_response(proto::Error::BAD_MESSAGE, "seconds must be a finite number >= 0");
  RankingRecord rec;
  rec.task_id = task->id;
  rec.annotator_id = annotator_id;
  rec.none_acceptable = s.none_acceptable();
  rec.skipped = s.skip();
  rec.flag = s.flag();
  rec.seconds = s.seconds();
  if (s.groups_size() > 0) {
    int n = static_cast<int>(task->answers.size());
    for (const auto& g : s.groups()) {
      rec.groups.emplace_back();
      for (uint32_t i : g.answers())
        rec.groups.back().push_back(i > 1000 ? 1000 : static_cast<int>(i));
    }
    std::string why;
    if (!is_permutation(rec.groups, n, &why))
      return error_response(proto::Error::NOT_PERMUTATION, "task " + std::to_string(task->id) +
                                                               " has " + std::to_string(n) +
                                                               " answers; the ranking " + why);
  }
  double now = clock_();
  auto expiry = store_.lease_expiry(task->id, annotator_id);
  bool live = expiry && *expiry > now;
  if (!live && !store_.was_delivered(task->id, annotator_id))
    return error_response(proto::Error::NOT_LEASED,
                          "task " + std::to_string(task->id) +
                              " was never leased to you; ask for a task with GetTask and "
                              "submit that one");
  if (store_.ranking_of(task->id, annotator_id))
    return error_response(proto::Error::ALREADY_SUBMITTED,
                          "you already submitted task " + std::to_string(task->id));
  // A live lease holds a slot of its own; a late submission may only take a free one.
  int64_t reserved = live ? 0 : store_.live_leases_of_others(task->id, annotator_id, now);
  if (rec.counts() && task->done_count + reserved >= task->overlap) {
    store_.drop_lease(task->id, annotator_id);
    return error_response(
        proto::Error::TASK_FULL,
        "task " + std::to_string(task->id) + " needs " + std::to_string(task->overlap) +
            " ranking(s): " + std::to_string(task->done_count) + " done, " +
            std::to_string(reserved) +
            " leased to others; your lease had expired and its slot was given to others");
  }
  rec.created_unix = now;
  int64_t id = store_.insert_ranking(rec);
  store_.drop_lease(task->id, annotator_id);
  proto::Response r;
  r.mutable_submitted()->set_task_id(task->id);
  r.mutable_submitted()->set_ranking_id(id);
  if (s.want_next_task()) {
    proto::Response next = get_task(annotator_id);
    if (next.has_task()) {
      r.mutable_submitted()->mutable_next_task()->Swap(next.mutable_task());
    } else {
      r.mutable_submitted()->mutable_no_task()->Swap(next.mutable_no_task());
    }
  }
  return r;
}

proto::Response RequestHandler::undo(int64_t annotator_id, int64_t ranking_id) {
  auto last = store_.latest_ranking_of(annotator_id);
  double now = clock_();
  if (ranking_id != 0) {
    // SQLite may give a later submission the id of a removed one, so "still there" means the
    // same id and the same creation time: the removal was rolled back (INTERNAL), or never made.
    const auto undone = last_undone_.find(annotator_id);
    const bool undone_before = undone != last_undone_.end() && undone->second.id == ranking_id;
    const bool still_there = last && last->id == ranking_id &&
                             (!undone_before || last->created_unix == undone->second.created_unix);
    if (!still_there && undone_before) {  // a retry of a committed undo: nothing more to do
      proto::Response r;
      r.mutable_undone()->set_task_id(undone->second.task_id);
      r.mutable_undone()->set_ranking_id(ranking_id);
      return r;
    }
    if (!still_there)
      return error_response(proto::Error::NOTHING_TO_UNDO,
                            "submission " + std::to_string(ranking_id) +
                                " is not your latest (it was undone already, or you submitted "
                                "another since)");
  }
  if (!last)
    return error_response(proto::Error::NOTHING_TO_UNDO, "you have not submitted anything yet");
  if (now - last->created_unix > options_.lease_seconds)
    return error_response(proto::Error::NOTHING_TO_UNDO,
                          "your last submission (task " + std::to_string(last->task_id) +
                              ") is older than the lease time of " +
                              std::to_string(static_cast<int>(options_.lease_seconds)) + " s");
  store_.delete_ranking(*last);
  store_.put_lease(last->task_id, annotator_id, now + options_.lease_seconds);
  last_undone_[annotator_id] = *last;
  proto::Response r;
  r.mutable_undone()->set_task_id(last->task_id);
  r.mutable_undone()->set_ranking_id(last->id);
  return r;
}

proto::Response RequestHandler::progress(int64_t annotator_id) {
  auto secs = store_.seconds_of(annotator_id);
  proto::Response r;
  auto* p = r.mutable_progress();
  p->set_done(static_cast<int64_t>(secs.size()));
  p->set_remaining(store_.remaining_for(annotator_id));
  if (!secs.empty()) {
    std::sort(secs.begin(), secs.end());
    size_t n = secs.size();
    p->set_median_seconds(n % 2 ? secs[n / 2] : 0.5 * (secs[n / 2 - 1] + secs[n / 2]));
  }
  return r;
}

}  // namespace rlhf::annotation
