// Reward training from an annotation database. reward/ reads comparison files only; this layer
// (the CLI and the pipeline) turns a database into one: every ordered pair across the tie groups
// of every stored ranking (annotation/import_export.h, format "pairs").
// Thread safety: opens its own Store; one export per output folder at a time.
#pragma once

#include "proto/reward.pb.h"

namespace rlhf::pipelines {

// When config->annotation_db() is set: exports its pairs to <out_dir>/comparisons.jsonl
// (atomically; the same database gives the same bytes, so a rerun resumes), points train_file at
// that file with format "pairs", and clears annotation_db. Otherwise leaves the config as it is.
// Throws rlhf::Error "exporting comparisons from <db>: ..." when the database cannot be read or the
// file written, and when out_dir is empty. write = false changes the config only (data-parallel
// ranks other than 0 read the file rank 0 wrote).
void export_annotation_pairs(proto::RewardTrainConfig* config, bool write = true);

}  // namespace rlhf::pipelines
