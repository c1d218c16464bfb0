#include "annotation/simulator.h"

#include <algorithm>
#include <chrono>
#include <numeric>
#include <optional>
#include <random>
#include <thread>

#include "annotation/ranking.h"
#include "annotation/teacher.h"
#include "common/error.h"

namespace rlhf::annotation {

SimulateResult simulate(const SimulateOptions& o,
                        const std::function<void(int64_t, int64_t)>& on_ack) {
  auto teacher = make_teacher(o.teacher);
  std::mt19937_64 rng(o.seed);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  ClientOptions co;
  co.socket_path = o.socket_path;
  co.token = o.token;
  co.server_uid = o.server_uid;
  co.retry_seconds = o.retry_seconds;
  co.client_name = "rlhf-simulate/" + o.teacher;
  AnnotationClient client(co);
  SimulateResult result;
  std::optional<proto::Task> next;  // from the last SubmitOk (want_next_task)
  while (o.max_tasks < 0 || result.acknowledged < o.max_tasks) {
    proto::Task task;
    if (next) {
      task = std::move(*next);
      next.reset();
    } else {
      proto::Request get;
      get.mutable_get_task();
      proto::Response r = client.call(get);
      if (r.has_error()) throw Error("get_task: " + r.error().message());
      if (r.has_no_task()) {
        double wait = r.no_task().retry_after_seconds();
        if (wait <= 0) break;
        std::this_thread::sleep_for(std::chrono::duration<double>(std::min(wait, 1.0)));
        continue;
      }
      task = r.task();
    }
    std::vector<std::string> answers(task.answers().begin(), task.answers().end());
    auto start = std::chrono::steady_clock::now();
    Groups groups;
    if (o.noise > 0 && unit(rng) < o.noise) {
      std::vector<int> order(answers.size());
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), rng);
      for (int i : order) groups.push_back({i});
    } else {
      groups = teacher->rank(task.prompt(), answers, rng);
    }
    std::string why;
    if (!is_permutation(groups, static_cast<int>(answers.size()), &why))
      throw Error("teacher '" + o.teacher + "' returned an invalid ranking for task " +
                  std::to_string(task.task_id()) + ": " + why);
    proto::Request sub;
    auto* s = sub.mutable_submit();
    s->set_task_id(task.task_id());
    for (const auto& g : groups) {
      auto* pg = s->add_groups();
      for (int i : g) pg->add_answers(static_cast<uint32_t>(i));
    }
    s->set_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    s->set_want_next_task(o.max_tasks < 0 || result.acknowledged + 1 < o.max_tasks);
    proto::Response ack = client.call(sub);
    if (ack.has_submitted()) {
      ++result.acknowledged;
      if (on_ack) on_ack(ack.submitted().task_id(), ack.submitted().ranking_id());
      if (ack.submitted().has_next_task()) next = ack.submitted().next_task();
    } else if (ack.has_error()) {
      // ALREADY_SUBMITTED after a resend (the first attempt committed but its answer was lost),
      // TASK_FULL after a lost lease, NOT_LEASED when the lease never reached the store: move on
      // to the next task.
      ++result.rejected;
      auto code = ack.error().code();
      if (code != proto::Error::ALREADY_SUBMITTED && code != proto::Error::TASK_FULL &&
          code != proto::Error::NOT_LEASED)
        throw Error("submit of task " + std::to_string(task.task_id()) + ": " +
                    ack.error().message());
    }
  }
  result.reconnects = client.reconnects();
  return result;
}

}  // namespace rlhf::annotation
