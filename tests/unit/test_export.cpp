// tests/unit/test_export.cpp: --max-shard-size parsing of `switchyard export`. The export itself
// (HF layout, shards, tokenizer, round trip, reference logits) runs end to end in
// tests/scripts/export_roundtrip.sh.
#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "launch/export.h"

namespace switchyard {
namespace {

using launch::parse_byte_size;

TEST(ExportShardSize, Units) {
  EXPECT_EQ(parse_byte_size("5GB"), 5000000000ull);
  EXPECT_EQ(parse_byte_size("500MB"), 500000000ull);
  EXPECT_EQ(parse_byte_size("2000KB"), 2000000ull);
  EXPECT_EQ(parse_byte_size("2000kb"), 2000000ull);
  EXPECT_EQ(parse_byte_size("123"), 123ull);
  EXPECT_EQ(parse_byte_size("123B"), 123ull);
  EXPECT_EQ(parse_byte_size("1GiB"), 1ull << 30);
  EXPECT_EQ(parse_byte_size("3MiB"), 3ull << 20);
}

TEST(ExportShardSize, RejectsBadSizes) {
  for (const char* bad : {"", "GB", "5XB", "5 GB", "-5GB", "0", "1.5GB", "99999999999999999GB", "999999999999999TB"}) {
    try {
      parse_byte_size(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--max-shard-size"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace switchyard
