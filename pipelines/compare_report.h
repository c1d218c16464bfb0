// The method comparison's report (`rlhf pipeline compare`, pipelines/compare.h). Reads the
// per-method, per-seed results the comparison wrote into <run>/compare/<method>/seed-N/result.json
// and the SFT student's <run>/compare/sft.json, and writes
//   <run>/compare.json  {"schema_version": 1, "seeds": [...], "before": sft.json's figures,
//                        "methods": {"<method>": {"gold_accuracy": mean over seeds,
//                        "gold_accuracy_min", "gold_accuracy_max", "final_kl", "teacher_score",
//                        "wall_seconds", "tokens_generated" (means over seeds), "train_kl",
//                        "n" (seeds finished), "missing": [seeds], "seeds": {"N": result.json}}},
//                        "method_order": [the methods as given],
//                        "machine": {cpu, cores, openblas_core}, "written_at"}
//   <run>/compare.html  one table (SFT, then every method: gold mean [min, max], KL, teacher
//                        score, wall time, generated tokens) and one chart: every method's gold
//                        accuracy against wall-clock seconds (from the SFT student at 0 s to the
//                        method's mean over seeds).
// A method or seed without result.json is listed as missing (the report is written after every
// finished seed, so it shows the comparison so far). Torch-free (library rlhf_task).
//
// Errors: rlhf::Error naming the file when a result.json or sft.json is not a JSON object or a
// file cannot be written. Thread safety: no state; two calls on one folder race (last rename wins).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace rlhf::pipelines {

// <run>/compare/<method>/seed-<seed>
std::string compare_seed_dir(const std::string& run_dir, const std::string& method, uint64_t seed);

// Writes compare.json and compare.html into run_dir (atomically each); returns compare.json.
nlohmann::json write_compare_report(const std::string& run_dir,
                                    const std::vector<std::string>& methods,
                                    const std::vector<uint64_t>& seeds);

}  // namespace rlhf::pipelines
