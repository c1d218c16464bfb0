// `rlhf report RUN_DIR`: (re)generates RUN_DIR/report.html from the run folder's files.
#include <cstdio>

#include "common/error.h"
#include "pipelines/report.h"
#include "tools/cli.h"

namespace {

int run_report(const rlhf::cli::Args& a) {
  if (a.positional().size() != 1)
    throw rlhf::UsageError("expected exactly one RUN_DIR argument, got " +
                           std::to_string(a.positional().size()));
  rlhf::report::ReportOptions o;
  // The declared defaults are descriptions; the module fills in the real ones.
  o.output_path = a.get_opt("output").value_or("");
  o.samples_path = a.get_opt("samples").value_or("");
  o.title = a.get_opt("title").value_or("");
  o.max_points = static_cast<int>(a.get_int("max-points"));
  if (o.max_points < 2) throw rlhf::UsageError("--max-points must be at least 2");
  std::string path = rlhf::report::write_report(a.positional()[0], o);
  std::printf("%s\n", path.c_str());
  return 0;
}

rlhf::cli::Register reg({"report",
                         "write RUN_DIR/report.html (charts of every stage, before/after table)",
                         "RUN_DIR [--output FILE] [--samples FILE] [--title T]",
                         {{"output", "where to write the HTML", "RUN_DIR/report.html"},
                          {"samples", "before/after samples JSON", "RUN_DIR/samples.json"},
                          {"title", "page title", "RLHF run <folder name>"},
                          {"max-points", "thin longer metric series to about this many points",
                           "400"}},
                         run_report});

}  // namespace
