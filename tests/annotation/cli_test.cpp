// End to end through the `rlhf` binary: the commands a person runs, with real processes.
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "common/files.h"
#include "tests/fixtures/annotation_server.h"
#include "tests/test_support.h"

using nlohmann::json;
using rlhf::annotation::testing::annotate_serve_command;
using rlhf::annotation::testing::ServerProcess;
using rlhf::testing::rlhf_binary;
using rlhf::testing::run_command;
using rlhf::testing::TempDir;

namespace {

std::string last_line(const std::string& s) {
  std::string t = s;
  while (!t.empty() && t.back() == '\n') t.pop_back();
  auto nl = t.rfind('\n');
  return nl == std::string::npos ? t : t.substr(nl + 1);
}

std::vector<json> json_lines(const std::string& s) {
  std::vector<json> out;
  std::istringstream in(s);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty() && line[0] == '{') out.push_back(json::parse(line));
  return out;
}

}  // namespace

TEST(AnnotateCli, TasksAnnotatorsClientSimulateExportStats) {
  ASSERT_TRUE(rlhf::file_exists(rlhf_binary())) << rlhf_binary();
  TempDir dir("cli");
  std::string db = dir / "ann.db", sock = dir / "s.sock", rlhf = rlhf_binary();
  std::ofstream(dir / "tasks.jsonl")
      << "{\"prompt\": \"What is 2+2?\", \"answers\": [\"4\", \"four\", \"5\"]}\n"
      << "{\"prompt\": \"Name a colour.\", \"answers\": [\"red\", \"blue\", \"table\"]}\n"
      << "{\"prompt\": \"Say hi.\", \"answers\": [\"hi\", \"hello there\", \"bye\"]}\n";
  std::string out;
  ASSERT_EQ(
      run_command(rlhf + " annotate add-tasks --db " + db + " --input " + (dir / "tasks.jsonl"),
                  &out),
      0)
      << out;
  EXPECT_NE(out.find("added 3 tasks"), std::string::npos) << out;
  ASSERT_EQ(run_command(rlhf + " annotate add-annotator --db " + db + " --name alice", &out, false),
            0);
  std::string alice = last_line(out);
  ASSERT_EQ(alice.size(), 64u) << out;
  std::string db_bytes =
      rlhf::read_file(db) + (rlhf::file_exists(db + "-wal") ? rlhf::read_file(db + "-wal") : "");
  EXPECT_EQ(db_bytes.find(alice), std::string::npos) << "the token is stored in clear";

  ServerProcess server(annotate_serve_command(db, sock), sock);
  // A second server on the live socket is refused.
  EXPECT_NE(run_command(rlhf + " annotate serve --db " + db + " --socket " + sock, &out), 0);
  EXPECT_NE(out.find("already listening"), std::string::npos) << out;

  // The terminal client with piped stdin: help, a bad ranking, a ranking, a skip, undo (the
  // skipped task comes back), undo again (refused: `u` undoes this session's last submission
  // once, never the one before), a ranking, a flag with its reason asked for, then the queue is
  // done.
  std::ofstream(dir / "input.txt") << "?\nZ>A\nB>A=C\ns\nu\nu\nA>B>C\nf\nbad prompt\n";
  int rc = run_command("RLHF_TOKEN=" + alice + " " + rlhf + " annotate client --socket " + sock +
                           " < " + (dir / "input.txt"),
                       &out);
  EXPECT_EQ(rc, 0) << out;
  for (const char* want : {"What is 2+2?", "A)", "C)", "B>A=C>D", "Not a ranking", "Saved.",
                           "Undid your submission of task 2", "Nothing to undo",
                           "reason for flagging", "No tasks left", "remaining"})
    EXPECT_NE(out.find(want), std::string::npos) << "missing '" << want << "' in:\n" << out;

  ASSERT_EQ(run_command(rlhf + " annotate export --db " + db + " --format rankings", &out, false),
            0);
  auto rankings = json_lines(out);
  ASSERT_EQ(rankings.size(), 3u) << out;
  EXPECT_EQ(rankings[0]["task_id"], 1);
  EXPECT_EQ(rankings[0]["groups"], json::parse("[[1],[0,2]]"));
  EXPECT_EQ(rankings[1]["task_id"], 2);  // the undone skip was replaced by a ranking
  EXPECT_EQ(rankings[1]["groups"], json::parse("[[0],[1],[2]]"));
  EXPECT_EQ(rankings[1]["skipped"], false);
  EXPECT_EQ(rankings[2]["flag"], "bad prompt");
  EXPECT_EQ(rankings[0]["annotator"], "alice");
  EXPECT_EQ(rankings[0]["schema_version"], 1);

  // A simulated annotator takes the remaining task (task 3 was only flagged).
  ASSERT_EQ(run_command(rlhf + " annotate add-annotator --db " + db + " --name bob", &out, false),
            0);
  std::string bob = last_line(out);
  // The token comes from a file (a --token argument is visible in `ps`); a missing or empty file
  // is refused naming it, before anything is sent.
  rc = run_command(
      rlhf + " annotate simulate --socket " + sock + " --token-file " + (dir / "missing.token"),
      &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("--token-file " + (dir / "missing.token") + ": no such file"),
            std::string::npos)
      << out;
  rlhf::write_file_atomic(dir / "empty.token", "\n");
  rc = run_command(
      rlhf + " annotate simulate --socket " + sock + " --token-file " + (dir / "empty.token"),
      &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("expected the token on its first line"), std::string::npos) << out;
  rlhf::write_file_atomic(dir / "bob.token", bob + "\n");
  rc = run_command(rlhf + " annotate simulate --socket " + sock + " --token-file " +
                       (dir / "bob.token") + " --teacher length --seed 3",
                   &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("submitted 1 rankings"), std::string::npos) << out;
  EXPECT_EQ(out.find("warning: --token"), std::string::npos) << out;

  ASSERT_EQ(run_command(rlhf + " annotate export --db " + db + " --format pairs --output " +
                            (dir / "pairs.jsonl"),
                        &out),
            0)
      << out;
  auto pairs = json_lines(rlhf::read_file(dir / "pairs.jsonl"));
  ASSERT_EQ(pairs.size(), 2u + 3u + 3u);  // B>A=C: 2, A>B>C: 3, bob's length ranking of task 3: 3
  EXPECT_EQ(pairs[0]["chosen"], "four");
  EXPECT_EQ(pairs[0]["rejected"], "4");
  EXPECT_EQ(pairs.back()["annotator"], "bob");
  // bob's length ranking of task 3 is hi > bye > "hello there": its first pair is hi over bye.
  EXPECT_EQ(pairs[pairs.size() - 3]["chosen"], "hi");
  EXPECT_EQ(pairs[pairs.size() - 3]["rejected"], "bye");

  ASSERT_EQ(run_command(rlhf + " annotate stats --db " + db + " --json", &out, false), 0);
  json st = json::parse(out);
  EXPECT_EQ(st["tasks"], 3);
  EXPECT_EQ(st["done_tasks"], 3);
  EXPECT_EQ(st["pending_tasks"], 0);
  EXPECT_EQ(st["annotators"].size(), 2u);
  ASSERT_EQ(run_command(rlhf + " annotate stats --db " + db, &out), 0);
  EXPECT_NE(out.find("agreement"), std::string::npos) << out;

  // Revoked: the token stops working.
  ASSERT_EQ(run_command(rlhf + " annotate revoke --db " + db + " --name bob", &out), 0) << out;
  rc = run_command(rlhf + " annotate simulate --socket " + sock + " --token " + bob, &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("revoked"), std::string::npos) << out;
  EXPECT_NE(out.find("warning: --token is visible to other users"), std::string::npos) << out;
  rc = run_command(rlhf + " annotate client --socket " + sock + " --token wrong < /dev/null", &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("unknown token"), std::string::npos) << out;

  EXPECT_EQ(server.stop(), 0);  // SIGTERM: graceful
  EXPECT_FALSE(rlhf::file_exists(sock));
}

