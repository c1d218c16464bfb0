// Loading and checking the pipeline config (proto::PipelineConfig, protobuf text format).
// Errors: rlhf::Error in the shapes below (common/text_config.h). Thread safety: the functions
// keep no state and may be called from any thread.
#pragma once

#include <string>

#include "common/text_config.h"
#include "pipelines/quickstart_task.h"
#include "proto/pipeline.pb.h"

namespace rlhf::pipelines {

// Parses, checks and resolves a pipeline config: syntax errors and unknown fields throw
// "<path>:<line>:<col>: <message>", bad values (of the pipeline's own sections and of the sft,
// reward and ppo sections) "<path>:<line>: field '<section>.<name>': <expected>, got <value>".
// The result has every pipeline-level default filled in (fill_defaults on the top level and the
// quickstart / tokenizer / sample / annotate sections); the stage sections are left as written
// (each stage resolves its own defaults).
proto::PipelineConfig load_pipeline_config(const std::string& path);

// Checks every value of `config` through `errors` (a reporter for `config`).
void validate_pipeline_config(const proto::PipelineConfig& config, const ConfigErrors& errors);

// The SFT answer mix of a quickstart section (unset fields: the SftMix defaults); throws naming
// `path` and the field when a share is outside [0, 1], a pair sums above 1, or a template name is
// unknown.
quickstart::SftMix sft_mix_from_config(const proto::QuickstartTaskConfig& q,
                                       const std::string& path);
quickstart::SftMix sft_mix_from_config(const proto::QuickstartTaskConfig& q,
                                       const ConfigErrors& errors);

}  // namespace rlhf::pipelines
