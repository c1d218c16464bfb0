#include "annotation/import_export.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>
#include <vector>

#include "annotation/frame.h"
#include "common/error.h"
#include "common/files.h"
#include "common/messages.h"
#include "reward/comparisons.h"

namespace rlhf::annotation {

using nlohmann::json;

namespace {

// Calls fn(line_number, parsed_object) for each non-blank line of `data` (read from `path`).
template <typename Json = json, typename Fn>
void for_each_json_line(const std::string& path, const std::string& data, Fn fn) {
  std::istringstream in(data);
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    Json j;
    try {
      j = Json::parse(line);
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

template <typename Json>
std::string string_field(const Json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end()) throw Error(std::string("missing field \"") + name + "\"");
  if (!it->is_string()) throw Error(std::string("field \"") + name + "\" must be a string");
  return it->template get<std::string>();
}

// A conversation prompt: the messages so far, ending with a user turn (the answers are the
// assistant's replies to it); annotators see its text without template markup.
void conversation_prompt(const nlohmann::ordered_json& m, TaskInput* t, std::string* json_text) {
  check_messages(m, "field \"messages\"");
  if (m.back()["role"] != "user")
    throw Error("field \"messages\" must end with a user turn (the answers reply to it), got " +
                m.back()["role"].get<std::string>());
  t->prompt = conversation_text(m);
  *json_text = m.dump();
}

// One exported comparison as conversations (format "messages"): the prompt's messages (a plain
// text prompt becomes one user turn) and each answer as one assistant turn; keys in the order
// they were written.
std::string messages_pair_line(const TaskView& t, const reward::Comparison& c,
                               const RankingRecord& r) {
  using ojson = nlohmann::ordered_json;
  const ojson prompt = t.messages_json.empty()
                           ? ojson::array({{{"role", "user"}, {"content", t.prompt}}})
                           : ojson::parse(t.messages_json);
  auto turn = [](const std::string& text) {
    return ojson::array({{{"role", "assistant"}, {"content", text}}});
  };
  const ojson j = {
      {"schema_version", kExportSchemaVersion}, {"prompt", prompt},     {"chosen", turn(c.chosen)},
      {"rejected", turn(c.rejected)},           {"task_id", r.task_id}, {"annotator", r.annotator}};
  return j.dump(-1, ' ', false, ojson::error_handler_t::replace);
}

}  // namespace

void check_task_fits_frame(const TaskInput& task) {
  const size_t bytes = task_reply_bytes(task.prompt, task.answers);
  if (bytes <= kMaxFrameBytes) return;
  size_t answer_bytes = 0;
  for (const auto& a : task.answers) answer_bytes += a.size();
  throw Error("task too large to send to annotators: " + std::to_string(bytes) +
              " bytes in a reply, the frame limit is " + std::to_string(kMaxFrameBytes) +
              " (prompt " + std::to_string(task.prompt.size()) + " bytes, answers " +
              std::to_string(answer_bytes) + " bytes); shorten the prompt or the answers");
}

namespace {

// Writes items [0, n) with write(i) in transactions of at most chunk.max_rows items or
// chunk.max_seconds each, starting after the items an interrupted run with the same key
// committed. Each transaction also records how far it got (Store::set_import_progress), so the
// resume point always matches what is stored; the last one removes the record. Returns the
// index it started from.
int64_t write_in_chunks(Store& store, const std::string& key, int64_t n, const ChunkOptions& chunk,
                        const std::function<void(int64_t)>& write) {
  const int64_t max_rows = std::max<int64_t>(1, chunk.max_rows);
  const int64_t resumed_from = std::min(store.import_progress(key), n);
  int64_t i = resumed_from;
  while (i < n) {
    Store::Transaction txn(store);
    const auto start = std::chrono::steady_clock::now();
    int64_t rows = 0;
    do {
      write(i++);
      ++rows;
    } while (i < n && rows < max_rows &&
             std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() <
                 chunk.max_seconds);
    store.set_import_progress(key, i < n ? i : 0);
    txn.commit();
    if (chunk.after_commit) chunk.after_commit(i);
  }
  return resumed_from;
}

// The resume key: what was run on which bytes.
std::string import_key(const std::string& command, const std::string& data) {
  return command + " sha256:" + sha256_hex(data);
}

}  // namespace

int64_t add_tasks_jsonl(Store& store, const std::string& path, int overlap,
                        const ChunkOptions& chunk) {
  if (overlap < 1) throw Error("--overlap must be >= 1, got " + std::to_string(overlap));
  const std::string data = read_file_maybe_gzip(path);
  struct Item {
    TaskInput task;
    int overlap;
    std::string messages_json;
  };
  std::vector<Item> tasks;               // every line checked before anything is written
  using ojson = nlohmann::ordered_json;  // a conversation keeps its keys' order
  for_each_json_line<ojson>(path, data, [&](int64_t, const ojson& j) {
    TaskInput t;
    std::string messages_json;
    if (j.contains("messages")) {
      if (j.contains("prompt")) throw Error("give \"prompt\" (text) or \"messages\", not both");
      conversation_prompt(j["messages"], &t, &messages_json);
    } else {
      t.prompt = string_field(j, "prompt");
    }
    auto a = j.find("answers");
    if (a == j.end() || !a->is_array()) throw Error("field \"answers\" must be a list of strings");
    for (const auto& x : *a) {
      if (!x.is_string()) throw Error("field \"answers\" must be a list of strings");
      t.answers.push_back(x.get<std::string>());
    }
    if (t.answers.size() < 2 || t.answers.size() > 26)
      throw Error("a task needs 2..26 answers, got " + std::to_string(t.answers.size()));
    if (j.contains("model")) t.model = string_field(j, "model");
    if (j.contains("sampling")) t.sampling_json = j["sampling"].dump();
    t.source = "add-tasks";
    check_task_fits_frame(t);
    int o = overlap;
    if (j.contains("overlap")) {
      if (!j["overlap"].is_number_integer()) throw Error("field \"overlap\" must be an integer");
      o = j["overlap"].get<int>();
      if (o < 1) throw Error("field \"overlap\" must be >= 1, got " + std::to_string(o));
    }
    tasks.push_back({std::move(t), o, std::move(messages_json)});
  });
  const int64_t n = static_cast<int64_t>(tasks.size());
  const int64_t resumed_from = write_in_chunks(
      store, import_key("add-tasks overlap=" + std::to_string(overlap), data), n, chunk,
      [&](int64_t i) { store.add_task(tasks[i].task, tasks[i].overlap, tasks[i].messages_json); });
  return n - resumed_from;
}

ImportResult import_preferences(Store& store, const std::string& path, const std::string& format,
                                const ChunkOptions& chunk) {
  if (format != "pairs" && format != "hh")
    throw Error("--format: expected pairs or hh, got '" + format + "'");
  const std::string data = read_file_maybe_gzip(path);
  ImportResult result;
  struct Item {
    TaskInput task;
    std::string author;
  };
  std::vector<Item> items;  // every line checked before anything is written
  for_each_json_line(path, data, [&](int64_t, const json& j) {
    Item item;
    std::string chosen, rejected;
    if (format == "pairs") {
      item.task.prompt = string_field(j, "prompt");
      chosen = string_field(j, "chosen");
      rejected = string_field(j, "rejected");
      item.author = j.contains("annotator") ? string_field(j, "annotator") : "import:pairs";
    } else {
      if (!reward::split_hh_dialogues(string_field(j, "chosen"), string_field(j, "rejected"),
                                      &item.task.prompt, &chosen, &rejected)) {
        ++result.skipped;
        return;
      }
      item.author = "import:hh";
    }
    if (chosen == rejected) {  // no preference to learn from
      ++result.skipped;
      return;
    }
    item.task.answers = {chosen, rejected};
    item.task.source = "import:" + format;
    check_task_fits_frame(item.task);
    items.push_back(std::move(item));
  });
  std::map<std::string, int64_t> authors;
  const int64_t n = static_cast<int64_t>(items.size());
  result.resumed_from =
      write_in_chunks(store, import_key("import format=" + format, data), n, chunk, [&](int64_t i) {
        auto it = authors.find(items[i].author);
        if (it == authors.end())
          it = authors.emplace(items[i].author, store.import_annotator(items[i].author)).first;
        RankingRecord r;
        r.task_id = store.add_task(items[i].task, 1);
        r.annotator_id = it->second;
        r.groups = {{0}, {1}};
        store.insert_ranking(r);
      });
  result.imported = n - result.resumed_from;
  return result;
}

int64_t export_jsonl(Store& store, const std::string& format, std::ostream& out) {
  if (format != "pairs" && format != "rankings" && format != "messages")
    throw Error("--format: expected pairs, rankings or messages, got '" + format + "'");
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
      json j = {
          {"schema_version", kExportSchemaVersion},
          {"task_id", r.task_id},
          {"annotator", r.annotator},
          {"prompt", t.prompt},
          {"answers", t.answers},
          {"messages", t.messages_json.empty() ? json(nullptr) : json::parse(t.messages_json)},
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
        if (format == "messages") {
          out << messages_pair_line(t, c, r) << '\n';
          ++lines;
          continue;
        }
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
