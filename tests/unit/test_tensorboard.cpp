// TensorBoard event files (launch/tensorboard.h) and what they are built from: the TFRecord framing
// with its masked CRC-32C (core/formats/tfrecord.h) and the protobuf wire format
// (core/formats/protobuf_wire.h). The reference bytes are independent of this code: the protobuf
// encoding spec's examples, and bytes written by the tensorboard package's own serializer and
// RecordWriter (tensorboard 2.18.0, .venv: event_pb2.Event(...).SerializeToString(),
// tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c), pasted here as hex.
// A resumed run's new file sorts after the folder's others. tests/scripts/tensorboard.sh reads whole
// runs back with tensorboard's reader.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "core/formats/protobuf_wire.h"
#include "core/formats/tfrecord.h"
#include "launch/outputs.h"
#include "launch/tensorboard.h"
#include "testing.h"

namespace switchyard::launch {
namespace {

using core::formats::ProtoWriter;

std::string hex(const std::string& bytes) {
  std::string out;
  for (const unsigned char c : bytes) out += fmt::format("{:02x}", c);
  return out;
}

TEST(TensorBoardFraming, MaskedCrc32cMatchesTensorBoard) {
  // pywrap_tensorflow.masked_crc32c(b""), (b"123456789"), (struct.pack("<Q", 9)), (b"\0" * 32)
  EXPECT_EQ(core::formats::masked_crc32c("", 0), 0xa282ead8u);
  EXPECT_EQ(core::formats::masked_crc32c("123456789", 9), 0xc78ab0e5u);
  const uint64_t nine = 9;
  EXPECT_EQ(core::formats::masked_crc32c(&nine, 8), 0x3971f937u);
  const std::vector<char> zeros(32, 0);
  EXPECT_EQ(core::formats::masked_crc32c(zeros.data(), zeros.size()), 0x0fd7fffau);
}

TEST(TensorBoardFraming, RecordMatchesTensorBoardsRecordWriter) {
  // RecordWriter(f).write(Event(wall_time=1.5, file_version="brain.Event:2").SerializeToString())
  EXPECT_EQ(hex(core::formats::tfrecord_frame(event_file_version(1.5))),
            "1800000000000000a37f4b22" "09000000000000f83f1a0d627261696e2e4576656e743a32" "2a28646c");
}

TEST(ProtobufWire, VarintsAndFixedFieldsFollowTheSpec) {
  std::string v;
  core::formats::append_varint(v, 1);
  EXPECT_EQ(hex(v), "01");
  v.clear();
  core::formats::append_varint(v, 150);  // the encoding guide's example
  EXPECT_EQ(hex(v), "9601");
  v.clear();
  core::formats::append_varint(v, 300);
  EXPECT_EQ(hex(v), "ac02");
  ProtoWriter w;
  w.int64(2, -1);  // int64 -1: ten bytes
  EXPECT_EQ(hex(w.data()), "10ffffffffffffffffff01");
  ProtoWriter f;
  f.fixed64(1, 1.5);   // key 0x09, little-endian IEEE double
  f.fixed32(2, 2.5f);  // key 0x15, little-endian IEEE float
  f.bytes(3, "ab");    // key 0x1a, length, bytes
  const double d[] = {1.0, 2.0};
  f.packed_doubles(6, d);  // key 0x32, byte length 16
  EXPECT_EQ(hex(f.data()), "09000000000000f83f" "1500002040" "1a026162"
                           "3210000000000000f03f0000000000000040");
}

TEST(TensorBoardEvents, SummaryAndSessionLogMatchTensorBoardsSerializer) {
  // Event(wall_time=1700000000.25, step=300) with a simple_value "train/loss" = 2.5 and a histo
  // "expert_load/layer_0" (min 1, max 4, num 1, sum 2, sum_squares 4.5, bucket_limit [1, 2, 3, 4],
  // bucket [0, .25, .5, .25])
  TensorBoardValues v;
  v.scalars.push_back({"train/loss", 2.5});
  v.histograms.push_back({"expert_load/layer_0", {0, 0.25, 0.5, 0.25}});
  EXPECT_EQ(hex(event_summary(1700000000.25, 300, v)),
            "0900001040fc54d94110ac022a9e010a110a0a747261696e2f6c6f737315000020400a88010a136578706572745f6c"
            "6f61642f6c617965725f302a7109000000000000f03f11000000000000104019000000000000f03f21000000000000"
            "00402900000000000012403220000000000000f03f0000000000000040000000000000084000000000000010403a20"
            "0000000000000000000000000000d03f000000000000e03f000000000000d03f");
  // Event(wall_time=2.0, step=5, session_log=SessionLog(status=START))
  EXPECT_EQ(hex(event_session_start(2.0, 5)), "09000000000000004010053a020801");
}

TEST(TensorBoardEvents, RecordKeysBecomeGroupedTags) {
  const nlohmann::json rec = {{"step", 4},
                              {"loss", 2.0},
                              {"step_ms", 12.5},
                              {"skipped", true},
                              {"busiest30_share", {0.5, 0.75}},
                              {"selection_bias", {{-0.25, 0.5}}},
                              {"expert_load", {{0.75, 0.25}, {1.0, 0.0}}},
                              {"data", {{"samples", 8}, {"noisy_share", 0.125}}},
                              {"time", 1.0e9}};
  const TensorBoardValues v = tensorboard_values(rec, /*eval=*/false);
  std::vector<std::string> tags;
  for (const auto& s : v.scalars) tags.push_back(s.tag + "=" + fmt::format("{:g}", s.value));
  EXPECT_EQ(tags, (std::vector<std::string>{"train/loss=2", "train/skipped=1", "time/step_ms=12.5",
                                            "balance/layer_0/busiest30_share=0.5",
                                            "balance/layer_1/busiest30_share=0.75",
                                            "balance/layer_0/selection_bias_min=-0.25",
                                            "balance/layer_0/selection_bias_max=0.5", "data/noisy_share=0.125",
                                            "data/samples=8"}));
  ASSERT_EQ(v.histograms.size(), 2u);
  EXPECT_EQ(v.histograms[1].tag, "expert_load/layer_1");
  EXPECT_EQ(v.histograms[1].buckets, (std::vector<double>{1.0, 0.0}));
  const TensorBoardValues e = tensorboard_values({{"step", 4}, {"eval_loss", 3.5}, {"eval_tokens", 64}}, true);
  ASSERT_EQ(e.scalars.size(), 2u);
  EXPECT_EQ(e.scalars[0].tag, "eval/loss");
  EXPECT_EQ(e.scalars[0].value, 3.5);
}

// TensorBoard reads a folder's event files in name order: a resumed run's new file must come after
// the earlier ones even when their time stamps are ahead of this machine's clock.
TEST(TensorBoardWriter, ANewFileSortsAfterTheFolders) {
  const auto dir = test::temp_dir("tensorboard_file_order");
  mark_folder(dir, kWriterTensorBoard, {"events.out.tfevents.*"});
  const std::string later = "events.out.tfevents.4000000000.zz.99999.0";
  std::ofstream(dir / later).put('x');
  TensorBoardWriter w(dir);
  w.start(/*start_step=*/3);
  const std::string name = w.path().filename().string();
  EXPECT_GT(name, later);
  EXPECT_EQ(name.rfind("events.out.tfevents.4000000001.", 0), 0u) << name;
  w.close();
  EXPECT_TRUE(std::filesystem::exists(dir / later));
}

}  // namespace
}  // namespace switchyard::launch
