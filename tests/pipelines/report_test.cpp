// The run report: one self-contained HTML file from a (synthetic) run folder.
#include "pipelines/report.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"
#include "common/metrics.h"
#include "pipelines/quickstart_task.h"
#include "tests/test_support.h"

namespace fs = std::filesystem;
namespace q = rlhf::quickstart;
using nlohmann::json;

namespace {

size_t count_of(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t pos = hay.find(needle); pos != std::string::npos; pos = hay.find(needle, pos + 1))
    ++n;
  return n;
}

// A run folder as the pipeline leaves it, written with the real MetricsWriter.
void make_run(const std::string& run, bool with_samples) {
  {
    rlhf::MetricsWriter sft(run + "/sft");
    for (int s = 0; s < 1000; ++s)  // longer than max_points: gets thinned
      sft.write(s, {{"train/loss", 3.0 * std::exp(-s / 300.0)}, {"lr", 1e-3}});
    rlhf::MetricsWriter reward(run + "/reward");
    for (int s = 0; s < 50; ++s) {
      reward.write(s, {{"train/loss", 0.7 - s * 0.01}});
      if (s % 10 == 0) reward.write(s, {{"eval/accuracy", 0.6 + s * 0.007}, {"eval/loss", 0.6}});
    }
    rlhf::MetricsWriter ppo(run + "/ppo");
    for (int it = 1; it <= 30; ++it)
      ppo.write(it, {{"score/mean", 0.1 * it},
                     {"gold/accuracy", 0.3 + 0.015 * it},
                     {"kl/mean", 0.2 * it},
                     {"kl/coef", 0.05},
                     {"loss/policy", -0.01}});
  }
  // A corrupt line is skipped, not fatal.
  std::string ppo_lines = rlhf::read_file(run + "/ppo/metrics.jsonl");
  rlhf::write_file_atomic(run + "/ppo/metrics.jsonl", ppo_lines + "{not json\n");
  rlhf::write_file_atomic(run + "/summary.json",
                          json({{"sft_gold_accuracy", 0.31},
                                {"ppo_gold_accuracy", 0.74},
                                {"stage_seconds", {{"sft", 120.5}, {"ppo", 200}}}})
                              .dump());
  rlhf::make_dirs(run + "/annotate");
  rlhf::write_file_atomic(
      run + "/annotate/stats.json",
      json({{"tasks_done", 400}, {"tasks_pending", 0}, {"agreement", 0.97}}).dump());
  if (with_samples) {
    json samples = json::array();
    for (const auto& p : q::generate_problems(q::Split::kHeldOut, 5, 1))
      samples.push_back({{"prompt", p.prompt()},
                         {"before", q::answer_text(p, q::systematic_wrong(p))},
                         {"after", q::gold_answer(p)}});
    samples.push_back({{"prompt", "Say <b>hi</b> & bye"},
                       {"before", "x"},
                       {"after", "y"},
                       {"before_correct", false},
                       {"after_correct", true}});
    rlhf::write_file_atomic(run + "/samples.json", json({{"samples", samples}}).dump());
  }
}

}  // namespace

TEST(Report, FullRunFolderGivesChartsAndTable) {
  rlhf::testing::TempDir dir("report");
  const std::string run = dir / "myrun";
  make_run(run, true);
  std::string path = rlhf::report::write_report(run);
  EXPECT_EQ(path, run + "/report.html");
  std::string html = rlhf::read_file(path);

  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("http://"),
            html.find("http://www.w3.org/2000/svg"));  // only the SVG namespace
  EXPECT_EQ(html.find("https://"), std::string::npos);
  EXPECT_EQ(html.find("@font-face"), std::string::npos);
  // Charts: gold vs proxy, KL, reward (losses + accuracy), SFT losses, and the other fields.
  EXPECT_GE(count_of(html, "<svg"), 7u);
  EXPECT_EQ(count_of(html, "<svg"), count_of(html, "</svg>"));
  EXPECT_NE(html.find("Teacher score (proxy) vs gold accuracy"), std::string::npos);
  EXPECT_NE(html.find("gold/accuracy (right)"), std::string::npos);
  EXPECT_NE(html.find("score/mean (left)"), std::string::npos);
  EXPECT_NE(html.find("KL to the reference"), std::string::npos);
  EXPECT_NE(html.find("Reward model: accuracy"), std::string::npos);
  EXPECT_NE(html.find("SFT: losses"), std::string::npos);
  EXPECT_NE(html.find("1 unreadable lines skipped"), std::string::npos);
  // The gold-vs-proxy chart's polylines carry 30 points each.
  size_t chart = html.find("Teacher score (proxy)");
  size_t poly = html.find("points=\"", chart);
  size_t end = html.find('"', poly + 8);
  EXPECT_EQ(count_of(html.substr(poly, end - poly), ","), 30u);
  // SFT's 1000 points are thinned to max_points (400).
  size_t sft = html.find("SFT: losses");
  poly = html.find("points=\"", sft);
  end = html.find('"', poly + 8);
  EXPECT_EQ(count_of(html.substr(poly, end - poly), ","), 400u);

  // Summary, annotation stats, before/after table (correctness computed from the prompts).
  EXPECT_NE(html.find("ppo_gold_accuracy"), std::string::npos);
  EXPECT_NE(html.find("stage_seconds.sft"), std::string::npos);
  EXPECT_NE(html.find("tasks_done"), std::string::npos);
  EXPECT_NE(html.find("<table class=\"samples\">"), std::string::npos);
  EXPECT_EQ(count_of(html, "<td class=\"ok\">"), 6u);   // 5 after (computed) + 1 given
  EXPECT_EQ(count_of(html, "<td class=\"bad\">"), 6u);  // 5 before (computed) + 1 given
  EXPECT_NE(html.find("correct before: 0/6, after: 6/6"), std::string::npos)
      << html.substr(html.find("samples.json:"), 120);
  EXPECT_NE(html.find("Say &lt;b&gt;hi&lt;/b&gt; &amp; bye"), std::string::npos);
  EXPECT_EQ(html.find("<b>hi</b>"), std::string::npos);
}

