#include "annotation/import_export.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "annotation/frame.h"
#include "annotation/stats.h"
#include "common/error.h"
#include "tests/test_support.h"

namespace ann = rlhf::annotation;
using nlohmann::json;
using rlhf::testing::TempDir;

namespace {
void write(const std::string& path, const std::string& s) { std::ofstream(path) << s; }

std::vector<json> lines_of(const std::string& s) {
  std::vector<json> out;
  std::istringstream in(s);
  std::string line;
  while (std::getline(in, line)) out.push_back(json::parse(line));
  return out;
}

void rank(ann::Store& store, int64_t task, const std::string& who, ann::Groups g) {
  ann::Store::Transaction txn(store);
  ann::RankingRecord r;
  r.task_id = task;
  auto a = store.annotator_by_name(who);
  r.annotator_id =
      a ? a->id : (store.add_annotator(who, "annotator"), store.annotator_by_name(who)->id);
  r.groups = std::move(g);
  r.seconds = 3;
  store.insert_ranking(r);
  txn.commit();
}
}  // namespace

TEST(ImportExport, AddTasksReadsJsonLinesAllOrNothing) {
  TempDir dir("io");
  ann::Store store(dir / "a.db");
  write(dir / "tasks.jsonl",
        "{\"prompt\": \"p1\", \"answers\": [\"a\", \"b\", \"c\"], \"model\": \"sft\", "
        "\"sampling\": {\"temperature\": 1.0}}\n\n"
        "{\"prompt\": \"p2\", \"answers\": [\"x\", \"y\"], \"overlap\": 3}\n");
  EXPECT_EQ(ann::add_tasks_jsonl(store, dir / "tasks.jsonl", 2), 2);
  EXPECT_EQ(store.task(1)->overlap, 2);
  EXPECT_EQ(store.task(2)->overlap, 3);
  write(dir / "bad.jsonl", "{\"prompt\": \"p3\", \"answers\": [\"x\", \"y\"]}\n{\"prompt\": 5}\n");
  try {
    ann::add_tasks_jsonl(store, dir / "bad.jsonl", 1);
    FAIL();
  } catch (const rlhf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:2"), std::string::npos) << e.what();
  }
  EXPECT_EQ(store.task_count(), 2);  // the good first line was rolled back too
}

TEST(ImportExport, ExportsEveryCrossGroupPairAndRankings) {
  TempDir dir("io");
  ann::Store store(dir / "a.db");
  {
    ann::Store::Transaction txn(store);
    store.add_task({"Q", {"a0", "a1", "a2", "a3"}, "", "", "t"}, 2);
    txn.commit();
  }
  rank(store, 1, "alice", {{1}, {0, 2}, {3}});  // B > A = C > D
  std::ostringstream pairs;
  EXPECT_EQ(ann::export_jsonl(store, "pairs", pairs), 5);
  auto p = lines_of(pairs.str());
  ASSERT_EQ(p.size(), 5u);
  EXPECT_EQ(p[0]["schema_version"], ann::kExportSchemaVersion);
  EXPECT_EQ(p[0]["prompt"], "Q");
  EXPECT_EQ(p[0]["chosen"], "a1");
  EXPECT_EQ(p[0]["rejected"], "a0");
  EXPECT_EQ(p[0]["task_id"], 1);
  EXPECT_EQ(p[0]["annotator"], "alice");
  // Order: by the better answer's group, then the worse one's; A = C gives no pair.
  std::vector<std::pair<std::string, std::string>> got,
      want = {{"a1", "a0"}, {"a1", "a2"}, {"a1", "a3"}, {"a0", "a3"}, {"a2", "a3"}};
  for (auto& j : p) got.emplace_back(j["chosen"], j["rejected"]);
  EXPECT_EQ(got, want);
  std::ostringstream rankings;
  EXPECT_EQ(ann::export_jsonl(store, "rankings", rankings), 1);
  auto r = lines_of(rankings.str())[0];
  for (const char* k : {"schema_version", "task_id", "annotator", "prompt", "answers", "groups",
                        "none_acceptable", "skipped", "flag", "seconds", "created_at"})
    EXPECT_TRUE(r.contains(k)) << k;
  EXPECT_EQ(r["groups"], json::parse("[[1],[0,2],[3]]"));
  EXPECT_EQ(r["answers"].size(), 4u);
  std::ostringstream bad;
  EXPECT_THROW(ann::export_jsonl(store, "csv", bad), rlhf::Error);

  // Round trip: our own pairs export imports as 5 ranked 2-answer tasks.
  write(dir / "pairs.jsonl", pairs.str());
  ann::Store other(dir / "b.db");
  auto res = ann::import_preferences(other, dir / "pairs.jsonl", "pairs");
  EXPECT_EQ(res.imported, 5);
  std::ostringstream again;
  ann::export_jsonl(other, "pairs", again);
  auto q = lines_of(again.str());
  ASSERT_EQ(q.size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(q[i]["chosen"], p[i]["chosen"]);
    EXPECT_EQ(q[i]["rejected"], p[i]["rejected"]);
    EXPECT_EQ(q[i]["annotator"], "alice");
  }
}

