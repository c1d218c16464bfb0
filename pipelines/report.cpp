#include "pipelines/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/files.h"
#include "pipelines/quickstart_task.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace rlhf::report {

namespace {

const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"};

std::string fmt(double v) {
  if (!std::isfinite(v)) return std::isnan(v) ? "NaN" : (v > 0 ? "inf" : "-inf");
  char buf[32];
  if (v != 0 && (std::fabs(v) >= 1e5 || std::fabs(v) < 1e-3))
    std::snprintf(buf, sizeof buf, "%.3g", v);
  else
    std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

// "Nice" tick positions covering [lo, hi] (1-2-5 steps, about `target` ticks).
std::vector<double> nice_ticks(double lo, double hi, int target = 5) {
  double span = hi - lo;
  if (!(span > 0)) return {lo};
  double raw = span / target;
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * mag) {
      step = m * mag;
      break;
    }
  std::vector<double> ticks;
  for (double t = std::ceil(lo / step) * step; t <= hi + step * 1e-9; t += step)
    ticks.push_back(std::fabs(t) < step * 1e-9 ? 0.0 : t);
  return ticks;
}

struct Range {
  double lo = 0, hi = 0;
  bool any = false;
  void add(double v) {
    if (!std::isfinite(v)) return;
    if (!any) lo = hi = v;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    any = true;
  }
  void pad() {
    if (!any) {
      lo = 0, hi = 1;
      return;
    }
    if (hi - lo < 1e-12) {
      double d = std::max(std::fabs(lo) * 0.1, 1e-3);
      lo -= d, hi += d;
    } else {
      double d = (hi - lo) * 0.05;
      lo -= d, hi += d;
    }
  }
};

// ---- Metrics files ----------------------------------------------------------------------------

struct MetricsFile {
  bool found = false;
  std::string path;
  int lines = 0, bad_lines = 0;
  std::map<std::string, std::vector<std::pair<double, double>>> series;  // key -> (step, value)
  std::vector<std::string> order;                                        // keys, first-seen order
};

MetricsFile read_metrics(const std::string& path) {
  MetricsFile m;
  m.path = path;
  std::ifstream in(path);
  if (!in) return m;
  m.found = true;
  std::string line;
  int index = 0;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    ++m.lines;
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) {
      ++m.bad_lines;
      continue;
    }
    double step = index++;
    if (j.contains("step") && j["step"].is_number()) step = j["step"].get<double>();
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (it.key() == "step" || !(it->is_number() || it->is_boolean())) continue;
      double v = it->is_boolean() ? (it->get<bool>() ? 1.0 : 0.0) : it->get<double>();
      if (!m.series.count(it.key())) m.order.push_back(it.key());
      m.series[it.key()].emplace_back(step, v);
    }
  }
  return m;
}

std::vector<std::pair<double, double>> thin(std::vector<std::pair<double, double>> pts,
                                            int max_points) {
  std::stable_sort(pts.begin(), pts.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  if (max_points < 2 || static_cast<int>(pts.size()) <= max_points) return pts;
  std::vector<std::pair<double, double>> out;
  double stride = static_cast<double>(pts.size() - 1) / (max_points - 1);
  for (int i = 0; i < max_points; ++i)
    out.push_back(pts[static_cast<size_t>(std::llround(i * stride))]);
  return out;
}

void flatten(const json& j, const std::string& prefix,
             std::vector<std::pair<std::string, std::string>>* out) {
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it)
      flatten(*it, prefix.empty() ? it.key() : prefix + "." + it.key(), out);
  } else if (j.is_number_float()) {
    out->emplace_back(prefix, fmt(j.get<double>()));
  } else if (j.is_string()) {
    out->emplace_back(prefix, j.get<std::string>());
  } else {
    out->emplace_back(prefix, j.dump());
  }
}

std::string kv_table(const std::vector<std::pair<std::string, std::string>>& rows) {
  std::string h = "<table class=\"kv\">\n";
  for (const auto& [k, v] : rows)
    h += "<tr><th>" + html_escape(k) + "</th><td>" + html_escape(v) + "</td></tr>\n";
  return h + "</table>\n";
}

std::string note(const std::string& text) {
  return "<p class=\"note\">" + html_escape(text) + "</p>\n";
}

bool read_json_file(const std::string& path, json* out, std::string* error) {
  if (!fs::is_regular_file(path)) return false;
  try {
    *out = json::parse(read_file(path));
    return true;
  } catch (const std::exception& e) {
    *error = path + ": " + e.what();
    return false;
  }
}

