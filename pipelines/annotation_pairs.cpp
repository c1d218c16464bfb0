#include "pipelines/annotation_pairs.h"

#include <sstream>

#include "annotation/import_export.h"
#include "annotation/sqlite_store.h"
#include "common/error.h"
#include "common/files.h"

namespace rlhf::pipelines {

void export_annotation_pairs(proto::RewardTrainConfig* config, bool write) {
  if (config->annotation_db().empty()) return;
  if (config->out_dir().empty())
    throw Error("reward config: field 'out_dir': no output folder given");
  const std::string db = config->annotation_db();
  const std::string file = config->out_dir() + "/comparisons.jsonl";
  if (write) {
    try {
      annotation::StoreOptions options;
      options.create = false;
      annotation::Store store(db, options);
      std::ostringstream pairs;
      annotation::export_jsonl(store, "pairs", pairs);
      make_dirs(config->out_dir());
      write_file_atomic(file, pairs.str());
    } catch (...) {
      rethrow_with_context("exporting comparisons from " + db);
    }
  }
  config->clear_annotation_db();
  config->set_train_file(file);
  config->set_format("pairs");
}

}  // namespace rlhf::pipelines
