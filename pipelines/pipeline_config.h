// Loading and checking the pipeline config (proto::PipelineConfig, protobuf text format).
#pragma once

#include <string>

#include "pipelines/quickstart_task.h"
#include "proto/pipeline.pb.h"

namespace rlhf::pipelines {

// Loads and checks a pipeline config (errors name file, line and field) and fills defaults.
proto::PipelineConfig load_pipeline_config(const std::string& path);
void apply_pipeline_defaults(proto::PipelineConfig* config);

// The SFT answer mix of a pipeline config (defaults where fields are 0 / empty); throws naming the
// field when a share is outside 0..1, a pair sums above 1, or a template name is unknown.
quickstart::SftMix sft_mix_from_config(const proto::QuickstartTaskConfig& q, const std::string& path);

}  // namespace rlhf::pipelines
