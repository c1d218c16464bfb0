#include "pipelines/quickstart_task.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <numeric>
#include <regex>
#include <set>
#include <sstream>
#include <tuple>

#include "common/error.h"
#include "common/files.h"

namespace rlhf::quickstart {

namespace {

const std::vector<std::string> kBoys = {"Tom", "Sam", "Ben", "Max", "Leo", "Jack", "Omar", "Ravi"};
const std::vector<std::string> kGirls = {"Anna", "Mia",  "Lily", "Emma",
                                         "Sara", "Kate", "Nora", "Zoe"};
const std::vector<std::string> kFood = {"apples",  "pears",   "plums",  "cookies",
                                        "oranges", "bananas", "muffins"};
const std::vector<std::string> kThings = {"marbles", "pencils", "stickers", "books",
                                          "cards",   "coins",   "shells",   "balloons"};

// Uniform integer in [0, n) by rejection, identical on every standard library (unlike
// std::uniform_int_distribution, whose algorithm is implementation-defined).
uint64_t uniform(std::mt19937_64& rng, uint64_t n) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t x;
  do x = rng();
  while (x >= limit);
  return x % n;
}
int uniform_in(std::mt19937_64& rng, int lo, int hi) {  // inclusive
  return lo + static_cast<int>(uniform(rng, static_cast<uint64_t>(hi - lo + 1)));
}
double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string he(const Problem& p) { return p.female ? "she" : "he"; }
std::string He(const Problem& p) { return p.female ? "She" : "He"; }
std::string him(const Problem& p) { return p.female ? "her" : "him"; }

std::string singular(const std::string& plural) {
  return plural.size() > 1 && plural.back() == 's' ? plural.substr(0, plural.size() - 1) : plural;
}

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

int word_count(const std::string& s) {
  std::istringstream in(s);
  std::string w;
  int n = 0;
  while (in >> w) ++n;
  return n;
}

Problem draw_problem(std::mt19937_64& rng, int max_operand) {
  Problem p;
  p.kind = static_cast<Template>(uniform(rng, kNumTemplates));
  p.female = uniform(rng, 2) == 1;
  const auto& names = p.female ? kGirls : kBoys;
  p.name = names[uniform(rng, names.size())];
  if (p.kind == Template::kEats) {
    p.object = kFood[uniform(rng, kFood.size())];
  } else {
    size_t i = uniform(rng, kFood.size() + kThings.size());
    p.object = i < kFood.size() ? kFood[i] : kThings[i - kFood.size()];
  }
  if (p.kind == Template::kGets || p.kind == Template::kGives) {
    std::vector<std::string> others;
    for (const auto* list : {&kBoys, &kGirls})
      for (const auto& n : *list)
        if (n != p.name) others.push_back(n);
    p.other = others[uniform(rng, others.size())];
  }
  if (p.additive()) {
    p.a = uniform_in(rng, 2, max_operand);
    p.b = uniform_in(rng, 1, max_operand);
  } else {
    p.a = uniform_in(rng, 3, max_operand);
    p.b = uniform_in(rng, 1, p.a - 1);
  }
  return p;
}

}  // namespace

const char* template_name(Template t) {
  switch (t) {
    case Template::kBuys:
      return "buys";
    case Template::kFinds:
      return "finds";
    case Template::kGets:
      return "gets";
    case Template::kLoses:
      return "loses";
    case Template::kGives:
      return "gives";
    case Template::kEats:
      return "eats";
  }
  return "?";
}

bool Problem::additive() const {
  return kind == Template::kBuys || kind == Template::kFinds || kind == Template::kGets;
}

int Problem::gold() const { return additive() ? a + b : a - b; }

