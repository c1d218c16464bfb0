// Simulated annotators: rank tasks through the real protocol with a Teacher (annotation/teacher.h).
// Thread safety: each simulate() call owns its client connection and teacher, so several may run
// at once on different threads (with different tokens).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "annotation/client.h"

namespace rlhf::annotation {

struct SimulateOptions {
  std::string socket_path;  // "" = default_socket_path()
  std::string token;
  std::optional<uid_t> server_uid = std::nullopt;  // the uid the server must run as; unset: ours
  std::string teacher = "length";                  // a registered teacher name
  double noise = 0;           // probability of replacing the teacher's ranking by a random one
  int64_t max_tasks = -1;     // stop after this many acknowledged submissions (-1: no limit)
  uint64_t seed = 0;          // seeds the rng passed to the teacher and the noise
  double retry_seconds = 30;  // reconnect for up to this long when the server goes away
};

struct SimulateResult {
  int64_t acknowledged = 0;  // SubmitOk received
  int64_t rejected = 0;  // submissions answered with an Error (e.g. TASK_FULL after a lost lease)
  int reconnects = 0;
};

// Runs until the queue is finished for this annotator (NoTask with retry 0) or max_tasks were
// acknowledged. `on_ack(task_id, ranking_id)` is called for every SubmitOk, on the calling thread.
// Throws rlhf::Error when the server stays away longer than retry_seconds or refuses the token,
// when the teacher is unknown or returns a ranking that is not a permutation, and when a request
// is answered with an error other than ALREADY_SUBMITTED, TASK_FULL or NOT_LEASED (those count as
// rejected); WrongServerUser (client.h) when the server runs as another uid.
SimulateResult simulate(const SimulateOptions& options,
                        const std::function<void(int64_t, int64_t)>& on_ack = {});

}  // namespace rlhf::annotation