TEST(Report, MissingSectionsAreSkippedWithANote) {
  rlhf::testing::TempDir dir("report");
  std::string html = rlhf::report::render_report(dir.path());
  EXPECT_NE(html.find("No summary.json"), std::string::npos);
  EXPECT_NE(html.find("No ppo/metrics.jsonl"), std::string::npos);
  EXPECT_NE(html.find("No reward/metrics.jsonl"), std::string::npos);
  EXPECT_NE(html.find("No sft/metrics.jsonl"), std::string::npos);
  EXPECT_NE(html.find("No annotation statistics"), std::string::npos);
  EXPECT_NE(html.find("No samples.json"), std::string::npos);
  EXPECT_EQ(html.find("<svg"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);

  // PPO without gold accuracy still draws the teacher score, and says what is missing.
  {
    rlhf::MetricsWriter ppo(dir / "ppo");
    ppo.write(1, {{"score/mean", 0.5}});
  }
  html = rlhf::report::render_report(dir.path());
  EXPECT_NE(html.find("No gold/accuracy field"), std::string::npos);
  EXPECT_EQ(count_of(html, "<svg"), 1u);

  EXPECT_THROW(rlhf::report::render_report(dir / "nope"), rlhf::Error);
}

// The pipeline's own evaluation files: before (sample stage) and after (ppo stage), merged by
// prompt.
TEST(Report, PipelineHeldOutFilesMergeIntoTheTable) {
  rlhf::testing::TempDir dir("report");
  auto problems = q::generate_problems(q::Split::kHeldOut, 4, 2);
  json before = json::array(), after = json::array();
  for (size_t i = 0; i < problems.size(); ++i) {
    const auto& p = problems[i];
    before.push_back({{"prompt", p.prompt()},
                      {"gold", p.gold()},
                      {"answer", q::answer_text(p, q::systematic_wrong(p))},
                      {"correct", false}});
    if (i < 3)  // the last prompt has no PPO answer: its cell stays empty
      after.push_back({{"prompt", p.prompt()},
                       {"gold", p.gold()},
                       {"answer", q::gold_answer(p)},
                       {"correct", true}});
  }
  rlhf::make_dirs(dir / "sample");
  rlhf::make_dirs(dir / "ppo");
  rlhf::write_file_atomic(dir / "sample/heldout_sft.json", before.dump(1));
  rlhf::write_file_atomic(dir / "ppo/heldout_ppo.json", after.dump(1));
  std::string html = rlhf::report::render_report(dir.path());
  EXPECT_NE(html.find("sample/heldout_sft.json + ppo/heldout_ppo.json: 4 prompts; correct before: "
                      "0/3, after: 3/3"),
            std::string::npos);
  EXPECT_EQ(count_of(html, "<td class=\"ok\">"), 3u);
  EXPECT_EQ(count_of(html, "<td class=\"bad\">"), 4u);
  EXPECT_NE(html.find("<td>" + std::to_string(problems[0].gold()) + "</td>"), std::string::npos);
  EXPECT_NE(html.find(rlhf::report::html_escape(q::gold_answer(problems[1]))), std::string::npos);
}

TEST(Report, SvgChartBasics) {
  rlhf::report::ChartSpec c;
  c.title = "a <chart>";
  c.series.push_back({"up", {{0, 0}, {1, 1}, {2, 4}}});
  c.series.push_back({"empty", {}});
  std::string svg = rlhf::report::svg_line_chart(c);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("a &lt;chart&gt;"), std::string::npos);
  EXPECT_EQ(count_of(svg, "<polyline"), 1u);
  EXPECT_EQ(svg.find("empty"), std::string::npos);
  rlhf::report::ChartSpec none;
  none.title = "nothing";
  EXPECT_EQ(rlhf::report::svg_line_chart(none).find("<svg"), std::string::npos);
}
