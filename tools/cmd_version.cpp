// `rlhf version`: prints the build's version and library versions, and the instruction set the
// CPU kernels run (policy/kernels/isa.h).
#include <torch/torch.h>

#include <cstdio>

#include "policy/kernels/isa.h"
#include "tools/cli.h"

namespace {
rlhf::cli::Register reg(
    {"version", "print version information", "", {}, [](const rlhf::cli::Args&) {
       namespace kernels = rlhf::policy::kernels;
       std::printf("rlhf 0.1.0 (libtorch %s)\n", TORCH_VERSION);
       std::printf("cpu kernels: %s (this CPU supports %s; RLHF_CPU_ISA caps it)\n",
                   kernels::isa_name(kernels::active_isa()), kernels::isa_name(kernels::cpu_isa()));
       return 0;
     }});
}