std::string rel(const std::string& run_dir, const std::string& path) {
  std::error_code ec;
  auto r = fs::relative(path, run_dir, ec);
  return ec ? path : r.string();
}

ChartSpec make_chart(const std::string& title, const std::string& x_label = "step",
                     const std::string& left_label = "", const std::string& right_label = "") {
  ChartSpec c;
  c.title = title;
  c.x_label = x_label;
  c.left_label = left_label;
  c.right_label = right_label;
  return c;
}

// ---- Sections ---------------------------------------------------------------------------------

std::string metrics_note(const MetricsFile& m, const std::string& run_dir) {
  std::string s = rel(run_dir, m.path) + ": " + std::to_string(m.lines) + " records";
  if (m.bad_lines) s += ", " + std::to_string(m.bad_lines) + " unreadable lines skipped";
  return note(s + ".");
}

ChartSeries series_of(const MetricsFile& m, const std::string& key, int max_points,
                      bool right = false) {
  ChartSeries s;
  s.name = key;
  s.points = thin(m.series.at(key), max_points);
  s.right_axis = right;
  return s;
}

// Charts for a stage: keys containing "loss" together, keys containing "acc" together, others
// alone. `used` keys are skipped (already drawn).
std::string generic_charts(const MetricsFile& m, const std::string& stage, int max_points,
                           std::set<std::string> used) {
  std::string h;
  ChartSpec losses = make_chart(stage + ": losses"), accs = make_chart(stage + ": accuracy");
  for (const auto& k : m.order) {
    if (used.count(k)) continue;
    if (k.find("loss") != std::string::npos && stage != "PPO") {
      losses.series.push_back(series_of(m, k, max_points));
      used.insert(k);
    } else if (k.find("acc") != std::string::npos && stage != "PPO") {
      accs.series.push_back(series_of(m, k, max_points));
      used.insert(k);
    }
  }
  std::string grid;
  if (!losses.series.empty()) h += svg_line_chart(losses);
  if (!accs.series.empty()) h += svg_line_chart(accs);
  for (const auto& k : m.order) {
    if (used.count(k)) continue;
    ChartSpec c = make_chart(k);
    c.series.push_back(series_of(m, k, max_points));
    grid += svg_line_chart(c, 420, 220);
  }
  if (!grid.empty())
    h += "<h3>Other " + html_escape(stage) + " metrics</h3>\n<div class=\"grid\">" + grid +
         "</div>\n";
  return h;
}

std::string ppo_section(const MetricsFile& m, const std::string& run_dir, int max_points) {
  std::string h = "<h2 id=\"ppo\">PPO</h2>\n";
  if (!m.found) return h + note("No ppo/metrics.jsonl in the run folder: PPO section skipped.");
  h += metrics_note(m, run_dir);
  std::set<std::string> used;
  ChartSpec gold = make_chart("Teacher score (proxy) vs gold accuracy per PPO iteration",
                              "iteration", "teacher score", "gold accuracy");
  gold.right_lo = 0;  // accuracy on its full 0..1 scale
  gold.right_hi = 1;
  for (const char* k : {"score/mean"})
    if (m.series.count(k)) gold.series.push_back(series_of(m, k, max_points)), used.insert(k);
  for (const char* k : {"gold/accuracy"})
    if (m.series.count(k)) gold.series.push_back(series_of(m, k, max_points, true)), used.insert(k);
  if (!gold.series.empty()) {
    h += svg_line_chart(gold);
    if (!m.series.count("gold/accuracy"))
      h += note("No gold/accuracy field in ppo/metrics.jsonl: only the teacher score is shown.");
  } else {
    h += note("No score/mean or gold/accuracy in ppo/metrics.jsonl.");
  }
  ChartSpec kl = make_chart("KL to the reference per PPO iteration", "iteration",
                            "KL (per sequence)", "KL coefficient");
  if (m.series.count("kl/mean"))
    kl.series.push_back(series_of(m, "kl/mean", max_points)), used.insert("kl/mean");
  if (m.series.count("kl/coef"))
    kl.series.push_back(series_of(m, "kl/coef", max_points, true)), used.insert("kl/coef");
  if (!kl.series.empty()) h += svg_line_chart(kl);
  h += generic_charts(m, "PPO", max_points, used);
  return h;
}

