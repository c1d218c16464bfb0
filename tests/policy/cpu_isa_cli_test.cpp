// RLHF_CPU_ISA through the built rlhf executable (policy/kernels/isa.h, tools/rlhf_main.cpp): an
// unknown value, or the retired RLHF_DECODE_ISA, makes every command fail at start-up with one
// line naming the variable and a non-zero exit; a known value is what the kernels run.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "policy/kernels/isa.h"
#include "tests/test_support.h"

namespace {

using rlhf::testing::rlhf_binary;
using rlhf::testing::run_command;
namespace kernels = rlhf::policy::kernels;

// Runs `rlhf args` with the two variables set as given ("" leaves one unset); stdout and stderr
// into *out.
int run_rlhf(const std::string& cpu_isa, const std::string& decode_isa, const std::string& args,
             std::string* out) {
  std::string env = "env -u RLHF_CPU_ISA -u RLHF_DECODE_ISA";
  if (!cpu_isa.empty()) env += " RLHF_CPU_ISA=" + cpu_isa;
  if (!decode_isa.empty()) env += " RLHF_DECODE_ISA=" + decode_isa;
  return run_command(env + " " + rlhf_binary() + " " + args, out);
}

TEST(CpuIsaCli, AnUnknownValueFailsEveryCommandWithOneLine) {
  for (const std::string args : {"version", "generate --help", "bench --quick --only decode"}) {
    std::string out;
    EXPECT_NE(run_rlhf("bogus", "", args, &out), 0) << args;
    EXPECT_EQ(out,
              "rlhf: error: RLHF_CPU_ISA='bogus' is not an instruction set: expected portable, "
              "avx2 or avx512\n")
        << args;
  }
}

TEST(CpuIsaCli, TheRetiredRlhfDecodeIsaNamesItsReplacement) {
  std::string out;
  EXPECT_NE(run_rlhf("", "avx2", "version", &out), 0);
  EXPECT_NE(out.find("RLHF_DECODE_ISA='avx2'"), std::string::npos) << out;
  EXPECT_NE(out.find("renamed RLHF_CPU_ISA"), std::string::npos) << out;
}

TEST(CpuIsaCli, AKnownValueIsWhatTheKernelsRun) {
  for (kernels::Isa isa : {kernels::Isa::kPortable, kernels::Isa::kAvx2, kernels::Isa::kAvx512}) {
    std::string out;
    ASSERT_EQ(run_rlhf(kernels::isa_name(isa), "", "version", &out), 0) << out;
    const kernels::Isa runs = std::min(isa, kernels::cpu_isa());
    EXPECT_NE(out.find(std::string("cpu kernels: ") + kernels::isa_name(runs) + " "),
              std::string::npos)
        << out;
  }
  std::string out;
  ASSERT_EQ(run_rlhf("", "", "version", &out), 0) << out;
  EXPECT_NE(out.find(std::string("cpu kernels: ") + kernels::isa_name(kernels::cpu_isa()) + " "),
            std::string::npos)
      << out;
}

}  // namespace
