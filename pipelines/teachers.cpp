#include "pipelines/teachers.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>

#include "annotation/frame.h"
#include "annotation/local_socket.h"
#include "common/error.h"
#include "pipelines/quickstart_task.h"
#include "policy/tokenizer/prompt_format.h"

namespace rlhf::pipelines {

namespace {

using Clock = std::chrono::steady_clock;

// Closes a descriptor on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

int ms_left(Clock::time_point deadline) {
  const auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, 1 << 30));
}

// Waits until `fd` is ready for `events` or the deadline passes (false).
bool wait_ready(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, ms_left(deadline));
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) return false;
  }
}

// Writes all of `data`; false on a deadline or a closed peer.
bool write_all(int fd, const std::string& data, Clock::time_point deadline) {
  size_t done = 0;
  while (done < data.size()) {
    if (!wait_ready(fd, POLLOUT, deadline)) return false;
    const ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

enum class ReadResult { kFrame, kTimeout, kClosed, kTooLarge };

// Reads one frame's payload.
ReadResult read_frame(int fd, Clock::time_point deadline, std::string* payload) {
  annotation::FrameDecoder decoder;
  char buf[65536];
  for (;;) {
    switch (decoder.next(payload)) {
      case annotation::FrameDecoder::Status::kFrame:
        return ReadResult::kFrame;
      case annotation::FrameDecoder::Status::kTooLarge:
        return ReadResult::kTooLarge;
      case annotation::FrameDecoder::Status::kNeedMore:
        break;
    }
    if (!wait_ready(fd, POLLIN, deadline)) return ReadResult::kTimeout;
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return ReadResult::kClosed;
    decoder.feed(buf, static_cast<size_t>(n));
  }
}

int connect_unix(const std::string& path, std::string* error) {
  sockaddr_un addr{};
  if (path.size() >= sizeof addr.sun_path) {
    *error = "the path is longer than a Unix socket path may be";
    return -1;
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    *error = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    return -1;
  }
  return fd;
}

// The texts a teacher scores (TeacherText's rules).
std::string prompt_text(const TeacherText& t, const std::vector<int64_t>& ids) {
  std::vector<int> body;
  for (size_t i = 0; i < ids.size(); ++i)
    if (!(i == 0 && ids[i] == t.bos) && policy::has_token(*t.tok, ids[i]))
      body.push_back(static_cast<int>(ids[i]));
  return t.tok->decode(body);
}

std::string response_text(const TeacherText& t, const std::vector<int64_t>& ids) {
  return policy::decode_reply(*t.tok, ids, t.eos, t.stop_ids);
}

float arithmetic_score(const std::string& prompt, const std::string& response) {
  const auto problem = quickstart::parse_prompt(prompt);
  return problem && quickstart::is_correct(*problem, response) ? 1.0f : 0.0f;
}

proto::ScoreRequest build_request(const TeacherText& text,
                                  const std::vector<std::vector<int64_t>>& prompts,
                                  const std::vector<std::vector<int64_t>>& responses) {
  proto::ScoreRequest req;
  req.set_protocol_version(kTeacherProtocolVersion);
  for (size_t i = 0; i < prompts.size(); ++i) {
    proto::ScoreItem* item = req.add_items();
    for (size_t j = 0; j < prompts[i].size(); ++j)
      if (!(j == 0 && prompts[i][j] == text.bos)) item->add_prompt_ids(prompts[i][j]);
    for (int64_t id : responses[i]) item->add_response_ids(id);
    if (text.tok) {
      item->set_prompt(prompt_text(text, prompts[i]));
      item->set_response(response_text(text, responses[i]));
    }
  }
  return req;
}

// One batch through the scorer on `path`; throws rlhf::Error naming the socket and the failure.
std::vector<float> ask_scorer(const proto::TeacherConfig& cfg, const proto::ScoreRequest& req) {
  const std::string where = "teacher socket " + cfg.socket() + ": ";
  const auto deadline =
      Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(cfg.timeout_seconds() * 1e3));
  std::string why;
  Fd fd{connect_unix(cfg.socket(), &why)};
  if (fd.fd < 0) throw Error(where + "cannot connect (" + why + "); is the scorer running?");
  const std::string n = std::to_string(req.items_size());
  if (!write_all(fd.fd, annotation::encode_frame(req), deadline))
    throw Error(where + "the scorer did not take the request for " + n + " answers");
  std::string payload;
  switch (read_frame(fd.fd, deadline, &payload)) {
    case ReadResult::kTimeout:
      throw Error(where + "no answer within " + std::to_string(cfg.timeout_seconds()) +
                  " s for a batch of " + n + " answers (TeacherConfig.timeout_seconds)");
    case ReadResult::kClosed:
      throw Error(where + "the scorer closed the connection before answering");
    case ReadResult::kTooLarge:
      throw Error(where + "the answer is not a framed ScoreResponse (its length prefix is over " +
                  std::to_string(annotation::kMaxFrameBytes) + " bytes)");
    case ReadResult::kFrame:
      break;
  }
  proto::ScoreResponse resp;
  if (!resp.ParseFromString(payload))
    throw Error(where + "the answer (" + std::to_string(payload.size()) +
                " bytes) is not a ScoreResponse");
  if (!resp.error().empty()) throw Error(where + "the scorer reported: " + resp.error());
  if (resp.scores_size() != req.items_size())
    throw Error(where + "the scorer answered " + std::to_string(resp.scores_size()) +
                " scores for " + n + " answers");
  std::vector<float> out(resp.scores().begin(), resp.scores().end());
  for (size_t i = 0; i < out.size(); ++i)
    if (!std::isfinite(out[i]))
      throw Error(where + "score " + std::to_string(i) + " is " + std::to_string(out[i]) +
                  " (expected a finite number)");
  return out;
}

}  // namespace

