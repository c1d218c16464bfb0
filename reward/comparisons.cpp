#include "reward/comparisons.h"

#include <algorithm>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/files.h"

namespace rlhf::reward {

namespace {

// Calls fn(line_number, line) for every line of the file (1-based).
template <typename Fn>
void for_each_line(const std::string& path, Fn fn) {
  std::string text = read_file_maybe_gzip(path);
  int64_t line_no = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string::npos) nl = text.size();
    ++line_no;
    std::string line = text.substr(start, nl - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    fn(line_no, line);
    start = nl + 1;
  }
}

bool is_blank(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isspace(c); });
}

nlohmann::json parse_object(const std::string& path, int64_t line_no, const std::string& line) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const std::exception& e) {
    throw Error(path + ":" + std::to_string(line_no) + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.is_object())
    throw Error(path + ":" + std::to_string(line_no) + ": expected a JSON object");
  return j;
}

std::string string_field(const nlohmann::json& j, const char* name, const std::string& path,
                         int64_t line_no) {
  auto it = j.find(name);
  if (it == j.end())
    throw Error(path + ":" + std::to_string(line_no) + ": missing field \"" + name + "\"");
  if (!it->is_string())
    throw Error(path + ":" + std::to_string(line_no) + ": field \"" + name +
                "\" must be a string, got " + it->type_name() +
                (it->is_array() ? " (for conversations set format: \"messages\")" : ""));
  return it->get<std::string>();
}

using Messages = nlohmann::ordered_json;

// Field `name` of `j` as a checked, non-empty message list; `where` is "<path>:<line>".
Messages message_list(const nlohmann::ordered_json& j, const char* name, const std::string& where) {
  auto it = j.find(name);
  const std::string field = std::string("field \"") + name + "\"";
  if (it == j.end()) throw Error(where + ": missing " + field);
  check_messages(*it, where + ": " + field);
  return *it;
}

// Splits the two-conversation shape into the shared prompt and the two continuations; false
// (outputs untouched) when the conversations are equal (a tie).
bool split_conversations(const Messages& chosen, const Messages& rejected, const std::string& where,
                         Messages* prompt, Messages* chosen_tail, Messages* rejected_tail) {
  size_t k = 0;
  while (k < chosen.size() && k < rejected.size() && chosen[k] == rejected[k]) ++k;
  if (k == 0)
    throw Error(where +
                ": \"chosen\" and \"rejected\" share no leading message (expected the "
                "same conversation up to the answers)");
  if (k == chosen.size() && k == rejected.size()) return false;
  auto assistant_at = [&](const Messages& m) {
    return k < m.size() && m[k]["role"] == "assistant";
  };
  if (!assistant_at(chosen) || !assistant_at(rejected))
    throw Error(where + ": the messages shared by \"chosen\" and \"rejected\" (" +
                std::to_string(k) +
                ") must be followed by an assistant turn on both sides (the answers)");
  *prompt = Messages(chosen.begin(), chosen.begin() + static_cast<std::ptrdiff_t>(k));
  *chosen_tail = Messages(chosen.begin() + static_cast<std::ptrdiff_t>(k), chosen.end());
  *rejected_tail = Messages(rejected.begin() + static_cast<std::ptrdiff_t>(k), rejected.end());
  return true;
}

// render(prompt + tail) with the prompt rendering `prompt_text` removed from its front.
std::string render_answer(const ChatRenderer& render, const Messages& prompt, const Messages& tail,
                          const std::string& prompt_text, const char* side,
                          const std::string& where) {
  Messages full = prompt;
  for (const auto& m : tail) full.push_back(m);
  std::string text = render(full, false);
  if (text.compare(0, prompt_text.size(), prompt_text) != 0)
    throw Error(where +
                ": the chat template is not prefix-consistent: the prompt's rendering "
                "(add_generation_prompt=true) is not the start of the \"" +
                side + "\" conversation's rendering");
  return text.substr(prompt_text.size());
}

