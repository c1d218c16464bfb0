// The seed sweep's report: a learning claim is a distribution over seeds, never one run. Reads the
// per-seed run folders of `rlhf pipeline sweep` (D/seed-N/, each a pipeline run folder) and writes
//   D/sweep.json   {"schema_version": 1, "seeds": [...], "runs": {"N": summary.json of seed N},
//                   "stats": {"<figure>": {"mean", "min", "max", "n"}}, "missing": [seeds],
//                   "machines": [distinct "machine" objects of the summaries: cpu, cores,
//                   openblas_core], "finished": [first, last "finished_at"] or []}
//                  where the figures are the numeric fields of the summaries (nested objects such
//                  as stage_seconds flattened with dots);
//   D/sweep.html   one self-contained page: the machines and dates, a row per seed with the
//                  headline figures, the mean / min / max row, and the PPO gold-accuracy and
//                  teacher-score curves of every seed on one chart (from each seed's
//                  ppo/metrics.jsonl, "gold/accuracy" and "score/mean" per iteration).
// Torch-free (library rlhf_task).
//
// Errors: write_sweep_report throws rlhf::Error naming the file when a summary.json is not a JSON
// object or a file cannot be written; a seed without summary.json is listed under "missing" (not
// an error: a sweep may be looked at while it runs). Thread safety: functions keep no state; two
// calls writing the same folder race (the last rename wins).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace rlhf::pipelines {

// Seeds from "0-4" (a range, both ends included), "0,2,7", "3", or a mix ("0-2,9"). Throws
// rlhf::UsageError naming the text for anything else, a range whose end is below its start, a
// repeated seed, or more than 1,000 seeds.
std::vector<uint64_t> parse_seeds(const std::string& text);

// The folder of one seed's run inside a sweep folder: <sweep_dir>/seed-<seed>.
std::string seed_run_dir(const std::string& sweep_dir, uint64_t seed);

// Mean, min and max over seeds of every numeric field of the given summaries (flattened with
// dots); fields absent from some summaries are summarised over those that have them ("n").
nlohmann::json sweep_stats(const std::vector<nlohmann::json>& summaries);

// Writes sweep.json and sweep.html for `seeds` into `sweep_dir` (atomically, each); returns the
// sweep.json object.
nlohmann::json write_sweep_report(const std::string& sweep_dir, const std::vector<uint64_t>& seeds);

}  // namespace rlhf::pipelines
