// Teachers beyond the reward model (pipelines/teachers.h): the arithmetic rule scores solved
// problems 1 and others 0; the sample scorer (`rlhf teacher serve`) answers the same over a real
// Unix socket; a scorer that cannot be reached, hangs, answers garbage, the wrong count, a NaN or
// an error stops with a message naming the socket; the ppo stage trains against a rule teacher and
// a socket teacher and refuses a config with no teacher or two.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <thread>

#include "annotation/frame.h"
#include "common/error.h"
#include "common/files.h"
#include "pipelines/ppo_stage.h"
#include "pipelines/quickstart_task.h"
#include "pipelines/teachers.h"
#include "policy/model/checkpoint.h"
#include "policy/ppo/rollout_file.h"
#include "policy/tokenizer/tokenizer.h"
#include "tests/fixtures/tiny_model.h"
#include "tests/test_support.h"

namespace rlhf::pipelines {
namespace {

using rlhf::testing::TempDir;

// A quickstart tokenizer and the ids of prompts and answers.
struct Fixture {
  TempDir dir{"teacher"};
  std::string tok_path;
  std::optional<policy::Tokenizer> tok;
  std::vector<quickstart::Problem> problems;
  Fixture() {
    quickstart::write_tokenizer_corpus(dir / "corpus.txt", 300, 1);
    policy::TokenizerTrainOptions t;
    t.input = dir / "corpus.txt";
    t.vocab_size = 512;
    t.out_dir = dir / "tok";
    tok_path = policy::train_tokenizer(t);
    tok = policy::Tokenizer::load(tok_path);
    problems = quickstart::generate_problems(quickstart::Split::kTrain, 4, 5);
  }
  std::vector<int64_t> ids(const std::string& text, bool bos) const {
    std::vector<int64_t> out;
    if (bos) out.push_back(tok->bos_id());
    for (int id : tok->encode(text)) out.push_back(id);
    return out;
  }
  TeacherText text() const {
    TeacherText t;
    t.tok = &*tok;
    t.bos = tok->bos_id();
    t.eos = tok->eos_id();
    return t;
  }
  // Prompts, and answers alternating gold / wrong (with EOS).
  void batch(std::vector<std::vector<int64_t>>* ps, std::vector<std::vector<int64_t>>* rs) const {
    for (size_t i = 0; i < problems.size(); ++i) {
      const auto& p = problems[i];
      ps->push_back(ids(p.prompt(), true));
      auto r = ids(" " + quickstart::answer_text(p, i % 2 ? p.gold() + 3 : p.gold()), false);
      r.push_back(tok->eos_id());
      rs->push_back(r);
    }
  }
};

TEST(Teachers, ArithmeticRuleScoresSolvedProblems) {
  Fixture f;
  std::vector<std::vector<int64_t>> ps, rs;
  f.batch(&ps, &rs);
  const auto scores = make_rule_teacher("arithmetic", f.text())(ps, rs);
  EXPECT_EQ(scores, (std::vector<float>{1, 0, 1, 0}));
  // Not a problem: 0.
  EXPECT_EQ(make_rule_teacher("arithmetic", f.text())({f.ids("hello there", true)}, {rs[0]}),
            std::vector<float>{0});
  try {
    make_rule_teacher("length", f.text());
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("teacher rule \"length\" is not known"),
              std::string::npos);
  }
}

TEST(Teachers, TheSampleScorerAnswersOverASocketAsTheRule) {
  Fixture f;
  const std::string socket = f.dir / "t.sock";
  std::atomic<bool> stop{false};
  std::thread server([&] { serve_rule_teacher("arithmetic", socket, &stop); });
  for (int i = 0; i < 200 && !file_exists(socket); ++i) usleep(10000);
  std::vector<std::vector<int64_t>> ps, rs;
  f.batch(&ps, &rs);
  proto::TeacherConfig cfg;
  cfg.set_socket(socket);
  cfg.set_timeout_seconds(5);
  const auto teacher = make_socket_teacher(cfg, f.text());
  EXPECT_EQ(teacher(ps, rs), (std::vector<float>{1, 0, 1, 0}));
  EXPECT_EQ(teacher(ps, rs), (std::vector<float>{1, 0, 1, 0}));  // a connection per batch
  stop = true;
  server.join();
}

// A scorer that misbehaves: accepts one connection, reads the request, then does `act`.
void bad_scorer(const std::string& path, const std::function<void(int)>& act,
                std::atomic<bool>* ready) {
  const int l = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strcpy(a.sun_path, path.c_str());
  ::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::listen(l, 4);
  *ready = true;
  const int c = ::accept(l, nullptr, nullptr);
  char buf[4096];
  pollfd p{c, POLLIN, 0};
  if (::poll(&p, 1, 2000) > 0) (void)::recv(c, buf, sizeof buf, 0);
  act(c);
  ::close(c);
  ::close(l);
}

std::string scorer_error(const Fixture& f, const std::function<void(int)>& act,
                         double timeout = 5) {
  const std::string socket = f.dir / "bad.sock";
  ::unlink(socket.c_str());
  std::atomic<bool> ready{false};
  std::thread t([&] { bad_scorer(socket, act, &ready); });
  while (!ready) usleep(1000);
  std::vector<std::vector<int64_t>> ps, rs;
  f.batch(&ps, &rs);
  proto::TeacherConfig cfg;
  cfg.set_socket(socket);
  cfg.set_timeout_seconds(timeout);
  std::string what = "no error";
  try {
    make_socket_teacher(cfg, f.text())(ps, rs);
  } catch (const Error& e) {
    what = e.what();
  }
  t.join();
  return what;
}

void send_response(int fd, const proto::ScoreResponse& r) {
  const std::string frame = annotation::encode_frame(r);
  (void)::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL);
}

