// Programmatic annotators ("teachers") that rank a task's answers, plus a registry by name.
//
// A Teacher is what `rlhf annotate simulate --teacher NAME` ranks with: it sees the same prompt and
// answers a person sees in `rlhf annotate client` and returns a ranking in the wire protocol's
// shape. The module is torch-free, and so is this interface: a teacher backed by a model lives in
// the module that owns the model and registers itself here.
//
// Built in: `length` (shorter answers are better; equal lengths tie). Other modules add theirs,
// e.g. pipelines/quickstart_task.{h,cpp} registers the quickstart task's gold teacher:
//
//   namespace {
//   const bool registered = rlhf::annotation::register_teacher(
//       "quickstart", [] { return std::make_unique<QuickstartTeacher>(); });
//   }
//
// (A static registration inside a static library is only kept when something else in that object
// file is referenced; call a function of that file from the command that needs the teacher, or
// call register_teacher() explicitly before make_teacher().)
#pragma once

#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace rlhf::annotation {

// Ranks the answers of one prompt.
//
// rank() returns groups of answer indices, best group first; answers in one group are tied.
// Example: answers {A, B, C, D} ranked `B > A = C > D` is {{1}, {0, 2}, {3}}. The groups must form
// a permutation of 0..answers.size()-1 (every index exactly once, no empty group). `rng` is the
// caller's generator, for teachers that break ties or add noise at random; a deterministic teacher
// ignores it. A teacher is used from one thread at a time (make one per thread); rank() may throw
// rlhf::Error for a prompt it cannot judge.
class Teacher {
 public:
  virtual ~Teacher() = default;
  virtual std::vector<std::vector<int>> rank(const std::string& prompt,
                                             const std::vector<std::string>& answers,
                                             std::mt19937_64& rng) = 0;
};

using TeacherFactory = std::function<std::unique_ptr<Teacher>()>;

// Registers (or replaces) a teacher under `name`. Thread-safe. Returns true, so it can initialise
// a static: `static const bool ok = register_teacher("x", ...);`.
bool register_teacher(const std::string& name, TeacherFactory factory);

// A new teacher by name; throws rlhf::Error listing the known names when `name` is unknown.
std::unique_ptr<Teacher> make_teacher(const std::string& name);

// Names of the registered teachers, sorted.
std::vector<std::string> teacher_names();

// The built-in `length` teacher: shorter answers (in bytes) rank higher, equal lengths tie.
class LengthTeacher : public Teacher {
 public:
  std::vector<std::vector<int>> rank(const std::string& prompt,
                                     const std::vector<std::string>& answers,
                                     std::mt19937_64& rng) override;
};

}  // namespace rlhf::annotation