std::string stage_section(const MetricsFile& m, const std::string& run_dir, const std::string& id,
                          const std::string& title, int max_points) {
  std::string h = "<h2 id=\"" + id + "\">" + html_escape(title) + "</h2>\n";
  if (!m.found)
    return h +
           note("No " + id + "/metrics.jsonl in the run folder: " + title + " section skipped.");
  h += metrics_note(m, run_dir);
  if (m.series.empty()) return h + note("No numeric fields found.");
  return h + generic_charts(m, title, max_points, {});
}

std::string summary_section(const json& summary) {
  static const std::vector<std::string> headline = {
      "sft_gold_accuracy",       "ppo_gold_accuracy", "reward_gold_agreement",
      "reward_heldout_accuracy", "ppo_final_kl",      "wall_seconds"};
  std::vector<std::pair<std::string, std::string>> rows, all;
  flatten(summary, "", &all);
  for (const auto& k : headline)
    for (const auto& r : all)
      if (r.first == k) rows.push_back(r);
  for (const auto& r : all)
    if (std::find(headline.begin(), headline.end(), r.first) == headline.end() &&
        r.first.rfind("annotation.", 0) != 0)
      rows.push_back(r);
  return kv_table(rows);
}

std::string annotation_section(const std::string& run_dir, const json& summary, bool have_summary) {
  std::string h = "<h2 id=\"annotation\">Annotation</h2>\n";
  std::string err;
  for (const char* name :
       {"annotate/stats.json", "annotation/stats.json", "annotation_stats.json"}) {
    json j;
    std::string path = (fs::path(run_dir) / name).string();
    if (read_json_file(path, &j, &err)) {
      std::vector<std::pair<std::string, std::string>> rows;
      flatten(j, "", &rows);
      return h + note("From " + std::string(name) + ".") + kv_table(rows);
    }
    if (!err.empty()) return h + note("Annotation stats unreadable: " + err);
  }
  if (have_summary && summary.is_object() && summary.contains("annotation")) {
    std::vector<std::pair<std::string, std::string>> rows;
    flatten(summary["annotation"], "", &rows);
    return h + note("From summary.json.") + kv_table(rows);
  }
  return h +
         note("No annotation statistics (annotate/stats.json) in the run folder: section skipped.");
}

std::string cell_mark(const json& s, const char* answer_field, const char* field,
                      const std::optional<quickstart::Problem>& problem) {
  std::optional<bool> ok;
  if (s.contains(field) && s[field].is_boolean())
    ok = s[field].get<bool>();
  else if (problem && s.contains(answer_field) && s[answer_field].is_string())
    ok = quickstart::is_correct(*problem, s[answer_field].get<std::string>());
  if (!ok) return "<td></td>";
  return *ok ? "<td class=\"ok\">&#10003;</td>" : "<td class=\"bad\">&#10007;</td>";
}

// The pipeline's per-stage evaluation files, [{"prompt", "gold", "answer", "correct"}], merged by
// prompt into samples {"prompt", "gold", "before", "before_correct", "after", "after_correct"}.
json merge_stage_samples(const json& before, const json& after) {
  json out = json::array();
  std::map<std::string, size_t> index;
  auto add = [&](const json& list, const char* answer_key, const char* correct_key) {
    if (!list.is_array()) return;
    for (const json& e : list) {
      if (!e.is_object() || !e.contains("prompt") || !e["prompt"].is_string()) continue;
      std::string prompt = e["prompt"].get<std::string>();
      auto it = index.find(prompt);
      if (it == index.end()) {
        it = index.emplace(prompt, out.size()).first;
        out.push_back({{"prompt", prompt}});
      }
      json& s = out[it->second];
      if (e.contains("gold")) s["gold"] = e["gold"];
      if (e.contains("answer")) s[answer_key] = e["answer"];
      if (e.contains("correct")) s[correct_key] = e["correct"];
    }
  };
  add(before, "before", "before_correct");
  add(after, "after", "after_correct");
  return out;
}