std::string Problem::prompt() const {
  const std::string A = std::to_string(a), B = std::to_string(b);
  const std::string tail_now = " How many " + object + " does " + he(*this) + " have now?";
  const std::string tail_left = " How many " + object + " does " + he(*this) + " have left?";
  switch (kind) {
    case Template::kBuys:
      return name + " has " + A + " " + object + " and buys " + B + " more." + tail_now;
    case Template::kFinds:
      return name + " has " + A + " " + object + ". " + He(*this) + " finds " + B + " more." +
             tail_now;
    case Template::kGets:
      return name + " has " + A + " " + object + ". " + other + " gives " + him(*this) + " " + B +
             " more." + tail_now;
    case Template::kLoses:
      return name + " has " + A + " " + object + " and loses " + B + " of them." + tail_left;
    case Template::kGives:
      return name + " has " + A + " " + object + " and gives " + B + " to " + other + "." +
             tail_left;
    case Template::kEats:
      return name + " has " + A + " " + object + " and eats " + B + " of them." + tail_left;
  }
  return "";
}

std::string answer_text(const Problem& p, int n) {
  std::string s =
      He(p) + " has " + std::to_string(n) + " " + (n == 1 ? singular(p.object) : p.object);
  return s + (p.additive() ? "." : " left.");
}

Split split_of(const Problem& p) {
  return fnv1a(p.prompt()) % 1000 < 100 ? Split::kHeldOut : Split::kTrain;
}

std::vector<Problem> generate_problems(Split split, int n, uint64_t seed, int max_operand) {
  if (max_operand < kMinOperandLimit || max_operand > kMaxOperandLimit)
    throw Error("quickstart task: max_operand " + std::to_string(max_operand) + " is outside " +
                std::to_string(kMinOperandLimit) + ".." + std::to_string(kMaxOperandLimit));
  // Distinct streams for the two splits, so train seed 1 and held-out seed 1 differ.
  std::mt19937_64 rng(seed * 2 + (split == Split::kHeldOut ? 1 : 0));
  std::vector<Problem> out;
  std::set<std::string> seen;
  const int64_t max_attempts = 1000 * static_cast<int64_t>(n) + 100000;
  for (int64_t attempt = 0; static_cast<int>(out.size()) < n; ++attempt) {
    if (attempt >= max_attempts)
      throw Error("quickstart task: could not draw " + std::to_string(n) + " distinct " +
                  (split == Split::kHeldOut ? "held-out" : "train") + " problems (got " +
                  std::to_string(out.size()) + ")");
    Problem p = draw_problem(rng, max_operand);
    if (split_of(p) != split) continue;
    if (!seen.insert(p.prompt()).second) continue;
    out.push_back(std::move(p));
  }
  return out;
}

std::optional<Problem> parse_prompt(const std::string& text) {
  // name, a, object, [He], [other], b, [other], object, pronoun, now|left
  static const std::regex re(
      R"(^([A-Z][a-z]+) has (\d+) ([a-z]+)(?: and (buys|loses|eats|gives) (\d+) (more|of them|to ([A-Z][a-z]+))|\. (?:(?:He|She) finds (\d+) more|([A-Z][a-z]+) gives (?:him|her) (\d+) more))\. How many ([a-z]+) does (he|she) have (now|left)\?$)");
  std::smatch m;
  std::string t = trim(text);
  if (!std::regex_match(t, m, re)) return std::nullopt;
  Problem p;
  p.name = m[1];
  p.a = std::stoi(m[2]);
  p.object = m[3];
  p.female = m[12] == "she";
  if (m[4].matched) {
    const std::string verb = m[4];
    p.b = std::stoi(m[5]);
    if (verb == "buys") p.kind = Template::kBuys;
    if (verb == "loses") p.kind = Template::kLoses;
    if (verb == "eats") p.kind = Template::kEats;
    if (verb == "gives") {
      p.kind = Template::kGives;
      p.other = m[7];
    }
  } else if (m[8].matched) {
    p.kind = Template::kFinds;
    p.b = std::stoi(m[8]);
  } else {
    p.kind = Template::kGets;
    p.other = m[9];
    p.b = std::stoi(m[10]);
  }
  // Anything the regex let through but the generator would not write (e.g. "buys 5 of them",
  // mismatched objects or pronouns) fails the round trip.
  if (p.prompt() != t) return std::nullopt;
  return p;
}

