#include "pipelines/stage_record.h"

#include "common/manifest.h"
#include "pipelines/annotation_pairs.h"
#include "pipelines/memory_plans.h"
#include "policy/runtime/device.h"
#include "policy/runtime/distributed.h"

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
  check_stage_memory(config, &sft_memory_plan);  // before any weight is read
  const std::string dir = config.out_dir();
  auto result =
      policy::train_sft(config, [&](const proto::StageManifest& m) { mark_stage_running(m, dir); });
  const bool writer = policy::dist::world().is_root();  // data-parallel: rank 0 records
  if (writer && !result.already_complete && !result.interrupted)
    finish_stage(result.manifest, dir, result.wall_seconds);
  return result;
}

reward::TrainResult run_reward_stage(proto::RewardTrainConfig config) {
  check_stage_memory(config, &reward_memory_plan);  // before any weight is read
  auto& comm =
      policy::dist::world(policy::resolve_device(config.device(), "reward config: device"));
  if (comm.is_root()) export_annotation_pairs(&config);
  comm.barrier();  // the other ranks read the pairs rank 0 exported
  if (!comm.is_root()) export_annotation_pairs(&config, /*write=*/false);
  const std::string dir = config.out_dir();
  auto result = reward::train_reward_model(
      config, [&](const proto::StageManifest& m) { mark_stage_running(m, dir); });
  if (comm.is_root() && !result.already_complete)
    finish_stage(result.manifest, dir, result.wall_seconds);
  return result;
}

policy::dpo::DpoResult run_dpo_stage(const proto::DpoConfig& config) {
  const std::string dir = config.out_dir();
  auto result = policy::dpo::train_dpo(
      config, [&](const proto::StageManifest& m) { mark_stage_running(m, dir); });
  const bool writer = policy::dist::world().is_root();  // data-parallel: rank 0 records
  if (writer && !result.already_complete && !result.interrupted)
    finish_stage(result.manifest, dir, result.wall_seconds);
  return result;
}

}  // namespace rlhf::pipelines