std::string samples_section(const std::string& run_dir, const ReportOptions& o) {
  std::string h = "<h2 id=\"samples\">Held-out prompts before and after PPO</h2>\n";
  std::vector<std::string> candidates;
  if (!o.samples_path.empty())
    candidates.push_back(o.samples_path);
  else {
    candidates.push_back((fs::path(run_dir) / "samples.json").string());
    candidates.push_back((fs::path(run_dir) / "ppo" / "samples.json").string());
  }
  json j;
  std::string err, used;
  for (const auto& c : candidates) {
    if (read_json_file(c, &j, &err)) {
      used = rel(run_dir, c);
      break;
    }
    if (!err.empty()) return h + note("Samples file unreadable: " + err);
  }
  if (used.empty() && o.samples_path.empty()) {
    json before, after;
    bool hb =
        read_json_file((fs::path(run_dir) / "sample" / "heldout_sft.json").string(), &before, &err);
    if (!err.empty()) return h + note("Samples file unreadable: " + err);
    bool ha =
        read_json_file((fs::path(run_dir) / "ppo" / "heldout_ppo.json").string(), &after, &err);
    if (!err.empty()) return h + note("Samples file unreadable: " + err);
    if (hb || ha) {
      j = merge_stage_samples(before, after);
      used = std::string(hb ? "sample/heldout_sft.json" : "") + (hb && ha ? " + " : "") +
             (ha ? "ppo/heldout_ppo.json" : "");
    }
  }
  if (used.empty())
    return h + note(
                   "No samples.json (or sample/heldout_sft.json, ppo/heldout_ppo.json) in the run "
                   "folder: before/after table skipped.");
  const json& list = j.is_object() && j.contains("samples") ? j["samples"] : j;
  if (!list.is_array()) return h + note(used + ": expected an array of samples.");
  auto str = [](const json& s, const char* k) {
    if (!s.contains(k) || s[k].is_null()) return std::string();
    return s[k].is_string() ? s[k].get<std::string>() : s[k].dump();
  };
  std::string rows;
  int n = 0, before_ok = 0, after_ok = 0, judged = 0;
  for (const json& s : list) {
    if (!s.is_object()) continue;
    std::string prompt = str(s, "prompt"), before = str(s, "before"), after = str(s, "after");
    std::string gold = str(s, "gold");
    auto problem = quickstart::parse_prompt(prompt);
    if (gold.empty() && problem) gold = quickstart::gold_answer(*problem);
    std::string mb = cell_mark(s, "before", "before_correct", problem);
    std::string ma = cell_mark(s, "after", "after_correct", problem);
    if (mb.find("class") != std::string::npos && ma.find("class") != std::string::npos) {
      ++judged;
      before_ok += mb.find("ok") != std::string::npos;
      after_ok += ma.find("ok") != std::string::npos;
    }
    if (n < o.max_sample_rows)
      rows += "<tr><td>" + std::to_string(n + 1) + "</td><td>" + html_escape(prompt) + "</td><td>" +
              html_escape(gold) + "</td><td>" + html_escape(before) + "</td>" + mb + "<td>" +
              html_escape(after) + "</td>" + ma + "</tr>\n";
    ++n;
  }
  h += note(
      used + ": " + std::to_string(n) + " prompts" +
      (n > o.max_sample_rows ? " (first " + std::to_string(o.max_sample_rows) + " shown)" : "") +
      (judged ? "; correct before: " + std::to_string(before_ok) + "/" + std::to_string(judged) +
                    ", after: " + std::to_string(after_ok) + "/" + std::to_string(judged)
              : std::string()) +
      ".");
  h += "<table class=\"samples\">\n<tr><th>#</th><th>prompt</th><th>gold</th><th>before PPO "
       "(SFT)</th>"
       "<th></th><th>after PPO</th><th></th></tr>\n" +
       rows + "</table>\n";
  return h;
}