// One line of read_messages_jsonl; false for a tie.
bool messages_comparison(const nlohmann::ordered_json& j, const ChatRenderer& render,
                         const std::string& where, Comparison* c) {
  Messages prompt, chosen, rejected;
  if (j.contains("prompt")) {
    prompt = message_list(j, "prompt", where);
    chosen = message_list(j, "chosen", where);
    rejected = message_list(j, "rejected", where);
    for (const char* side : {"chosen", "rejected"})
      if (j[side][0]["role"] != "assistant")
        throw Error(where + ": field \"" + side +
                    "\" must start with an assistant message (the answer to \"prompt\")");
  } else {
    const Messages whole_chosen = message_list(j, "chosen", where);  // checked in field order
    const Messages whole_rejected = message_list(j, "rejected", where);
    if (!split_conversations(whole_chosen, whole_rejected, where, &prompt, &chosen, &rejected))
      return false;
  }
  try {
    c->prompt = render(prompt, true);
    c->chosen = render_answer(render, prompt, chosen, c->prompt, "chosen", where);
    c->rejected = render_answer(render, prompt, rejected, c->prompt, "rejected", where);
  } catch (const Error& e) {
    const std::string msg = e.what();
    if (msg.rfind(where + ": ", 0) == 0) throw;
    throw Error(where + ": rendering the chat template: " + msg);
  }
  c->group = "prompt:" + c->prompt;
  return c->chosen != c->rejected;
}

}  // namespace

std::vector<Comparison> ranking_to_comparisons(const Ranking& ranking) {
  std::vector<Comparison> out;
  for (size_t i = 0; i < ranking.tiers.size(); ++i)
    for (size_t j = i + 1; j < ranking.tiers.size(); ++j)
      for (const auto& better : ranking.tiers[i])
        for (const auto& worse : ranking.tiers[j]) {
          if (better == worse) continue;  // the same text on both sides carries no preference
          out.push_back({ranking.prompt, better, worse,
                         ranking.group.empty() ? ranking.prompt : ranking.group, 0});
        }
  return out;
}

std::vector<Comparison> read_pairs_jsonl(const std::string& path) {
  std::vector<Comparison> out;
  for_each_line(path, [&](int64_t line_no, const std::string& line) {
    if (is_blank(line)) return;
    nlohmann::json j = parse_object(path, line_no, line);
    auto sv = j.find("schema_version");
    if (sv != j.end() && !(sv->is_number_integer() && sv->get<int64_t>() == 1))
      throw Error(path + ":" + std::to_string(line_no) + ": unsupported schema_version " +
                  sv->dump() + " (expected 1)");
    Comparison c;
    c.prompt = string_field(j, "prompt", path, line_no);
    c.chosen = string_field(j, "chosen", path, line_no);
    c.rejected = string_field(j, "rejected", path, line_no);
    c.line = line_no;
    auto task = j.find("task_id");
    if (task != j.end() && !task->is_null())
      c.group = "task:" + (task->is_string() ? task->get<std::string>() : task->dump());
    else
      c.group = "prompt:" + c.prompt;
    if (c.chosen == c.rejected) return;  // a tie: no preference to learn
    out.push_back(std::move(c));
  });
  return out;
}

bool split_hh_dialogues(const std::string& chosen_dialogue, const std::string& rejected_dialogue,
                        std::string* prompt, std::string* chosen, std::string* rejected) {
  static const std::string kAssistant = "\n\nAssistant:";
  size_t c = chosen_dialogue.rfind(kAssistant), r = rejected_dialogue.rfind(kAssistant);
  if (c == std::string::npos || c != r) return false;
  if (chosen_dialogue.compare(0, c, rejected_dialogue, 0, r) != 0) return false;
  auto strip = [](const std::string& s) {
    size_t b = s.find_first_not_of(" \n");
    size_t e = s.find_last_not_of(" \n");
    return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
  };
  const size_t cut = c + kAssistant.size();
  *prompt = chosen_dialogue.substr(0, cut);
  *chosen = strip(chosen_dialogue.substr(cut));
  *rejected = strip(rejected_dialogue.substr(cut));
  return true;
}

std::vector<Comparison> read_hh_jsonl(const std::string& path, int64_t* skipped) {
  std::vector<Comparison> out;
  int64_t left_out = 0;
  for_each_line(path, [&](int64_t line_no, const std::string& line) {
    if (is_blank(line)) return;
    nlohmann::json j = parse_object(path, line_no, line);
    Comparison c;
    if (!split_hh_dialogues(string_field(j, "chosen", path, line_no),
                            string_field(j, "rejected", path, line_no), &c.prompt, &c.chosen,
                            &c.rejected) ||
        c.chosen == c.rejected) {
      ++left_out;
      return;
    }
    c.line = line_no;
    c.group = "prompt:" + c.prompt;
    out.push_back(std::move(c));
  });
  if (skipped) *skipped = left_out;
  return out;
}

