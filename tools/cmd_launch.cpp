// `rlhf launch`: starts the ranks of a data-parallel job on this node (common/launch.h).
#include <cstdio>
#include <string>

#include "common/launch.h"
#include "tools/cli.h"

namespace {

using rlhf::cli::FlagSpec;

// Shown by --help only: the flags are parsed by rlhf::launch::parse_launch_args, since everything
// after `--` belongs to the program.
std::vector<FlagSpec> launch_flag_help() {
  const rlhf::launch::LaunchOptions d;
  return {
      {"nproc-per-node", "ranks to start on this node", "", false, true},
      {"nnodes", "nodes in the job", std::to_string(d.nnodes)},
      {"node-rank", "this node's index, 0 <= R < nnodes", std::to_string(d.node_rank)},
      {"master-addr", "host of rank 0's rendezvous (MASTER_ADDR)", d.master_addr},
      {"master-port", "its TCP port (MASTER_PORT)", std::to_string(d.master_port)},
      {"timeout", "stop the ranks after S seconds and exit 124; 0 = no limit", "0"},
      {"stop-grace", "seconds between SIGTERM and SIGKILL when stopping the ranks", "5"},
  };
}

rlhf::cli::Register reg({
    "launch",
    "start N ranks with torchrun's environment (RANK, WORLD_SIZE, ...), output as '[rank R] '",
    "--nproc-per-node N [flags] -- PROGRAM [ARGS...]   (PROGRAM 'rlhf' is this executable)",
    launch_flag_help(),
    [](const rlhf::cli::Args& args) {
      return rlhf::launch::run_launch(rlhf::launch::parse_launch_args(args.positional()));
    },
    /*raw_args=*/true,
});

}  // namespace
