#include "pipelines/sweep_report.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <utility>

#include "common/error.h"
#include "common/files.h"
#include "pipelines/report.h"

namespace rlhf::pipelines {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The figures a row of the table shows, in order, with their captions.
const std::vector<std::pair<const char*, const char*>>& headline_figures() {
  static const std::vector<std::pair<const char*, const char*>> f = {
      {"sft_gold_accuracy", "SFT gold"},
      {"reward_heldout_accuracy", "reward held-out acc."},
      {"reward_gold_agreement", "reward / gold agreement"},
      {"ppo_gold_accuracy", "PPO gold"},
      {"ppo_over_sft", "PPO / SFT"},
      {"ppo_final_kl", "final KL"},
      {"wall_seconds", "wall s"}};
  return f;
}

uint64_t parse_seed(const std::string& part, const std::string& text) {
  if (part.empty() || part.find_first_not_of("0123456789") != std::string::npos || part.size() > 19)
    throw UsageError("--seeds '" + text + "': expected seeds like 0-4, 0,2,7 or 0-2,9, got '" +
                     part + "'");
  return std::stoull(part);
}

void flatten_numbers(const json& j, const std::string& prefix, std::map<std::string, double>* out) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
    if (it->is_object())
      flatten_numbers(*it, key, out);
    else if (it->is_number())
      (*out)[key] = it->get<double>();
  }
}

std::string cell(const json& summary, const char* key) {
  if (!summary.contains(key) || !summary[key].is_number()) return "-";
  const double v = summary[key].get<double>();
  char buf[64];
  const std::string k = key;
  if (k.find("accuracy") != std::string::npos || k.find("agreement") != std::string::npos)
    std::snprintf(buf, sizeof buf, "%.1f%%", 100.0 * v);
  else if (k == "wall_seconds")
    std::snprintf(buf, sizeof buf, "%.0f", v);
  else
    std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

// (iteration, value) of `key` in a metrics JSONL file; empty when the file or key is missing.
std::vector<std::pair<double, double>> metric_series(const std::string& path,
                                                     const std::string& key) {
  std::vector<std::pair<double, double>> points;
  std::ifstream in(path);
  std::string line;
  double index = 0;
  while (std::getline(in, line)) {
    const json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) continue;
    const double step =
        j.contains("step") && j["step"].is_number() ? j["step"].get<double>() : index;
    ++index;
    if (j.contains(key) && j[key].is_number()) points.emplace_back(step, j[key].get<double>());
  }
  return points;
}

std::string table_html(const json& sweep) {
  std::string h = "<table>\n<tr><th>seed</th>";
  for (const auto& [key, caption] : headline_figures())
    h += "<th>" + std::string(caption) + "</th>";
  h += "</tr>\n";
  for (const auto& seed : sweep["seeds"]) {
    const std::string s = std::to_string(seed.get<uint64_t>());
    h += "<tr><td>" + s + "</td>";
    const json& run = sweep["runs"].contains(s) ? sweep["runs"][s] : json::object();
    for (const auto& [key, caption] : headline_figures()) h += "<td>" + cell(run, key) + "</td>";
    h += "</tr>\n";
  }
  for (const char* stat : {"mean", "min", "max"}) {
    h += "<tr class=\"stat\"><td>" + std::string(stat) + "</td>";
    for (const auto& [key, caption] : headline_figures()) {
      json one = json::object();
      if (sweep["stats"].contains(key)) one[key] = sweep["stats"][key][stat];
      h += "<td>" + cell(one, key) + "</td>";
    }
    h += "</tr>\n";
  }
  return h + "</table>\n";
}

std::string curves_html(const std::string& sweep_dir, const json& sweep) {
  report::ChartSpec chart;
  chart.title = "PPO per iteration, every seed: teacher score (left) and gold accuracy (right)";
  chart.x_label = "iteration";
  chart.left_label = "teacher score";
  chart.right_label = "gold accuracy";
  chart.right_lo = 0;
  chart.right_hi = 1;
  for (const auto& seed : sweep["seeds"]) {
    const std::string s = std::to_string(seed.get<uint64_t>());
    const std::string metrics =
        seed_run_dir(sweep_dir, seed.get<uint64_t>()) + "/ppo/metrics.jsonl";
    chart.series.push_back({"seed " + s + " score", metric_series(metrics, "score/mean"), false});
    chart.series.push_back({"seed " + s + " gold", metric_series(metrics, "gold/accuracy"), true});
  }
  return report::svg_line_chart(chart, 760, 340);
}

// The machines the seeds ran on and when they finished (from the summaries' "machine" and
// "finished_at"): a sweep's figures hold for the machine they were measured on.
std::string machines_html(const json& sweep) {
  std::string h;
  for (const json& m : sweep["machines"])
    h += "<p>Machine: " + report::html_escape(m.value("cpu", std::string("unknown CPU"))) + ", " +
         std::to_string(m.value("cores", 0)) + " cores, OpenBLAS " +
         report::html_escape(m.value("openblas_core", std::string("?"))) + ".</p>\n";
  if (!sweep["finished"].empty())
    h += "<p>Finished " + report::html_escape(sweep["finished"][0].get<std::string>()) + " to " +
         report::html_escape(sweep["finished"][1].get<std::string>()) + " (UTC).</p>\n";
  return h;
}

