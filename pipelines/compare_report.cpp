#include "pipelines/compare_report.h"

#include <algorithm>
#include <cstdio>
#include <thread>

#include "common/blas_tuning.h"
#include "common/error.h"
#include "common/files.h"
#include "pipelines/report.h"

namespace rlhf::pipelines {
using nlohmann::json;

namespace {

// The figures averaged over seeds (each result.json holds them as numbers).
const std::vector<const char*>& averaged_figures() {
  static const std::vector<const char*> keys = {
      "gold_accuracy", "final_kl", "teacher_score", "wall_seconds", "tokens_generated", "train_kl"};
  return keys;
}

json read_object(const std::string& path) {
  json j = json::parse(read_file(path), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) throw Error(path + ": expected a JSON object");
  return j;
}

json method_summary(const std::string& run_dir, const std::string& method,
                    const std::vector<uint64_t>& seeds) {
  json m = {{"seeds", json::object()}, {"missing", json::array()}};
  std::vector<json> done;
  for (uint64_t seed : seeds) {
    const std::string path = compare_seed_dir(run_dir, method, seed) + "/result.json";
    if (!file_exists(path)) {
      m["missing"].push_back(seed);
      continue;
    }
    done.push_back(read_object(path));
    m["seeds"][std::to_string(seed)] = done.back();
  }
  m["n"] = done.size();
  for (const char* key : averaged_figures()) {
    double sum = 0, lo = 0, hi = 0;
    int n = 0;
    for (const json& r : done) {
      if (!r.contains(key) || !r[key].is_number()) continue;
      const double v = r[key].get<double>();
      lo = n == 0 ? v : std::min(lo, v);
      hi = n == 0 ? v : std::max(hi, v);
      sum += v;
      ++n;
    }
    if (n == 0) continue;
    m[key] = sum / n;
    if (std::string(key) == "gold_accuracy") {
      m["gold_accuracy_min"] = lo;
      m["gold_accuracy_max"] = hi;
    }
  }
  return m;
}

std::string fmt(const json& j, const char* key, const char* format, double scale = 1) {
  if (!j.contains(key) || !j[key].is_number()) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, format, scale * j[key].get<double>());
  return buf;
}

std::string table_html(const json& c) {
  std::string h =
      "<table>\n<tr><th>method</th><th>seeds</th><th>gold accuracy (mean)</th><th>min</th>"
      "<th>max</th><th>KL to SFT (nats/answer)</th><th>teacher score</th><th>wall s</th>"
      "<th>generated tokens</th></tr>\n";
  const json& b = c["before"];
  h += "<tr class=\"base\"><td>SFT student (before)</td><td></td><td>" +
       fmt(b, "gold_accuracy", "%.1f%%", 100) + "</td><td></td><td></td><td>0</td><td>" +
       fmt(b, "teacher_score", "%.3f") + "</td><td></td><td></td></tr>\n";
  for (const auto& order : c["method_order"]) {
    const std::string name = order.get<std::string>();
    const json& m = c["methods"][name];
    h += "<tr><td>" + report::html_escape(name) + "</td><td>" + std::to_string(m.value("n", 0)) +
         "</td><td>" + fmt(m, "gold_accuracy", "%.1f%%", 100) + "</td><td>" +
         fmt(m, "gold_accuracy_min", "%.1f%%", 100) + "</td><td>" +
         fmt(m, "gold_accuracy_max", "%.1f%%", 100) + "</td><td>" + fmt(m, "final_kl", "%.3f") +
         "</td><td>" + fmt(m, "teacher_score", "%.3f") + "</td><td>" +
         fmt(m, "wall_seconds", "%.0f") + "</td><td>" + fmt(m, "tokens_generated", "%.0f") +
         "</td></tr>\n";
  }
  return h + "</table>\n";
}

std::string chart_html(const json& c) {
  report::ChartSpec chart;
  chart.title =
      "Held-out gold accuracy (greedy) against training wall-clock seconds, mean over seeds";
  chart.x_label = "wall-clock seconds of the method's training";
  chart.right_label = "gold accuracy";
  chart.right_lo = 0;
  chart.right_hi = 1;
  const json& b = c["before"];
  const bool has_before = b.contains("gold_accuracy") && b["gold_accuracy"].is_number();
  for (const auto& order : c["method_order"]) {
    const std::string name = order.get<std::string>();
    const json& m = c["methods"][name];
    if (!m.contains("gold_accuracy")) continue;
    report::ChartSeries s{name, {}, true};
    if (has_before) s.points.emplace_back(0.0, b["gold_accuracy"].get<double>());
    s.points.emplace_back(m.value("wall_seconds", 0.0), m["gold_accuracy"].get<double>());
    chart.series.push_back(s);
  }
  return report::svg_line_chart(chart, 760, 360);
}

std::string compare_html(const json& c) {
  const json& mach = c["machine"];
  std::string h =
      "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Method comparison</title>\n"
      "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
      "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
      "tr.base td{background:#f4f4f4}</style></head><body>\n<h1>Method comparison</h1>\n"
      "<p>Every method trained from the same SFT student with the same teacher and rankings; "
      "gold accuracy is the quickstart's gold teacher on the held-out problems (greedy answers); "
      "KL and teacher score are over answers sampled at temperature 1 on the held-out prompts. "
      "Seeds: " +
      c["seeds"].dump() +
      ".</p>\n<p>Machine: " + report::html_escape(mach.value("cpu", std::string("unknown CPU"))) +
      ", " + std::to_string(mach.value("cores", 0)) + " cores, OpenBLAS " +
      report::html_escape(mach.value("openblas_core", std::string("?"))) + "; written " +
      report::html_escape(c.value("written_at", std::string())) + " (UTC).</p>\n";
  return h + table_html(c) + chart_html(c) + "</body></html>\n";
}

}  // namespace

std::string compare_seed_dir(const std::string& run_dir, const std::string& method, uint64_t seed) {
  return run_dir + "/compare/" + method + "/seed-" + std::to_string(seed);
}

json write_compare_report(const std::string& run_dir, const std::vector<std::string>& methods,
                          const std::vector<uint64_t>& seeds) {
  json c = {{"schema_version", 1},
            {"seeds", seeds},
            {"methods", json::object()},
            {"method_order", methods}};
  const std::string before = run_dir + "/compare/sft.json";
  c["before"] = file_exists(before) ? read_object(before) : json::object();
  for (const auto& m : methods) c["methods"][m] = method_summary(run_dir, m, seeds);
  const std::string blas = openblas_core_name();
  c["machine"] = {{"cpu", cpu_model_name()},
                  {"cores", static_cast<int64_t>(std::thread::hardware_concurrency())},
                  {"openblas_core", blas.empty() ? "none" : blas}};
  c["written_at"] = utc_now_iso8601();
  write_file_atomic(run_dir + "/compare.json", c.dump(2));
  write_file_atomic(run_dir + "/compare.html", compare_html(c));
  return c;
}

}  // namespace rlhf::pipelines
