// `rlhf ppo --config FILE.pbtxt [--out DIR]`: the PPO stage (pipelines/ppo_stage.h).
#include <cstdio>

#include "pipelines/memory_plans.h"
#include "pipelines/ppo_stage.h"
#include "policy/ppo/ppo_config.h"
#include "policy/runtime/distributed.h"
#include "tools/cli.h"
#include "tools/config_flags.h"

namespace {

// The flags that override PpoConfig fields, one per line: flag, field path, help.
const rlhf::cli::ConfigFlags kPpoOverrides{
    &rlhf::proto::PpoConfig::descriptor,
    {
        {"out", "out_dir", "output folder; default ppo"},
        {"iterations", "iterations", "PPO iterations"},
        {"device", "device", "cpu | cuda | cuda:N"},
        {"dtype", "dtype", "fp32 | bf16"},
        {"threads", "threads",
         "torch intra-op threads (0: torch's choice, or a share of "
         "the cores per rank under a launcher)"},
    }};

int run_ppo(const rlhf::cli::Args& a) {
  rlhf::pipelines::PpoStageOptions o;
  o.config_path = a.get("config");
  o.config = rlhf::policy::load_ppo_config(o.config_path);
  rlhf::cli::apply_config_flags(kPpoOverrides, a, &*o.config);
  if (a.get_bool("plan")) {
    rlhf::policy::validate_ppo_config(*o.config);
    const auto cfg = rlhf::policy::resolved_ppo_config(*o.config);
    std::fputs(rlhf::pipelines::ppo_memory_plan(cfg).table().c_str(), stdout);
    return 0;
  }
  o.gold_task = a.get("gold-task");
  o.gold_prompts = a.get("gold-prompts");
  auto stats = rlhf::pipelines::run_ppo_stage(o);
  if (!rlhf::policy::dist::world().is_root()) return 0;  // rank 0 reports
  auto get = [&](const char* k) { return stats.count(k) ? stats.at(k) : 0.0; };
  std::printf("ppo: done; score/mean %.4f, kl/mean %.4f, kl/coef %.4g\n", get("score/mean"),
              get("kl/mean"), get("kl/coef"));
  return 0;
}

rlhf::cli::Register reg(
    {
        "ppo",
        "improve the policy with PPO against the teacher (reward model); resumes from checkpoints",
        "--config FILE.pbtxt [--out DIR]",
        {
            {"config", "PpoConfig in protobuf text format (see proto/ppo.proto)", "", false, true},
            {"plan",
             "print the memory plan (bytes per component on the configured device and dtype) and "
             "exit; reads no weights",
             "", true},
            {"gold-task", "monitor a gold teacher on the rollouts: quickstart", ""},
            {"gold-prompts", "JSON lines {\"prompt\": ...}: held-out gold accuracy before/after",
             ""},
        },
        run_ppo,
    },
    kPpoOverrides);

}  // namespace