// ---- SFT data ---------------------------------------------------------------------------------

int systematic_wrong(const Problem& p) {
  switch (p.kind) {
    case Template::kBuys:
    case Template::kFinds:
      return p.a + p.b + 1;
    case Template::kGets:
      return p.a;
    case Template::kLoses:
    case Template::kGives:
      return p.a + p.b;
    case Template::kEats:
      return p.a - p.b + 1;
  }
  return p.gold();
}

std::string sample_sft_answer(const Problem& p, const SftMix& mix, std::mt19937_64& rng) {
  const bool wrong_mode = mix.wrong_mode[static_cast<int>(p.kind)];
  const double pg = wrong_mode ? mix.p_gold_wrong_mode : mix.p_gold_right_mode;
  const double pw = wrong_mode ? mix.p_wrong_wrong_mode : mix.p_wrong_right_mode;
  const double u = uniform01(rng);
  const int gold = p.gold(), wrong = systematic_wrong(p);
  if (u < pg) return answer_text(p, gold);
  if (u < pg + pw) return answer_text(p, wrong);
  std::vector<int> noise;
  for (int n = std::max(0, gold - 5); n <= gold + 5; ++n)
    if (n != gold && n != wrong) noise.push_back(n);
  return answer_text(p, noise[uniform(rng, noise.size())]);
}

void write_sft_corpus(const std::string& path, int n, uint64_t seed, const SftMix& mix,
                      int max_operand) {
  // Problems may repeat across lines (the same prompt with different answers is the point), so
  // draw from a pool of distinct train problems.
  const int pool_size = std::min(n, 20000);
  std::vector<Problem> pool = generate_problems(Split::kTrain, pool_size, seed, max_operand);
  std::mt19937_64 rng(seed ^ 0x5f7a1c3e9d2b4a61ull);
  std::string out;
  for (int i = 0; i < n; ++i) {
    const Problem& p = i < pool_size ? pool[i] : pool[uniform(rng, pool.size())];
    nlohmann::json j = {{"prompt", p.prompt()}, {"response", sample_sft_answer(p, mix, rng)}};
    out += j.dump() + "\n";
  }
  write_file_atomic(path, out);
}

void write_tokenizer_corpus(const std::string& path, int n, uint64_t seed, int max_operand) {
  std::vector<Problem> problems = generate_problems(Split::kTrain, n, seed, max_operand);
  std::string out;
  for (const Problem& p : problems) {
    out += p.prompt() + "\n";
    out += gold_answer(p) + "\n";
    out += answer_text(p, systematic_wrong(p)) + "\n";
  }
  // Noise answers reach gold + 5 and the systematic ones a + b + 1.
  for (int k = 0; k <= std::max(45, 2 * max_operand + 5); ++k) out += std::to_string(k) + "\n";
  write_file_atomic(path, out);
}

void write_prompts(const std::string& path, const std::vector<Problem>& problems) {
  std::string out;
  for (const Problem& p : problems) out += nlohmann::json({{"prompt", p.prompt()}}).dump() + "\n";
  write_file_atomic(path, out);
}

void write_annotation_tasks(const std::string& path, const std::vector<std::string>& prompts,
                            const std::vector<std::vector<std::string>>& answers) {
  if (prompts.size() != answers.size())
    throw Error("annotation tasks for " + path + ": " + std::to_string(prompts.size()) +
                " prompts but " + std::to_string(answers.size()) + " answer lists");
  std::string out;
  for (size_t i = 0; i < prompts.size(); ++i)
    out += nlohmann::json({{"prompt", prompts[i]}, {"answers", answers[i]}}).dump() + "\n";
  write_file_atomic(path, out);
}

// ---- Answer checking --------------------------------------------------------------------------

