// `rlhf version`: prints the build's version and library versions.
#include <torch/torch.h>

#include <cstdio>

#include "tools/cli.h"

namespace {
rlhf::cli::Register reg(
    {"version", "print version information", "", {}, [](const rlhf::cli::Args&) {
       std::printf("rlhf 0.1.0 (libtorch %s)\n", TORCH_VERSION);
       return 0;
     }});
}