TEST(Teachers, AMisbehavingScorerStopsWithAClearErrorNeverASilentZero) {
  Fixture f;
  const std::string at = "teacher socket " + (f.dir / "bad.sock") + ": ";
  auto expect = [&](const std::string& got, const std::string& want) {
    EXPECT_NE(got.find(at + want), std::string::npos) << got;
  };
  expect(scorer_error(
             f, [](int) { usleep(1500 * 1000); }, 0.5),
         "no answer within 0.500000 s for a batch of 4 answers");
  expect(scorer_error(f, [](int) {}), "the scorer closed the connection before answering");
  expect(scorer_error(f,
                      [](int fd) {
                        const char garbage[] = "HTTP/1.1 200 OK\r\n\r\nhello";
                        (void)::send(fd, garbage, sizeof garbage, MSG_NOSIGNAL);
                      }),
         "the answer is not a framed ScoreResponse");
  expect(scorer_error(f,
                      [](int fd) {
                        proto::ScoreResponse r;
                        r.add_scores(1);
                        send_response(fd, r);
                      }),
         "the scorer answered 1 scores for 4 answers");
  expect(scorer_error(f,
                      [](int fd) {
                        proto::ScoreResponse r;
                        for (int i = 0; i < 4; ++i) r.add_scores(i == 2 ? NAN : 1.0f);
                        send_response(fd, r);
                      }),
         "score 2 is nan (expected a finite number)");
  expect(scorer_error(f,
                      [](int fd) {
                        proto::ScoreResponse r;
                        r.set_error("model not loaded");
                        send_response(fd, r);
                      }),
         "the scorer reported: model not loaded");
  proto::TeacherConfig cfg;
  cfg.set_socket(f.dir / "nobody.sock");
  std::vector<std::vector<int64_t>> ps, rs;
  f.batch(&ps, &rs);
  try {
    make_socket_teacher(cfg, f.text())(ps, rs);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("teacher socket " + (f.dir / "nobody.sock") +
                                         ": cannot connect ("),
              std::string::npos)
        << e.what();
  }
}

// The ppo stage with a rule teacher and with the sample scorer: the rollouts' raw scores are the
// rule's verdicts on their texts.
TEST(Teachers, ThePpoStageTrainsAgainstARuleOrASocketTeacher) {
  Fixture f;
  torch::manual_seed(3);
  policy::ModelConfig c = policy::testing::tiny_config(96);
  c.vocab_size = f.tok->vocab_size();
  c.n_layers = 1;
  c.bos_id = f.tok->bos_id();
  c.eos_id = f.tok->eos_id();
  c.pad_id = f.tok->pad_id() >= 0 ? f.tok->pad_id() : 0;
  policy::Transformer pol(c);
  policy::init_weights(pol);
  policy::CheckpointInfo info;
  info.tokenizer_sha256 = f.tok->sha256();
  policy::save_checkpoint(pol, f.dir / "sft", info);
  quickstart::write_prompts(f.dir / "prompts.jsonl", f.problems);
  const std::string base = "policy: \"" + (f.dir / "sft") + "\"\nprompts: \"" +
                           (f.dir / "prompts.jsonl") + "\"\ntokenizer: \"" + f.tok_path +
                           "\"\niterations: 1 batch_size: 4 minibatch_size: 4 ppo_epochs: 1\n"
                           "max_new_tokens: 6 optimizer { lr: 1e-3 } critic_lr: 1e-3\n";
  const std::string socket = f.dir / "t.sock";
  std::atomic<bool> stop{false};
  std::thread server([&] { serve_rule_teacher("arithmetic", socket, &stop); });
  for (int i = 0; i < 200 && !file_exists(socket); ++i) usleep(10000);
  for (const std::string& teacher : std::vector<std::string>{
           "teacher { rule: \"arithmetic\" }\n", "teacher { socket: \"" + socket + "\" }\n"}) {
    write_file_atomic(f.dir / "ppo.pbtxt", base + teacher);
    PpoStageOptions o;
    o.config_path = f.dir / "ppo.pbtxt";
    o.out_dir = f.dir / "ppo";
    std::filesystem::remove_all(o.out_dir);
    run_ppo_stage(o);
    const auto recs = policy::read_rollouts(f.dir / "ppo/rollouts/iter-0001.pb");
    ASSERT_EQ(recs.size(), 4u);
    for (const auto& r : recs) {
      const auto problem = quickstart::parse_prompt(r.prompt_text());
      ASSERT_TRUE(problem.has_value()) << r.prompt_text();
      const float want = quickstart::is_correct(*problem, r.response_text()) ? 1.f : 0.f;
      EXPECT_EQ(r.raw_score(), want) << teacher << r.response_text();
    }
  }
  stop = true;
  server.join();
  // No teacher, or two: refused before anything runs.
  for (const std::string& teacher :
       std::vector<std::string>{"", "reward_model: \"r\"\nteacher { rule: \"arithmetic\" }\n"}) {
    write_file_atomic(f.dir / "ppo.pbtxt", base + teacher);
    PpoStageOptions o;
    o.config_path = f.dir / "ppo.pbtxt";
    o.out_dir = f.dir / "ppo2";
    try {
      run_ppo_stage(o);
      ADD_FAILURE() << teacher;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(
                    "expected exactly one teacher: reward_model, teacher.rule or teacher.socket"),
                std::string::npos)
          << e.what();
    }
  }
}

}  // namespace
}  // namespace rlhf::pipelines