TEST(AnnotateCli, ImportHhAndSchemaErrors) {
  RLHF_REQUIRE_DATA(hh, "hh-rlhf/harmless-base-test.jsonl.gz");
  TempDir dir("cli");
  std::string db = dir / "hh.db", rlhf = rlhf_binary(), out;
  ASSERT_EQ(run_command(rlhf + " annotate import --db " + db + " --format hh --input " + hh, &out),
            0)
      << out;
  EXPECT_NE(out.find("imported 2"), std::string::npos) << out;
  ASSERT_EQ(run_command(rlhf + " annotate export --db " + db + " --format pairs", &out, false), 0);
  EXPECT_GT(json_lines(out).size(), 2250u);

  EXPECT_NE(run_command(rlhf + " annotate export --db " + (dir / "missing.db"), &out), 0);
  EXPECT_NE(out.find("does not exist"), std::string::npos) << out;

  sqlite3* h = nullptr;
  sqlite3_open(db.c_str(), &h);
  sqlite3_exec(h, "PRAGMA user_version=42", nullptr, nullptr, nullptr);
  sqlite3_close(h);
  EXPECT_NE(run_command(rlhf + " annotate stats --db " + db, &out), 0);
  EXPECT_NE(out.find("newer"), std::string::npos) << out;
  EXPECT_NE(out.find(db), std::string::npos) << out;
}