std::string sweep_html(const std::string& sweep_dir, const json& sweep) {
  std::string h =
      "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Seed sweep " +
      report::html_escape(fs::path(sweep_dir).filename().string()) +
      "</title>\n<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
      "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
      "tr.stat td{font-weight:bold;background:#f4f4f4}</style></head><body>\n"
      "<h1>Seed sweep</h1>\n<p>" +
      std::to_string(sweep["seeds"].size()) + " seeds; one pipeline run each in seed-N/.";
  if (!sweep["missing"].empty()) h += " Not finished yet: " + sweep["missing"].dump() + ".";
  h += "</p>\n" + machines_html(sweep) + table_html(sweep) + curves_html(sweep_dir, sweep) +
       "</body></html>\n";
  return h;
}

}  // namespace

std::vector<uint64_t> parse_seeds(const std::string& text) {
  std::vector<uint64_t> seeds;
  std::set<uint64_t> seen;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = std::min(text.find(',', pos), text.size());
    const std::string part = text.substr(pos, comma - pos);
    const size_t dash = part.find('-');
    const uint64_t lo = parse_seed(part.substr(0, dash), text);
    const uint64_t hi = dash == std::string::npos ? lo : parse_seed(part.substr(dash + 1), text);
    if (hi < lo)
      throw UsageError("--seeds '" + text + "': range '" + part + "' ends below its start");
    if (hi - lo >= 1000) throw UsageError("--seeds '" + text + "': more than 1000 seeds");
    for (uint64_t s = lo; s <= hi; ++s) {
      if (!seen.insert(s).second)
        throw UsageError("--seeds '" + text + "': seed " + std::to_string(s) + " appears twice");
      seeds.push_back(s);
    }
    if (seeds.size() > 1000) throw UsageError("--seeds '" + text + "': more than 1000 seeds");
    pos = comma + 1;
  }
  return seeds;
}

std::string seed_run_dir(const std::string& sweep_dir, uint64_t seed) {
  return (fs::path(sweep_dir) / ("seed-" + std::to_string(seed))).string();
}

json sweep_stats(const std::vector<json>& summaries) {
  std::map<std::string, std::vector<double>> values;
  for (const json& s : summaries) {
    std::map<std::string, double> flat;
    flatten_numbers(s, "", &flat);
    for (const auto& [k, v] : flat) values[k].push_back(v);
  }
  json stats = json::object();
  for (const auto& [k, v] : values) {
    if (k == "schema_version" || k == "seed") continue;
    double sum = 0;
    for (double x : v) sum += x;
    stats[k] = {{"mean", sum / static_cast<double>(v.size())},
                {"min", *std::min_element(v.begin(), v.end())},
                {"max", *std::max_element(v.begin(), v.end())},
                {"n", v.size()}};
  }
  return stats;
}

json write_sweep_report(const std::string& sweep_dir, const std::vector<uint64_t>& seeds) {
  json sweep = {{"schema_version", 1},
                {"seeds", seeds},
                {"runs", json::object()},
                {"missing", json::array()}};
  std::vector<json> summaries;
  for (uint64_t seed : seeds) {
    const std::string path = seed_run_dir(sweep_dir, seed) + "/summary.json";
    if (!file_exists(path)) {
      sweep["missing"].push_back(seed);
      continue;
    }
    json s = json::parse(read_file(path), nullptr, /*allow_exceptions=*/false);
    if (!s.is_object()) throw Error(path + ": expected a JSON object (a pipeline summary)");
    sweep["runs"][std::to_string(seed)] = s;
    summaries.push_back(s);
  }
  sweep["stats"] = sweep_stats(summaries);
  sweep["machines"] = json::array();  // distinct "machine" objects of the summaries
  std::vector<std::string> finished;
  for (const json& s : summaries) {
    if (s.contains("machine") && s["machine"].is_object() &&
        std::find(sweep["machines"].begin(), sweep["machines"].end(), s["machine"]) ==
            sweep["machines"].end())
      sweep["machines"].push_back(s["machine"]);
    if (s.contains("finished_at") && s["finished_at"].is_string())
      finished.push_back(s["finished_at"].get<std::string>());
  }
  std::sort(finished.begin(), finished.end());  // ISO 8601 UTC: text order is time order
  sweep["finished"] = finished.empty() ? json::array() : json{finished.front(), finished.back()};
  write_file_atomic((fs::path(sweep_dir) / "sweep.json").string(), sweep.dump(1) + "\n");
  write_file_atomic((fs::path(sweep_dir) / "sweep.html").string(), sweep_html(sweep_dir, sweep));
  return sweep;
}

}  // namespace rlhf::pipelines
