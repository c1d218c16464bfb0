#include "annotation/import_export.h"

#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "annotation/frame.h"
#include "common/error.h"
#include "common/files.h"
#include "reward/comparisons.h"

namespace rlhf::annotation {

using nlohmann::json;

namespace {

// Calls fn(line_number, parsed_object) for each non-blank line.
template <typename Fn>
void for_each_json_line(const std::string& path, Fn fn) {
  std::string data = read_file_maybe_gzip(path);
  std::istringstream in(data);
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const std::exception& e) {
      throw Error(path + ":" + std::to_string(lineno) + ": not valid JSON: " + e.what());
    }
    if (!j.is_object())
      throw Error(path + ":" + std::to_string(lineno) + ": expected a JSON object");
    try {
      fn(lineno, j);
    } catch (const Error& e) {
      throw Error(path + ":" + std::to_string(lineno) + ": " + e.what());
    }
  }
}

std::string string_field(const json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end()) throw Error(std::string("missing field \"") + name + "\"");
  if (!it->is_string()) throw Error(std::string("field \"") + name + "\" must be a string");
  return it->get<std::string>();
}

}  // namespace

void check_task_fits_frame(const TaskInput& task) {
  proto::Task t;  // as the server sends it, with the widest task id and lease field
  t.set_task_id(std::numeric_limits<int64_t>::max());
  t.set_prompt(task.prompt);
  for (const auto& a : task.answers) t.add_answers(a);
  t.set_lease_seconds_left(1.0);
  constexpr size_t kEnvelope = 64;  // the Response around it (oneof, SubmitOk.next_task)
  const size_t bytes = t.ByteSizeLong() + kEnvelope;
  if (bytes <= kMaxFrameBytes) return;
  size_t answer_bytes = 0;
  for (const auto& a : task.answers) answer_bytes += a.size();
  throw Error("task too large to send to annotators: " + std::to_string(bytes) +
              " bytes in a reply, the frame limit is " + std::to_string(kMaxFrameBytes) +
              " (prompt " + std::to_string(task.prompt.size()) + " bytes, answers " +
              std::to_string(answer_bytes) + " bytes); shorten the prompt or the answers");
}

int64_t add_tasks_jsonl(Store& store, const std::string& path, int overlap) {
  if (overlap < 1) throw Error("--overlap must be >= 1, got " + std::to_string(overlap));
  Store::Transaction txn(store);
  int64_t added = 0;
  for_each_json_line(path, [&](int64_t, const json& j) {
    TaskInput t;
    t.prompt = string_field(j, "prompt");
    auto a = j.find("answers");
    if (a == j.end() || !a->is_array()) throw Error("field \"answers\" must be a list of strings");
    for (const auto& x : *a) {
      if (!x.is_string()) throw Error("field \"answers\" must be a list of strings");
      t.answers.push_back(x.get<std::string>());
    }
    if (j.contains("model")) t.model = string_field(j, "model");
    if (j.contains("sampling")) t.sampling_json = j["sampling"].dump();
    t.source = "add-tasks";
    check_task_fits_frame(t);
    int o = overlap;
    if (j.contains("overlap")) {
      if (!j["overlap"].is_number_integer()) throw Error("field \"overlap\" must be an integer");
      o = j["overlap"].get<int>();
    }
    store.add_task(t, o);
    ++added;
  });
  txn.commit();
  return added;
}

ImportResult import_preferences(Store& store, const std::string& path, const std::string& format) {
  if (format != "pairs" && format != "hh")
    throw Error("--format: expected pairs or hh, got '" + format + "'");
  Store::Transaction txn(store);
  ImportResult result;
  std::map<std::string, int64_t> authors;
  auto author = [&](const std::string& name) {
    auto it = authors.find(name);
    if (it != authors.end()) return it->second;
    int64_t id = store.import_annotator(name);
    authors[name] = id;
    return id;
  };
  for_each_json_line(path, [&](int64_t, const json& j) {
    TaskInput t;
    std::string who;
    std::string chosen, rejected;
    if (format == "pairs") {
      t.prompt = string_field(j, "prompt");
      chosen = string_field(j, "chosen");
      rejected = string_field(j, "rejected");
      who = j.contains("annotator") ? string_field(j, "annotator") : "import:pairs";
    } else {
      if (!reward::split_hh_dialogues(string_field(j, "chosen"), string_field(j, "rejected"),
                                      &t.prompt, &chosen, &rejected)) {
        ++result.skipped;
        return;
      }
      who = "import:hh";
    }
    if (chosen == rejected) {  // no preference to learn from
      ++result.skipped;
      return;
    }
    t.answers = {chosen, rejected};
    t.source = "import:" + format;
    check_task_fits_frame(t);
    int64_t task_id = store.add_task(t, 1);
    RankingRecord r;
    r.task_id = task_id;
    r.annotator_id = author(who);
    r.groups = {{0}, {1}};
    store.insert_ranking(r);
    ++result.imported;
  });
  txn.commit();
  return result;
}

int64_t export_jsonl(Store& store, const std::string& format, std::ostream& out) {
  if (format != "pairs" && format != "rankings")
    throw Error("--format: expected pairs or rankings, got '" + format + "'");
  std::map<int64_t, TaskView> tasks;
  auto task = [&](int64_t id) -> const TaskView& {
    auto it = tasks.find(id);
    if (it != tasks.end()) return it->second;
    auto t = store.task(id);
    if (!t) throw Error("ranking refers to missing task " + std::to_string(id));
    return tasks.emplace(id, std::move(*t)).first->second;
  };
  int64_t lines = 0;
  for (const auto& r : store.all_rankings()) {
    const TaskView& t = task(r.task_id);
    if (format == "rankings") {
      json j = {{"schema_version", kExportSchemaVersion},
                {"task_id", r.task_id},
                {"annotator", r.annotator},
                {"prompt", t.prompt},
                {"answers", t.answers},
                {"groups", r.groups},
                {"none_acceptable", r.none_acceptable},
                {"skipped", r.skipped},
                {"flag", r.flag},
                {"seconds", r.seconds},
                {"created_at", r.created_at}};
      out << j.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
      ++lines;
    } else {
      if (!r.counts() || r.none_acceptable) continue;
      reward::Ranking ranking{t.prompt, "", {}};
      for (const auto& group : r.groups) {
        ranking.tiers.emplace_back();
        for (int index : group) ranking.tiers.back().push_back(t.answers.at(index));
      }
      for (const auto& c : reward::ranking_to_comparisons(ranking)) {
        json j = {{"schema_version", kExportSchemaVersion},
                  {"prompt", c.prompt},
                  {"chosen", c.chosen},
                  {"rejected", c.rejected},
                  {"task_id", r.task_id},
                  {"annotator", r.annotator}};
        out << j.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
        ++lines;
      }
    }
  }
  if (!out) throw Error("writing the export failed");
  return lines;
}

}  // namespace rlhf::annotation