const char* kStyle = R"(
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1320px;color:#222;padding:0 16px}
h1{font-size:24px}h2{font-size:20px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}h3{font-size:16px}
.note{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
table.kv th{background:#f6f6f6;font-weight:normal;font-family:monospace}
table.samples th{background:#f6f6f6}
td.ok{color:#2ca02c;font-weight:bold}td.bad{color:#d62728;font-weight:bold}
.grid{display:flex;flex-wrap:wrap;gap:8px}
svg{background:#fff;border:1px solid #eee;margin:4px 4px 4px 0}
nav a{margin-right:12px}
)";

}  // namespace

std::string html_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

namespace {

// The plot area of one chart and the ranges its axes show; maps data to SVG coordinates.
struct ChartFrame {
  int width = 0;
  bool has_right = false;                 // some series is drawn against the right axis
  double ml = 0, mr = 0, mt = 0, mb = 0;  // margins: left, right, top, bottom
  double pw = 0, ph = 0;                  // plot width and height
  Range xr, yl, yr;                       // x, left-axis and right-axis ranges
  double X(double x) const { return ml + (x - xr.lo) / (xr.hi - xr.lo) * pw; }
  double Y(double y, const Range& r) const { return mt + ph - (y - r.lo) / (r.hi - r.lo) * ph; }
};

// Margins and axis ranges for `series`; false when no point has a finite value.
bool frame_chart(const ChartSpec& chart, const std::vector<const ChartSeries*>& series, int width,
                 int height, ChartFrame* f) {
  f->width = width;
  f->has_right = std::any_of(series.begin(), series.end(), [](auto* s) { return s->right_axis; });
  f->ml = 62, f->mr = f->has_right ? 62 : 16, f->mt = 44, f->mb = 40;
  f->pw = width - f->ml - f->mr, f->ph = height - f->mt - f->mb;
  for (auto* s : series)
    for (const auto& [x, y] : s->points) {
      f->xr.add(x);
      (s->right_axis ? f->yr : f->yl).add(y);
    }
  if (!f->xr.any) return false;
  if (f->xr.hi - f->xr.lo < 1e-12) f->xr.lo -= 0.5, f->xr.hi += 0.5;
  f->yl.pad();
  if (chart.right_lo < chart.right_hi && f->yr.lo >= chart.right_lo && f->yr.hi <= chart.right_hi) {
    f->yr.lo = chart.right_lo;
    f->yr.hi = chart.right_hi;
  } else {
    f->yr.pad();
  }
  return true;
}

// Grid lines with tick labels on the x, left and right axes, and the plot's border.
void draw_grid(std::ostringstream& o, const ChartFrame& f) {
  char buf[256];
  const double ml = f.ml, mt = f.mt, pw = f.pw, ph = f.ph;
  for (double t : nice_ticks(f.xr.lo, f.xr.hi, 6)) {
    std::snprintf(buf, sizeof buf,
                  "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>"
                  "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#555\">",
                  f.X(t), mt, f.X(t), mt + ph, f.X(t), mt + ph + 14);
    o << buf << fmt(t) << "</text>\n";
  }
  for (double t : nice_ticks(f.yl.lo, f.yl.hi, 5)) {
    if (!f.yl.any && f.has_right) break;
    std::snprintf(buf, sizeof buf,
                  "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>"
                  "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" fill=\"#555\">",
                  ml, f.Y(t, f.yl), ml + pw, f.Y(t, f.yl), ml - 4, f.Y(t, f.yl) + 4);
    o << buf << fmt(t) << "</text>\n";
  }
  if (f.has_right)
    for (double t : nice_ticks(f.yr.lo, f.yr.hi, 5)) {
      std::snprintf(buf, sizeof buf,
                    "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"start\" fill=\"#555\">", ml + pw + 4,
                    f.Y(t, f.yr) + 4);
      o << buf << fmt(t) << "</text>\n";
    }
  std::snprintf(buf, sizeof buf,
                "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
                "stroke=\"#999\"/>\n",
                ml, mt, pw, ph);
  o << buf;
}

// The x-axis caption and, when given, the left and right axis captions.
void draw_captions(std::ostringstream& o, const ChartFrame& f, const ChartSpec& chart) {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#333\">",
                f.ml + f.pw / 2, f.mt + f.ph + 32);
  o << buf << html_escape(chart.x_label) << "</text>\n";
  if (!chart.left_label.empty()) {
    std::snprintf(
        buf, sizeof buf,
        "<text transform=\"translate(12,%.1f) rotate(-90)\" text-anchor=\"middle\" fill=\"#333\">",
        f.mt + f.ph / 2);
    o << buf << html_escape(chart.left_label) << "</text>\n";
  }
  if (f.has_right && !chart.right_label.empty()) {
    std::snprintf(
        buf, sizeof buf,
        "<text transform=\"translate(%.1f,%.1f) rotate(90)\" text-anchor=\"middle\" fill=\"#333\">",
        f.width - 10.0, f.mt + f.ph / 2);
    o << buf << html_escape(chart.right_label) << "</text>\n";
  }
}

// Each series as a polyline (a dot when it has one point) in its colour, with its legend entry.
void draw_series(std::ostringstream& o, const ChartFrame& f,
                 const std::vector<const ChartSeries*>& series) {
  char buf[256];
  double lx = f.ml;
  for (size_t i = 0; i < series.size(); ++i) {
    const ChartSeries& s = *series[i];
    const char* color = kColors[i % (sizeof kColors / sizeof kColors[0])];
    const Range& r = s.right_axis ? f.yr : f.yl;
    auto pts = s.points;
    std::stable_sort(pts.begin(), pts.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    std::string poly;
    for (const auto& [x, y] : pts) {
      if (!std::isfinite(y)) continue;
      std::snprintf(buf, sizeof buf, "%.1f,%.1f ", f.X(x), f.Y(y, r));
      poly += buf;
    }
    if (pts.size() == 1 && std::isfinite(pts[0].second)) {
      std::snprintf(buf, sizeof buf, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n",
                    f.X(pts[0].first), f.Y(pts[0].second, r), color);
      o << buf;
    } else if (!poly.empty()) {
      o << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"1.8\" points=\""
        << poly << "\"/>\n";
    }
    std::string label = s.name + (f.has_right ? (s.right_axis ? " (right)" : " (left)") : "");
    std::snprintf(
        buf, sizeof buf,
        "<line x1=\"%.1f\" y1=\"30\" x2=\"%.1f\" y2=\"30\" stroke=\"%s\" stroke-width=\"3\"/>"
        "<text x=\"%.1f\" y=\"34\" fill=\"#333\">",
        lx, lx + 16, color, lx + 20);
    o << buf << html_escape(label) << "</text>\n";
    lx += 28 + 6.2 * label.size();
  }
}

}  // namespace

std::string svg_line_chart(const ChartSpec& chart, int width, int height) {
  std::vector<const ChartSeries*> series;
  for (const auto& s : chart.series)
    if (!s.points.empty()) series.push_back(&s);
  if (series.empty()) return note(chart.title + ": no data.");

  ChartFrame f;
  if (!frame_chart(chart, series, width, height, &f))
    return note(chart.title + ": no finite data.");
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
    << "\" viewBox=\"0 0 " << width << " " << height
    << "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  o << "<title>" << html_escape(chart.title) << "</title>\n";
  o << "<text x=\"" << f.ml << "\" y=\"16\" font-size=\"13\" font-weight=\"bold\">"
    << html_escape(chart.title) << "</text>\n";
  draw_grid(o, f);
  draw_captions(o, f, chart);
  draw_series(o, f, series);
  o << "</svg>\n";
  return o.str();
}

std::string render_report(const std::string& run_dir, const ReportOptions& options) {
  if (!fs::is_directory(run_dir)) throw Error("report: run folder " + run_dir + " does not exist");
  std::string name = fs::path(run_dir).lexically_normal().filename().string();
  if (name.empty() || name == ".")
    name = fs::absolute(run_dir).lexically_normal().parent_path().filename().string();
  const std::string title = options.title.empty() ? "RLHF run " + name : options.title;

  std::string body;
  json summary;
  std::string err;
  bool have_summary = read_json_file((fs::path(run_dir) / "summary.json").string(), &summary, &err);
  body += "<h2 id=\"summary\">Summary</h2>\n";
  if (have_summary)
    body += summary_section(summary);
  else
    body += note(err.empty() ? "No summary.json in the run folder: summary skipped."
                             : "summary.json unreadable: " + err);

  auto metrics = [&](const char* stage) {
    return read_metrics((fs::path(run_dir) / stage / "metrics.jsonl").string());
  };
  body += ppo_section(metrics("ppo"), run_dir, options.max_points);
  body += samples_section(run_dir, options);
  body += stage_section(metrics("reward"), run_dir, "reward", "Reward model", options.max_points);
  body += annotation_section(run_dir, summary, have_summary);
  body += stage_section(metrics("sft"), run_dir, "sft", "SFT", options.max_points);

  std::string h = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" +
                  html_escape(title) + "</title>\n<style>" + kStyle +
                  "</style>\n</head>\n<body>\n<h1>" + html_escape(title) + "</h1>\n";
  h += note("Generated " + utc_now_iso8601() + " from " +
            fs::absolute(run_dir).lexically_normal().string() +
            ". Regenerate with: rlhf report RUN_DIR");
  h += "<nav><a href=\"#summary\">summary</a><a href=\"#ppo\">PPO</a><a "
       "href=\"#samples\">before/after</a>"
       "<a href=\"#reward\">reward model</a><a href=\"#annotation\">annotation</a><a "
       "href=\"#sft\">SFT</a></nav>\n";
  return h + body + "</body>\n</html>\n";
}

std::string write_report(const std::string& run_dir, const ReportOptions& options) {
  std::string out = options.output_path.empty() ? (fs::path(run_dir) / "report.html").string()
                                                : options.output_path;
  write_file_atomic(out, render_report(run_dir, options));
  return out;
}

}  // namespace rlhf::report