std::vector<Comparison> read_messages_jsonl(const std::string& path, const ChatRenderer& render) {
  if (!render)
    throw Error(path + ": format \"messages\" needs a chat template (give a tokenizer or model)");
  std::vector<Comparison> out;
  for_each_line(path, [&](int64_t line_no, const std::string& line) {
    if (is_blank(line)) return;
    const std::string where = path + ":" + std::to_string(line_no);
    nlohmann::ordered_json j;
    try {
      j = nlohmann::ordered_json::parse(line);
    } catch (const std::exception& e) {
      throw Error(where + ": not valid JSON (" + e.what() + ")");
    }
    if (!j.is_object()) throw Error(where + ": expected a JSON object");
    Comparison c;
    c.line = line_no;
    if (messages_comparison(j, render, where, &c)) out.push_back(std::move(c));
  });
  return out;
}

std::vector<Comparison> read_comparisons(const std::string& path, const std::string& format,
                                         const ChatRenderer& render) {
  if (format.empty() || format == "pairs") return read_pairs_jsonl(path);
  if (format == "hh") return read_hh_jsonl(path);
  if (format == "messages") return read_messages_jsonl(path, render);
  throw Error("unknown comparison format '" + format + "' for " + path +
              " (expected \"pairs\", \"hh\" or \"messages\")");
}

namespace {

// Groups in order of first appearance: group -> indices.
std::vector<std::vector<size_t>> group_indices(const std::vector<Comparison>& cs) {
  std::map<std::string, size_t> slot;
  std::vector<std::vector<size_t>> groups;
  for (size_t i = 0; i < cs.size(); ++i) {
    auto [it, inserted] = slot.emplace(cs[i].group, groups.size());
    if (inserted) groups.emplace_back();
    groups[it->second].push_back(i);
  }
  return groups;
}

}  // namespace

void split_heldout(const std::vector<Comparison>& all, double fraction, uint64_t seed,
                   std::vector<Comparison>* train, std::vector<Comparison>* heldout) {
  auto groups = group_indices(all);
  std::vector<size_t> order(groups.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  size_t n_held = static_cast<size_t>(fraction * static_cast<double>(groups.size()) + 0.5);
  if (fraction > 0 && n_held == 0 && groups.size() > 1) n_held = 1;
  std::vector<char> is_held(all.size(), 0);
  for (size_t k = 0; k < n_held && k < order.size(); ++k)
    for (size_t i : groups[order[k]]) is_held[i] = 1;
  train->clear();
  heldout->clear();
  for (size_t i = 0; i < all.size(); ++i) (is_held[i] ? heldout : train)->push_back(all[i]);
}

std::vector<std::vector<size_t>> make_batches(const std::vector<Comparison>& comparisons,
                                              int batch_pairs, uint64_t seed) {
  auto groups = group_indices(comparisons);
  if (seed != UINT64_MAX) {
    std::mt19937_64 rng(seed);
    std::shuffle(groups.begin(), groups.end(), rng);
  }
  std::vector<std::vector<size_t>> batches;
  std::vector<size_t> cur;
  for (const auto& g : groups) {
    cur.insert(cur.end(), g.begin(), g.end());
    if (static_cast<int>(cur.size()) >= std::max(1, batch_pairs)) {
      batches.push_back(std::move(cur));
      cur.clear();
    }
  }
  if (!cur.empty()) batches.push_back(std::move(cur));
  return batches;
}

int64_t write_text_corpus(const std::vector<Comparison>& comparisons, const std::string& path) {
  std::set<std::string> seen;
  std::string out;
  int64_t lines = 0;
  auto add = [&](const std::string& text) {
    if (text.empty() || !seen.insert(text).second) return;
    std::string line = text;
    for (char& ch : line)
      if (ch == '\n' || ch == '\r' || ch == '\t') ch = ' ';
    out += line;
    out += '\n';
    ++lines;
  };
  for (const auto& c : comparisons) {
    add(c.prompt);
    add(c.chosen);
    add(c.rejected);
  }
  write_file_atomic(path, out);
  return lines;
}

}  // namespace rlhf::reward
