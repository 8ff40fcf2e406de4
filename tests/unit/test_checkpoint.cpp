// tests/unit/test_checkpoint.cpp: CRC-32C against the published vectors (RFC 3720 B.4 and the
// "123456789" check value), chaining, and how --resume paths are resolved. Saving and loading
// (atomicity, resharding, damaged files, signals) run end to end in
// tests/scripts/checkpoint_{resume,faults}.sh.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/formats/crc32c.h"
#include "launch/checkpoint.h"
#include "tests/unit/testing.h"

namespace switchyard {
namespace {

namespace fs = std::filesystem;
using core::formats::crc32c;

TEST(Crc32c, KnownVectors) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(crc32c("", 0), 0u);
  std::vector<uint8_t> zeros(32, 0), ones(32, 0xFF), up(32), down(32);
  for (int i = 0; i < 32; ++i) {
    up[static_cast<size_t>(i)] = static_cast<uint8_t>(i);
    down[static_cast<size_t>(i)] = static_cast<uint8_t>(31 - i);
  }
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(crc32c(up.data(), up.size()), 0x46DD794Eu);
  EXPECT_EQ(crc32c(down.data(), down.size()), 0x113FDB5Cu);
}

TEST(Crc32c, ChainsAndDetectsOneBit) {
  const std::string text = "the quick brown fox jumps over the lazy dog";
  const uint32_t whole = crc32c(text.data(), text.size());
  EXPECT_EQ(crc32c(text.data() + 10, text.size() - 10, crc32c(text.data(), 10)), whole);
  std::string flipped = text;
  flipped[17] ^= 0x10;
  EXPECT_NE(crc32c(flipped.data(), flipped.size()), whole);
}

TEST(Checkpoint, FolderNames) {
  EXPECT_EQ(launch::checkpoint_folder_name(123), "step-000123");
  EXPECT_EQ(launch::checkpoint_folder_name(1234567), "step-1234567");
}

class ResolveCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = test::temp_dir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(root_ / "step-000004");
    std::ofstream(root_ / "step-000004" / "manifest.json") << "{}";
  }
  void TearDown() override { fs::remove_all(root_); }
  std::string usage_error(const std::string& path) {
    try {
      launch::resolve_checkpoint(path);
    } catch (const Error& e) {
      EXPECT_EQ(e.exit_code(), 2);
      return e.what();
    }
    ADD_FAILURE() << "no error for " << path;
    return "";
  }
  fs::path root_;
};

TEST_F(ResolveCheckpoint, FolderOrLatest) {
  EXPECT_EQ(launch::resolve_checkpoint((root_ / "step-000004").string()), (root_ / "step-000004").string());
  std::ofstream(root_ / "latest") << "step-000004\n";
  EXPECT_EQ(launch::resolve_checkpoint(root_.string()), (root_ / "step-000004").string());
}

TEST_F(ResolveCheckpoint, Errors) {
  const std::string missing = usage_error((root_ / "nothing").string());
  EXPECT_NE(missing.find("no such folder"), std::string::npos) << missing;
  const std::string empty = usage_error(root_.string());
  EXPECT_NE(empty.find("not a checkpoint"), std::string::npos) << empty;
  std::ofstream(root_ / "latest") << "step-000009\n";
  const std::string dangling = usage_error(root_.string());
  EXPECT_NE(dangling.find("latest"), std::string::npos) << dangling;
  EXPECT_NE(dangling.find("step-000009"), std::string::npos) << dangling;
}

}  // namespace
}  // namespace switchyard
