// The `rlhf` executable: every subcommand registers itself from tools/cmd_*.cpp.
#include "tools/cli.h"

int main(int argc, char** argv) { return rlhf::cli::dispatch(argc, argv); }
