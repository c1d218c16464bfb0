#include "pipelines/stage_record.h"

#include "common/manifest.h"
#include "pipelines/annotation_pairs.h"

namespace rlhf::pipelines {

void mark_stage_running(const proto::StageManifest& manifest, const std::string& dir) {
  proto::StageManifest m = manifest;
  m.set_complete(false);
  write_manifest(m, dir);
}

void finish_stage(proto::StageManifest manifest, const std::string& dir, double wall_seconds) {
  finish_manifest(manifest, dir, wall_seconds);
}

policy::SftResult run_sft_stage(const proto::SftConfig& config) {
  const std::string dir = config.out_dir();
  auto result =
      policy::train_sft(config, [&](const proto::StageManifest& m) { mark_stage_running(m, dir); });
  if (!result.already_complete && !result.interrupted)
    finish_stage(result.manifest, dir, result.wall_seconds);
  return result;
}

reward::TrainResult run_reward_stage(proto::RewardTrainConfig config) {
  export_annotation_pairs(&config);
  const std::string dir = config.out_dir();
  auto result = reward::train_reward_model(
      config, [&](const proto::StageManifest& m) { mark_stage_running(m, dir); });
  if (!result.already_complete) finish_stage(result.manifest, dir, result.wall_seconds);
  return result;
}

}  // namespace rlhf::pipelines
