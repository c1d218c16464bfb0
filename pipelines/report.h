// The run report: runs/<name>/report.html, ONE self-contained file (inline SVG line charts and CSS;
// no scripts, no web fonts, nothing fetched from the network), built from whatever a run folder
// holds. Missing inputs skip their section with a note; a run folder with nothing in it still gets
// a report saying so.
//
// Inputs, all relative to the run folder and all optional:
//   summary.json              headline numbers (any JSON object; nested objects are flattened
//                             with dots). Shown first, known keys (sft_gold_accuracy, ...) on top.
//   sft/metrics.jsonl         one JSON object per line with "step" and scalar fields (the format of
//   reward/metrics.jsonl      common/metrics.h's MetricsWriter); non-numeric fields are ignored,
//   ppo/metrics.jsonl         unreadable lines are counted and mentioned.
//                             PPO: "score/mean" (the teacher = proxy) and "gold/accuracy" (gold)
//                             share one chart with two y axes, so over-optimisation shows;
//                             "kl/mean" with "kl/coef"; then every other field on its own chart.
//                             SFT / reward: fields containing "loss" share a chart, fields
//                             containing "acc" share a chart, every other field gets its own.
//   annotate/stats.json       annotation statistics (e.g. `rlhf annotate stats --json` output);
//                             also accepted: annotation/stats.json, annotation_stats.json, or an
//                             "annotation" object inside summary.json. Shown as a table.
//   samples.json              held-out prompts answered before and after PPO, either an array or
//                             {"samples": [...]}, each element
//                               {"prompt": "...", "before": "...", "after": "...",
//                                "gold": "..." (optional), "before_correct": bool (optional),
//                                "after_correct": bool (optional)}
//                             Correctness missing from the file is computed with the quickstart
//                             task's checker when the prompt is a quickstart problem.
//                             Also looked for at ppo/samples.json. Without either, the
//                             pipeline's evaluation files sample/heldout_sft.json (before) and
//                             ppo/heldout_ppo.json (after), arrays of
//                             {"prompt", "gold", "answer", "correct"}, are merged by prompt.
//
// Thread safety: every function reads its inputs and keeps no state; calls may run at once (two
// write_report calls for one run folder race, the last rename wins).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace rlhf::report {

struct ReportOptions {
  std::string title;  // page title; default "RLHF run <folder name>"
  std::string
      samples_path;  // samples JSON; default: <run>/samples.json, then <run>/ppo/samples.json
  std::string output_path;    // default <run>/report.html
  int max_points = 400;       // longer metric series are thinned to about this many points
  int max_sample_rows = 100;  // rows of the before/after table
};

// Renders the report HTML for `run_dir` (does not write anything). Throws rlhf::Error only when
// run_dir is not a folder.
std::string render_report(const std::string& run_dir, const ReportOptions& options = {});

// Renders and writes the report atomically; returns the path written. Throws rlhf::Error when
// run_dir is not a folder or the file cannot be written (naming the path).
std::string write_report(const std::string& run_dir, const ReportOptions& options = {});

// ---- Building blocks (exposed for tests and other pages) ---------------------------------------

struct ChartSeries {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y), any order; sorted by x when drawn
  bool right_axis = false;                        // plot against the right-hand y axis
};

struct ChartSpec {
  std::string title;
  std::string x_label = "step";
  std::string left_label, right_label;  // axis captions ("" = none)
  std::vector<ChartSeries> series;
  // Fixed right-axis range (e.g. 0..1 for an accuracy); used when lo < hi, else fitted to data.
  double right_lo = 0, right_hi = 0;
};

// An inline <svg> line chart (axes, ticks, legend, one polyline per series). Series without
// points are left out; a chart without any points renders a short note instead.
std::string svg_line_chart(const ChartSpec& chart, int width = 640, int height = 280);

// Escapes &, <, >, " and ' for HTML/XML text and attribute values.
std::string html_escape(const std::string& s);

}  // namespace rlhf::report