TEST(ImportExport, ImportsHhLinesThatSplitAndCountsTheRest) {
  TempDir dir("io");
  ann::Store store(dir / "a.db");
  auto line = [](const std::string& c, const std::string& r) {
    return json{{"chosen", c}, {"rejected", r}}.dump() + "\n";
  };
  write(dir / "hh.jsonl",
        line("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: ciao ",
             "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: go away") +
            // diverges in an earlier turn: no single shared prompt
            line("\n\nHuman: a\n\nAssistant: x", "\n\nHuman: b\n\nAssistant: y") +
            // the same final answer: nothing to learn
            line("\n\nHuman: q\n\nAssistant: same", "\n\nHuman: q\n\nAssistant:  same\n"));
  auto res = ann::import_preferences(store, dir / "hh.jsonl", "hh");
  EXPECT_EQ(res.imported, 1);
  EXPECT_EQ(res.skipped, 2);
  auto t = store.task(1);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->prompt, "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant:");
  EXPECT_EQ(t->answers, (std::vector<std::string>{"ciao", "go away"}));
}

TEST(ImportExport, ImportsRealHhRlhfGzip) {
  RLHF_REQUIRE_DATA(hh, "hh-rlhf/harmless-base-test.jsonl.gz");
  TempDir dir("io");
  ann::Store store(dir / "a.db");
  auto res = ann::import_preferences(store, hh, "hh");
  EXPECT_EQ(res.imported + res.skipped, 2312);
  EXPECT_GT(res.imported, 2250);
  std::ostringstream out;
  EXPECT_EQ(ann::export_jsonl(store, "pairs", out), res.imported);
  auto p = lines_of(out.str());
  int shorter_chosen = 0, strict = 0;
  for (auto& j : p) {
    std::string prompt = j["prompt"];
    ASSERT_GE(prompt.size(), 12u);
    EXPECT_EQ(prompt.substr(prompt.size() - 12), "\n\nAssistant:");
    EXPECT_EQ(j["annotator"], "import:hh");
    std::string c = j["chosen"], r = j["rejected"];
    if (c.size() != r.size()) {
      ++strict;
      shorter_chosen += c.size() < r.size();
    }
  }
  // The data's README: preferring the shorter final answer agrees with the label on ~55%.
  double rate = static_cast<double>(shorter_chosen) / strict;
  EXPECT_GT(rate, 0.50);
  EXPECT_LT(rate, 0.60);
  // Imported tasks are complete: nothing is queued for annotators.
  auto st = ann::compute_stats(store);
  EXPECT_EQ(st.pending_tasks, 0);
  EXPECT_EQ(st.done_tasks, res.imported);
}

// A task whose reply would exceed the frame limit is refused at add-tasks, naming the line; the
// file's other tasks are not added either (one transaction). A large task that fits is accepted.
TEST(AddTasks, TaskTooLargeForAFrameIsRefused) {
  TempDir dir("io");
  ann::Store store(dir / "a.db");
  const std::string big(ann::kMaxFrameBytes / 2, 'x');
  {
    std::ofstream f(dir / "tasks.jsonl");
    f << json{{"prompt", "fine"}, {"answers", {"a", "b"}}}.dump() << "\n";
    f << json{{"prompt", "too big"}, {"answers", {big, big + "y"}}}.dump() << "\n";
  }
  try {
    ann::add_tasks_jsonl(store, dir / "tasks.jsonl", 1);
    FAIL() << "expected an error";
  } catch (const rlhf::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(dir / "tasks.jsonl" + ":2: task too large"), std::string::npos) << msg;
    EXPECT_NE(msg.find("frame limit is 1048576"), std::string::npos) << msg;
  }
  EXPECT_EQ(ann::compute_stats(store).tasks, 0);
  {
    std::ofstream f(dir / "ok.jsonl");
    f << json{{"prompt", "large"}, {"answers", {big.substr(0, 300000), "b"}}}.dump() << "\n";
  }
  EXPECT_EQ(ann::add_tasks_jsonl(store, dir / "ok.jsonl", 1), 1);
}

