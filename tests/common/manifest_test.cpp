#include "common/manifest.h"

#include <gtest/gtest.h>

#include "common/error.h"
#include "common/files.h"
#include "tests/test_support.h"

TEST(Manifest, RoundTripAndCompleteness) {
  rlhf::testing::TempDir dir("manifest");
  rlhf::write_file_atomic(dir / "in.txt", "hello");
  auto m = rlhf::begin_manifest("sft");
  *m.add_inputs() = rlhf::file_ref(dir / "in.txt");
  rlhf::write_manifest(m, dir.path());
  EXPECT_THROW(rlhf::require_complete_manifest(dir.path(), "sft"), rlhf::Error);
  rlhf::finish_manifest(m, dir.path(), 1.5);
  auto back = rlhf::require_complete_manifest(dir.path(), "sft");
  EXPECT_EQ(back.inputs(0).sha256(), rlhf::sha256_hex("hello"));
  EXPECT_DOUBLE_EQ(back.wall_seconds(), 1.5);
  EXPECT_TRUE(rlhf::file_exists(dir / "manifest.json"));
  try {
    rlhf::require_complete_manifest(dir.path(), "reward");
    FAIL();
  } catch (const rlhf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("expected stage 'reward'"), std::string::npos);
  }
}

TEST(Manifest, MissingManifestNamesFolder) {
  rlhf::testing::TempDir dir("manifest2");
  try {
    rlhf::require_complete_manifest(dir.path(), "ppo");
    FAIL();
  } catch (const rlhf::Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir.path()), std::string::npos);
  }
}

#include "common/text_config.h"

TEST(TextConfig, ErrorNamesFileLineAndField) {
  rlhf::proto::StageManifest m;
  try {
    rlhf::parse_text_config("stage: \"sft\"\nno_such_field: 3\n", "cfg.pbtxt", &m);
    FAIL();
  } catch (const rlhf::Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("cfg.pbtxt:2:"), std::string::npos) << what;
    EXPECT_NE(what.find("no_such_field"), std::string::npos) << what;
  }
  rlhf::parse_text_config("stage: \"sft\" wall_seconds: 2.5", "ok.pbtxt", &m);
  EXPECT_EQ(m.stage(), "sft");
  EXPECT_NE(rlhf::to_text_format(m).find("wall_seconds: 2.5"), std::string::npos);
}