policy::TeacherFn make_rule_teacher(const std::string& name, const TeacherText& text) {
  if (name != "arithmetic")
    throw Error("teacher rule \"" + name + "\" is not known (expected \"arithmetic\")");
  if (!text.tok) throw Error("teacher rule \"" + name + "\" needs PpoConfig.tokenizer");
  return [text](const std::vector<std::vector<int64_t>>& prompts,
                const std::vector<std::vector<int64_t>>& responses) {
    std::vector<float> out;
    for (size_t i = 0; i < prompts.size(); ++i)
      out.push_back(
          arithmetic_score(prompt_text(text, prompts[i]), response_text(text, responses[i])));
    return out;
  };
}

policy::TeacherFn make_socket_teacher(const proto::TeacherConfig& config, const TeacherText& text) {
  if (!(config.timeout_seconds() > 0))
    throw Error("teacher.timeout_seconds: expected > 0, got " +
                std::to_string(config.timeout_seconds()));
  return [config, text](const std::vector<std::vector<int64_t>>& prompts,
                        const std::vector<std::vector<int64_t>>& responses) {
    return ask_scorer(config, build_request(text, prompts, responses));
  };
}

proto::ScoreResponse score_by_rule(const std::string& name, const proto::ScoreRequest& request) {
  proto::ScoreResponse resp;
  if (request.protocol_version() != kTeacherProtocolVersion) {
    resp.set_error("protocol_version " + std::to_string(request.protocol_version()) +
                   " is not supported (this scorer speaks " +
                   std::to_string(kTeacherProtocolVersion) + ")");
    return resp;
  }
  if (name != "arithmetic") {
    resp.set_error("rule \"" + name + "\" is not known");
    return resp;
  }
  for (const auto& item : request.items())
    resp.add_scores(arithmetic_score(item.prompt(), item.response()));
  return resp;
}

void serve_rule_teacher(const std::string& name, const std::string& socket_path,
                        const std::atomic<bool>* stop, const std::function<void()>& listening) {
  if (name != "arithmetic")
    throw Error("teacher rule \"" + name + "\" is not known (expected \"arithmetic\")");
  annotation::ServerLock lock(socket_path);
  Fd listener{annotation::listen_on_path(socket_path, 0600, 16)};
  if (listening) listening();
  while (!stop->load()) {
    if (!wait_ready(listener.fd, POLLIN, Clock::now() + std::chrono::milliseconds(200))) continue;
    Fd conn{::accept4(listener.fd, nullptr, nullptr, SOCK_CLOEXEC)};
    if (conn.fd < 0) continue;
    std::string payload;
    if (read_frame(conn.fd, Clock::now() + std::chrono::seconds(10), &payload) !=
        ReadResult::kFrame)
      continue;
    proto::ScoreRequest req;
    proto::ScoreResponse resp;
    if (req.ParseFromString(payload))
      resp = score_by_rule(name, req);
    else
      resp.set_error("the request is not a ScoreRequest");
    write_all(conn.fd, annotation::encode_frame(resp), Clock::now() + std::chrono::seconds(10));
  }
  ::unlink(socket_path.c_str());
}

}  // namespace rlhf::pipelines