// Krippendorff's own worked example (Krippendorff 2011, "Computing Krippendorff's
// Alpha-Reliability", 4 coders x 12 units with missing values): published ordinal alpha 0.815.
TEST(Stats, KrippendorffAlphaMatchesThePublishedExample) {
  const std::vector<std::vector<double>> units = {
      {1, 1, 1},    {2, 2, 3, 2}, {3, 3, 3, 3}, {3, 3, 3, 3}, {2, 2, 2, 2}, {1, 2, 3, 4},
      {4, 4, 4, 4}, {1, 1, 2, 1}, {2, 2, 2, 2}, {5, 5, 5},    {1, 1},       {3}};
  double alpha = 0;
  ASSERT_TRUE(ann::krippendorff_alpha_ordinal(units, &alpha));
  EXPECT_NEAR(alpha, 0.815, 5e-4);
  EXPECT_FALSE(ann::krippendorff_alpha_ordinal({{2, 2}, {2, 2, 2}}, &alpha));  // no variation
  EXPECT_FALSE(ann::krippendorff_alpha_ordinal({{1}, {3}}, &alpha));           // nothing pairable
}

// Ties become midranks: u ranks {a}{b c} and {a b}{c}, v ranks a > b > c twice.
TEST(Stats, KrippendorffAlphaWithTiedRankings) {
  TempDir dir("io");
  ann::Store store(dir / "a.db");
  {
    ann::Store::Transaction txn(store);
    for (int i = 0; i < 2; ++i)
      store.add_task({"Q" + std::to_string(i), {"a", "b", "c"}, "", "", ""}, 2);
    txn.commit();
  }
  rank(store, 1, "u", {{0}, {1, 2}});  // midranks 1, 2.5, 2.5
  rank(store, 1, "v", {{0}, {1}, {2}});
  rank(store, 2, "u", {{0, 1}, {2}});  // midranks 1.5, 1.5, 3
  rank(store, 2, "v", {{0}, {1}, {2}});
  auto s = ann::compute_stats(store);
  EXPECT_EQ(s.alpha_units, 6);
  // Independently computed (a separate implementation over the value pairs): 0.863333...
  EXPECT_NEAR(s.krippendorff_alpha, 0.8633333333333333, 1e-12);
}

TEST(Stats, AgreementAndKendallTau) {
  TempDir dir("io");
  ann::Store store(dir / "a.db");
  {
    ann::Store::Transaction txn(store);
    for (int i = 0; i < 3; ++i)
      store.add_task({"Q" + std::to_string(i), {"a", "b", "c"}, "", "", ""}, 2);
    txn.commit();
  }
  rank(store, 1, "u", {{0}, {1}, {2}});
  rank(store, 1, "v", {{0}, {1}, {2}});  // identical: agreement 3/3, tau 1
  rank(store, 2, "u", {{0}, {1}, {2}});
  rank(store, 2, "v", {{2}, {1}, {0}});  // reversed: agreement 0/3, tau -1
  rank(store, 3, "u", {{0}, {1}, {2}});  // single ranking: no agreement data
  auto s = ann::compute_stats(store);
  EXPECT_EQ(s.tasks, 3);
  EXPECT_EQ(s.done_tasks, 2);
  EXPECT_EQ(s.pending_tasks, 1);
  EXPECT_EQ(s.overlap_tasks, 2);
  EXPECT_EQ(s.compared_answer_pairs, 6);
  EXPECT_DOUBLE_EQ(s.pairwise_agreement, 0.5);
  EXPECT_DOUBLE_EQ(s.mean_kendall_tau, 0.0);
  EXPECT_EQ(s.tau_pairs, 2);
  double tau;
  ASSERT_TRUE(ann::kendall_tau_b({0, 1, 1}, {0, 1, 2}, &tau));
  EXPECT_NEAR(tau, 2.0 / std::sqrt(2.0 * 3.0), 1e-12);  // C=2, D=0, ties_a=1
  EXPECT_FALSE(ann::kendall_tau_b({0, 0}, {0, 1}, &tau));
  // Krippendorff's alpha (ordinal) over the 6 answers of the 2 overlapping tasks, units (1,1),
  // (2,2), (3,3), (1,3), (2,2), (3,1), worked by hand: coincidences o_11 = 2, o_22 = 4, o_33 = 2,
  // o_13 = o_31 = 2; n_1 = n_2 = n_3 = 4, n = 12; ordinal distances d_12 = d_23 = (8 - 4)^2 = 16,
  // d_13 = (12 - 4)^2 = 64; observed sum o d = 4 * 64 = 256, expected sum n_c n_k d =
  // 16 * 2 * (16 + 16 + 64) = 3072; alpha = 1 - 11 * 256 / 3072 = 1/12.
  EXPECT_EQ(s.alpha_units, 6);
  EXPECT_NEAR(s.krippendorff_alpha, 1.0 / 12.0, 1e-12);
  auto j = json::parse(ann::stats_to_json(s));
  EXPECT_NEAR(j["agreement"]["krippendorff_alpha_ordinal"].get<double>(), 1.0 / 12.0, 1e-12);
  EXPECT_EQ(j["annotators"].size(), 2u);
  EXPECT_EQ(j["annotators"][0]["median_seconds"], 3.0);
  EXPECT_NE(ann::stats_to_text(s).find("agreement"), std::string::npos);
}

