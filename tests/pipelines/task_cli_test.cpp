// Through the `rlhf` binary: `rlhf task arithmetic`, the "arithmetic" gold teacher used by
// `rlhf annotate simulate` over a real socket, and `rlhf report RUN_DIR`.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "common/files.h"
#include "pipelines/quickstart_task.h"
#include "tests/fixtures/annotation_server.h"
#include "tests/test_support.h"

namespace q = rlhf::quickstart;
using nlohmann::json;
using rlhf::annotation::testing::annotate_serve_command;
using rlhf::annotation::testing::ServerProcess;
using rlhf::testing::rlhf_binary;
using rlhf::testing::run_command;
using rlhf::testing::TempDir;

namespace {

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(line);
  return out;
}

}  // namespace

TEST(TaskCli, WritesTaskFiles) {
  ASSERT_TRUE(rlhf::file_exists(rlhf_binary())) << rlhf_binary();
  TempDir dir("taskcli");
  std::string out;
  ASSERT_EQ(run_command(rlhf_binary() + " task arithmetic --out " + (dir / "task") +
                            " --seed 4 --sft-examples 300 --train-prompts 10 --heldout-prompts 7"
                            " --tokenizer-problems 50",
                        &out),
            0)
      << out;
  auto sft = lines_of(rlhf::read_file(dir / "task/sft.jsonl"));
  ASSERT_EQ(sft.size(), 300u);
  auto p = q::parse_prompt(json::parse(sft[0]).at("prompt").get<std::string>());
  ASSERT_TRUE(p.has_value()) << sft[0];
  auto held = lines_of(rlhf::read_file(dir / "task/heldout_prompts.jsonl"));
  ASSERT_EQ(held.size(), 7u);
  auto hp = q::parse_prompt(json::parse(held[0]).at("prompt").get<std::string>());
  ASSERT_TRUE(hp.has_value());
  EXPECT_EQ(q::split_of(*hp), q::Split::kHeldOut);
  EXPECT_EQ(lines_of(rlhf::read_file(dir / "task/train_prompts.jsonl")).size(), 10u);
  EXPECT_EQ(lines_of(rlhf::read_file(dir / "task/tokenizer_corpus.txt")).size(), 150u + 46u);
  EXPECT_NE(
      run_command(rlhf_binary() + " task arithmetic --out " + (dir / "t2") + " --seed x", &out), 0);
}

TEST(TaskCli, SimulatedAnnotatorRanksWithTheArithmeticTeacher) {
  ASSERT_TRUE(rlhf::file_exists(rlhf_binary())) << rlhf_binary();
  TempDir dir("taskcli");
  const std::string rlhf = rlhf_binary(), db = dir / "ann.db", sock = dir / "s.sock";
  // K = 4 answers per held-out prompt from the SFT mix, plus a malformed one for the first.
  std::mt19937_64 rng(5);
  auto problems = q::generate_problems(q::Split::kHeldOut, 12, 2);
  std::vector<std::string> prompts;
  std::vector<std::vector<std::string>> answers;
  for (const auto& p : problems) {
    prompts.push_back(p.prompt());
    answers.emplace_back();
    for (int k = 0; k < 4; ++k) answers.back().push_back(q::sample_sft_answer(p, {}, rng));
  }
  answers[0][3] = "I do not know.";
  q::write_annotation_tasks(dir / "tasks.jsonl", prompts, answers);
  std::string out;
  ASSERT_EQ(
      run_command(rlhf + " annotate add-tasks --db " + db + " --input " + (dir / "tasks.jsonl"),
                  &out),
      0)
      << out;
  ASSERT_EQ(run_command(rlhf + " annotate add-annotator --db " + db + " --name gold", &out, false),
            0)
      << out;
  std::string token = lines_of(out).back();
  {
    ServerProcess server(annotate_serve_command(db, sock), sock);
    ASSERT_EQ(run_command(rlhf + " annotate simulate --socket " + sock + " --token " + token +
                              " --teacher arithmetic --seed 1",
                          &out),
              0)
        << out;
  }
  ASSERT_EQ(run_command(rlhf + " annotate export --db " + db + " --format rankings", &out, false),
            0)
      << out;
  auto rankings = lines_of(out);
  ASSERT_EQ(rankings.size(), problems.size()) << out;
  for (const auto& line : rankings) {
    json r = json::parse(line);
    auto p = q::parse_prompt(r.at("prompt").get<std::string>());
    ASSERT_TRUE(p.has_value());
    auto got = r.at("answers").get<std::vector<std::string>>();
    EXPECT_EQ(r.at("groups"), json(q::gold_ranking(*p, got))) << line;
    if (r.at("prompt") == prompts[0]) {
      EXPECT_EQ(r.at("groups").back(), json({3}));  // malformed last
    }
  }
}

TEST(ReportCli, RegeneratesTheReport) {
  ASSERT_TRUE(rlhf::file_exists(rlhf_binary())) << rlhf_binary();
  TempDir dir("reportcli");
  rlhf::make_dirs(dir / "run/ppo");
  std::string m;
  for (int it = 1; it <= 5; ++it)
    m += json({{"step", it},
               {"score/mean", 0.2 * it},
               {"gold/accuracy", 0.3 + 0.1 * it},
               {"kl/mean", it}})
             .dump() +
         "\n";
  rlhf::write_file_atomic(dir / "run/ppo/metrics.jsonl", m);
  std::string out;
  ASSERT_EQ(run_command(rlhf_binary() + " report " + (dir / "run"), &out, false), 0) << out;
  EXPECT_EQ(lines_of(out).back(), dir / "run/report.html");
  std::string html = rlhf::read_file(dir / "run/report.html");
  EXPECT_NE(html.find("<svg"), std::string::npos);
  EXPECT_NE(html.find("gold/accuracy"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);

  EXPECT_NE(run_command(rlhf_binary() + " report " + (dir / "missing"), &out), 0);
  EXPECT_EQ(lines_of(out).size(), 1u) << out;
  EXPECT_NE(out.find("does not exist"), std::string::npos) << out;
  EXPECT_NE(run_command(rlhf_binary() + " report", &out), 0);
}
