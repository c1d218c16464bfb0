#include "annotation/teacher.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <numeric>

#include "common/error.h"

namespace rlhf::annotation {

namespace {

struct Registry {
  std::mutex mu;
  std::map<std::string, TeacherFactory> factories;
  Registry() {
    factories["length"] = [] { return std::make_unique<LengthTeacher>(); };
  }
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

bool register_teacher(const std::string& name, TeacherFactory factory) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.factories[name] = std::move(factory);
  return true;
}

std::unique_ptr<Teacher> make_teacher(const std::string& name) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  auto it = r.factories.find(name);
  if (it == r.factories.end()) {
    std::string known;
    for (const auto& [n, f] : r.factories) known += (known.empty() ? "" : ", ") + n;
    throw Error("unknown teacher '" + name + "' (known: " + known + ")");
  }
  return it->second();
}

std::vector<std::string> teacher_names() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<std::string> names;
  for (const auto& [n, f] : r.factories) names.push_back(n);
  return names;
}

std::vector<std::vector<int>> LengthTeacher::rank(const std::string&,
                                                  const std::vector<std::string>& answers,
                                                  std::mt19937_64&) {
  std::vector<int> order(answers.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return answers[a].size() < answers[b].size(); });
  std::vector<std::vector<int>> groups;
  for (size_t i = 0; i < order.size(); ++i) {
    if (i > 0 && answers[order[i]].size() == answers[order[i - 1]].size()) {
      groups.back().push_back(order[i]);
    } else {
      groups.push_back({order[i]});
    }
  }
  return groups;
}

}  // namespace rlhf::annotation