TEST(AnnotateCli, DefaultPrivateSocketAndTimeoutFlags) {
  TempDir dir("cli");
  std::string db = dir / "ann.db", rlhf = rlhf_binary(), out;
  std::ofstream(dir / "tasks.jsonl") << "{\"prompt\": \"p\", \"answers\": [\"a\", \"bb\"]}\n";
  ASSERT_EQ(
      run_command(rlhf + " annotate add-tasks --db " + db + " --input " + (dir / "tasks.jsonl"),
                  &out),
      0)
      << out;
  ASSERT_EQ(run_command(rlhf + " annotate add-annotator --db " + db + " --name alice", &out, false),
            0);
  std::string alice = last_line(out);

  EXPECT_EQ(run_command(rlhf + " annotate serve --db " + db + " --hello-timeout 0", &out), 2);
  EXPECT_NE(out.find("--hello-timeout"), std::string::npos) << out;
  ASSERT_EQ(run_command(rlhf + " annotate serve --help", &out), 0);
  for (const char* flag : {"--idle-timeout", "--write-timeout", "--frame-timeout", "--stop-timeout",
                           "--max-unauthenticated", "XDG_RUNTIME_DIR"})
    EXPECT_NE(out.find(flag), std::string::npos) << flag << " missing from:\n" << out;

  // No --socket anywhere: server and simulator meet at $XDG_RUNTIME_DIR/rlhf/annotation.sock.
  std::string env = "XDG_RUNTIME_DIR=" + dir.path() + " ";
  int rc =
      run_command("(" + env + rlhf + " annotate serve --db " + db + " --write-timeout 5 & S=$!; " +
                      env + "RLHF_TOKEN=" + alice + " " + rlhf +
                      " annotate simulate --max-tasks 1; R=$?; kill -TERM $S; wait $S; "
                      "exit $R)",
                  &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("listening on " + dir.path() + "/rlhf/annotation.sock"), std::string::npos)
      << out;
  EXPECT_NE(out.find("submitted 1 rankings"), std::string::npos) << out;
  EXPECT_FALSE(rlhf::file_exists(dir / "rlhf/annotation.sock"));
  EXPECT_FALSE(rlhf::file_exists(dir / "rlhf/annotation.sock.lock"));
}