namespace {
// Ten tasks with distinct prompts.
void write_ten_tasks(const std::string& path) {
  std::ofstream f(path);
  for (int i = 0; i < 10; ++i)
    f << json{{"prompt", "p" + std::to_string(i)}, {"answers", {"a", "b"}}}.dump() << "\n";
}
}  // namespace

// Issue #13 point 8: add-tasks commits in chunks, so another connection (the server) gets the
// write lock between chunks at once instead of waiting out its busy timeout.
TEST(AddTasks, CommitsInChunksThatLetOtherWritersIn) {
  TempDir dir("io");
  write_ten_tasks(dir / "tasks.jsonl");
  ann::Store store(dir / "a.db");
  ann::StoreOptions impatient;
  impatient.busy_timeout_ms = 0;  // fails at once if the import holds the write lock
  ann::Store server(dir / "a.db", impatient);
  std::vector<int64_t> commits;
  ann::ChunkOptions chunk;
  chunk.max_rows = 3;
  chunk.max_seconds = 60;
  chunk.after_commit = [&](int64_t done) {
    commits.push_back(done);
    ann::Store::Transaction txn(server);  // BEGIN IMMEDIATE: needs the write lock now
    server.add_annotator("between-" + std::to_string(done), "annotator");
    txn.commit();
  };
  EXPECT_EQ(ann::add_tasks_jsonl(store, dir / "tasks.jsonl", 1, chunk), 10);
  EXPECT_EQ(commits, (std::vector<int64_t>{3, 6, 9, 10}));
  EXPECT_EQ(store.task_count(), 10);
  EXPECT_EQ(store.annotators().size(), 4u);
}

// An add-tasks that stops half-way (here: killed after its second chunk) is completed by running
// it again on the same file, adding nothing twice; once complete, a run adds everything again.
TEST(AddTasks, AnInterruptedRunIsCompletedByRunningItAgain) {
  TempDir dir("io");
  write_ten_tasks(dir / "tasks.jsonl");
  ann::Store store(dir / "a.db");
  ann::ChunkOptions crash;
  crash.max_rows = 3;
  crash.after_commit = [](int64_t done) {
    if (done == 6) throw std::runtime_error("killed");
  };
  EXPECT_THROW(ann::add_tasks_jsonl(store, dir / "tasks.jsonl", 2, crash), std::runtime_error);
  EXPECT_EQ(store.task_count(), 6);
  EXPECT_EQ(store.integrity_check(), "ok");
  ann::ChunkOptions small;
  small.max_rows = 4;
  EXPECT_EQ(ann::add_tasks_jsonl(store, dir / "tasks.jsonl", 2, small), 4);  // the rest
  EXPECT_EQ(store.task_count(), 10);
  std::map<std::string, int> per_prompt;
  for (int64_t id = 1; id <= 10; ++id) ++per_prompt[store.task(id)->prompt];
  EXPECT_EQ(per_prompt.size(), 10u);                                          // each line once
  EXPECT_EQ(ann::add_tasks_jsonl(store, dir / "tasks.jsonl", 2, small), 10);  // a new run
  EXPECT_EQ(store.task_count(), 20);
}

TEST(ImportExport, AnInterruptedImportIsCompletedByRunningItAgain) {
  TempDir dir("io");
  {
    std::ofstream f(dir / "pairs.jsonl");
    for (int i = 0; i < 7; ++i)
      f << json{{"prompt", "p" + std::to_string(i)}, {"chosen", "good"}, {"rejected", "bad"}}.dump()
        << "\n";
  }
  ann::Store store(dir / "a.db");
  ann::ChunkOptions crash;
  crash.max_rows = 2;
  crash.after_commit = [](int64_t done) {
    if (done == 4) throw std::runtime_error("disk full");
  };
  EXPECT_THROW(ann::import_preferences(store, dir / "pairs.jsonl", "pairs", crash),
               std::runtime_error);
  EXPECT_EQ(store.ranking_count(), 4);
  auto res = ann::import_preferences(store, dir / "pairs.jsonl", "pairs");
  EXPECT_EQ(res.resumed_from, 4);
  EXPECT_EQ(res.imported, 3);
  EXPECT_EQ(store.ranking_count(), 7);
  EXPECT_EQ(store.task_count(), 7);
}
