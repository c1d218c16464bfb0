// Teachers beyond the reward model, for the ppo stage (PpoConfig.teacher) and `rlhf teacher`:
//   - rule "arithmetic": 1 when the answer solves the quickstart's arithmetic problem in the prompt
//     (quickstart::parse_prompt / is_correct), else 0 (a prompt that is no such problem scores 0):
//     RL from a verifiable reward;
//   - socket PATH: an external scorer process (proto/teacher.proto over a Unix socket, framed as
//     annotation/frame.h). Per batch the stage connects, sends one ScoreRequest (prompt and answer
//     texts and ids) and reads one ScoreResponse within TeacherConfig.timeout_seconds. A scorer
//     that cannot be reached, times out, closes early, answers bytes that are not a
//     ScoreResponse, reports an error, answers the wrong number of scores or a score that is not
//     finite stops the stage with rlhf::Error naming the socket and what happened: never a silent
//     zero.
// serve_rule_teacher is the sample scorer (`rlhf teacher serve`): the rule teacher behind the
// socket protocol, so a user's own scorer has a working model to copy.
//
// Thread safety: a TeacherFn is called from one thread at a time (the trainer's); it holds the
// tokenizer by reference (it must outlive the function). serve_rule_teacher runs until *stop.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "policy/ppo/ppo_trainer.h"
#include "policy/tokenizer/tokenizer.h"
#include "proto/ppo.pb.h"
#include "proto/teacher.pb.h"

namespace rlhf::pipelines {

constexpr int kTeacherProtocolVersion = 1;

// How a teacher turns ids into the texts it scores: the prompt without BOS, the answer up to its
// EOS or a stop id (chat end of turn).
struct TeacherText {
  const policy::Tokenizer* tok = nullptr;  // required for texts
  int64_t bos = -1, eos = -1;
  std::vector<int64_t> stop_ids;
};

// The built-in rule `name` ("arithmetic"); throws rlhf::Error naming an unknown rule.
policy::TeacherFn make_rule_teacher(const std::string& name, const TeacherText& text);

// The scorer on `config.socket()` (see above).
policy::TeacherFn make_socket_teacher(const proto::TeacherConfig& config, const TeacherText& text);

// Scores of one request by rule `name` (what serve_rule_teacher answers).
proto::ScoreResponse score_by_rule(const std::string& name, const proto::ScoreRequest& request);

// Serves rule `name` on a Unix socket at `socket_path` (mode 0600) until *stop is set; each
// connection: one request, one answer. `listening` (optional) runs once the socket accepts.
// Throws rlhf::Error for an unknown rule or when it cannot listen.
void serve_rule_teacher(const std::string& name, const std::string& socket_path,
                        const std::atomic<bool>* stop,
                        const std::function<void()>& listening = nullptr);

}  // namespace rlhf::pipelines