std::optional<int> parse_answer_number(const std::string& s) {
  std::optional<int> value;
  for (size_t i = 0; i < s.size();) {
    if (!std::isdigit(static_cast<unsigned char>(s[i]))) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
    // A digit run glued to letters ("x2", "3rd") is not a number; a leading '-' that is not
    // glued to a word is a sign.
    bool glued = (i > 0 && std::isalpha(static_cast<unsigned char>(s[i - 1]))) ||
                 (j < s.size() && std::isalpha(static_cast<unsigned char>(s[j])));
    if (!glued) {
      std::string digits = s.substr(i, j - i);
      digits.erase(0, std::min(digits.find_first_not_of('0'), digits.size() - 1));
      if (digits.size() > 9) return std::nullopt;  // absurd, and beyond int
      int v = std::stoi(digits);
      if (i > 0 && s[i - 1] == '-' &&
          (i < 2 || !std::isalnum(static_cast<unsigned char>(s[i - 2]))))
        v = -v;
      if (value && *value != v) return std::nullopt;  // two different numbers: no answer
      value = v;
    }
    i = j;
  }
  return value;
}

bool is_correct(const Problem& p, const std::string& answer) {
  auto n = parse_answer_number(answer);
  return n && *n == p.gold();
}

std::optional<int> distance(const Problem& p, const std::string& answer) {
  auto n = parse_answer_number(answer);
  if (!n) return std::nullopt;
  return std::abs(*n - p.gold());
}

double gold_accuracy(const std::vector<Problem>& problems,
                     const std::vector<std::string>& answers) {
  if (problems.size() != answers.size())
    throw Error("gold accuracy: " + std::to_string(problems.size()) + " problems but " +
                std::to_string(answers.size()) + " answers");
  if (problems.empty()) return 0.0;
  int correct = 0;
  for (size_t i = 0; i < problems.size(); ++i) correct += is_correct(problems[i], answers[i]);
  return static_cast<double>(correct) / problems.size();
}

bool is_well_formed(const Problem& p, const std::string& answer) {
  auto n = parse_answer_number(answer);
  return n && trim(answer) == answer_text(p, *n);
}

// ---- The gold teacher -------------------------------------------------------------------------

std::vector<std::vector<int>> gold_ranking(const Problem& p,
                                           const std::vector<std::string>& answers) {
  // Sort key: (tier: 0 correct / 1 wrong / 2 malformed, distance, not well-formed, words).
  using Key = std::tuple<int, int, int, int>;
  std::vector<Key> keys;
  for (const std::string& a : answers) {
    auto n = parse_answer_number(a);
    if (!n) {
      keys.emplace_back(2, 0, 0, 0);
      continue;
    }
    const int d = std::abs(*n - p.gold());
    const bool wf = trim(a) == answer_text(p, *n);
    keys.emplace_back(d == 0 ? 0 : 1, d, wf ? 0 : 1, wf ? 0 : word_count(a));
  }
  std::vector<int> order(answers.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return keys[x] < keys[y]; });
  std::vector<std::vector<int>> groups;
  for (size_t i = 0; i < order.size(); ++i) {
    if (i > 0 && keys[order[i]] == keys[order[i - 1]])
      groups.back().push_back(order[i]);
    else
      groups.push_back({order[i]});
  }
  return groups;
}

std::vector<std::vector<int>> ArithmeticTeacher::rank(const std::string& prompt,
                                                      const std::vector<std::string>& answers,
                                                      std::mt19937_64&) {
  auto p = parse_prompt(prompt);
  if (!p)
    throw Error("arithmetic teacher: prompt is not a quickstart word problem: \"" +
                prompt.substr(0, 120) + "\"");
  return gold_ranking(*p, answers);
}

void register_quickstart_teachers() {
  auto factory = [] { return std::make_unique<ArithmeticTeacher>(); };
  rlhf::annotation::register_teacher("arithmetic", factory);
  // The name used in annotation/teacher.h's example.
  rlhf::annotation::register_teacher("quickstart", factory);
}

}  // namespace rlhf::quickstart
