// `rlhf launch`: starts the ranks of a data-parallel job on this node, like torchrun.
//
// Each rank is a child process that gets torchrun's environment contract (RANK, WORLD_SIZE,
// LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT) plus RLHF_LAUNCHED=1, so a
// program that reads those variables runs the same under `rlhf launch`, torchrun or Slurm
// (docs/distributed.md). Torch-free: the ranks are started, signalled and reaped through
// common/process.h; the environment merge and the wait-status description are that module's.
//
// The pure parts (flag parsing, the environment of a rank, the output prefixing) are separate
// functions so they are unit-tested without processes; run_launch() does the process work.
// Thread safety: the pure functions are; RankOutputFilter is not; run_launch() owns the process's
// signal dispositions while it runs (see there).
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rlhf::launch {

// What to start, from the flags of `rlhf launch` (parse_launch_args).
struct LaunchOptions {
  int nproc_per_node = 0;                 // --nproc-per-node: ranks on this node, >= 1 (required)
  int nnodes = 1;                         // --nnodes: nodes in the job, >= 1
  int node_rank = 0;                      // --node-rank: this node, 0 <= node_rank < nnodes
  std::string master_addr = "127.0.0.1";  // --master-addr: host of rank 0's rendezvous store
  int master_port = 29500;                // --master-port: its TCP port, 1..65535
  double timeout_s = 0;     // --timeout: stop the ranks after this many seconds; 0 = no limit
  double stop_grace_s = 5;  // --stop-grace: SIGTERM to SIGKILL delay when stopping the ranks
  std::vector<std::string> command;  // the program and its arguments (everything after `--`)
};

// Parses the arguments after `rlhf launch`: `--flag V` or `--flag=V` (torchrun's underscore
// spellings such as --nproc_per_node are accepted too), then `--`, then the program and its
// arguments, which are kept untouched. Throws rlhf::UsageError naming the flag and the value
// (unknown flag, missing value, non-numeric or out-of-range number, node rank >= nnodes, missing
// `--` or program).
LaunchOptions parse_launch_args(const std::vector<std::string>& argv);

// The variables a rank is started with (torchrun's contract plus RLHF_LAUNCHED=1), in a fixed
// order: RANK = node_rank * nproc_per_node + local_rank, WORLD_SIZE = nnodes * nproc_per_node.
// Requires 0 <= local_rank < options.nproc_per_node.
std::vector<std::pair<std::string, std::string>> rank_environment(const LaunchOptions& options,
                                                                  int local_rank);

// A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice for port 0): a
// rendezvous port (MASTER_PORT) for ranks on this machine. Throws rlhf::Error with the reason.
int free_loopback_port();

// Threads for each of nproc_per_node ranks on this machine: online cores / nproc_per_node, at
// least 1. The launcher sets OMP_NUM_THREADS to it (when the user has not) for more than one rank.
int threads_per_local_rank(int nproc_per_node);

// The file to execute for `program`: this executable (/proc/self/exe) for "rlhf", `program` itself
// when it contains a '/', else the first executable match in the ':'-separated `path_env`
// (process::find_in_path). Throws rlhf::Error naming the program when nothing is found.
std::string resolve_program(const std::string& program, const std::string& path_env);

// Turns one rank's output stream (stdout or stderr) into prefixed text: every line is written as
// "[rank R] line". Lines are cut at '\n'; a '\r' also ends a segment (a progress-bar redraw).
// With keep_progress (rank 0) each redraw is prefixed and written as soon as it arrives, so a bar
// stays live; without it (other ranks) a line that contains a '\r' is dropped. Not thread-safe.
class RankOutputFilter {
 public:
  RankOutputFilter(int rank, bool keep_progress);

  // Consumes the next bytes of the stream; returns the text to write now (possibly empty).
  std::string feed(std::string_view bytes);
  // End of stream: returns a partial last line (ended with '\n'), or "" when there is none.
  std::string finish();

 private:
  std::string end_segment(char terminator);

  std::string prefix_;            // "[rank R] "
  bool keep_progress_;            // rank 0: redraws pass through
  std::string pending_;           // the current segment, not written yet
  bool line_has_cr_ = false;      // the current line has had a '\r' (it is a progress line)
  bool segment_started_ = false;  // part of the current segment (and its prefix) was written
};

// Starts options.nproc_per_node ranks and waits for them. Each rank runs in its own process group
// with stdin from /dev/null; its stdout and stderr go through a RankOutputFilter to this process's
// stdout and stderr. SIGINT and SIGTERM are forwarded to every rank. When a rank exits non-zero
// or by a signal, one line naming it (process::describe_wait_status) goes to stderr, the other
// ranks get SIGTERM and, after stop_grace_s, SIGKILL. Returns the launcher's exit code: 0 when
// every rank exited 0, else set by what stopped the job first: the failed rank's
// process::exit_code_of(), 128 + a forwarded signal, or 124 for the timeout. Throws rlhf::Error
// when the program cannot be found or a rank cannot be started (the ranks already started are
// killed and reaped first). Installs handlers for SIGINT, SIGTERM and SIGCHLD and ignores SIGPIPE
// for the duration of the call, restoring them on return; not reentrant, call it from the main
// thread. A rank's process group is killed when run_launch returns, so nothing a rank left
// running outlives the launcher.
int run_launch(const LaunchOptions& options);

}  // namespace rlhf::launch
