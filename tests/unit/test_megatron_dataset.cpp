// tests/unit/test_megatron_dataset.cpp: Megatron-LM / GPT-NeoX indexed datasets (.bin + .idx):
// every dtype against an independent Python writer (tests/scripts/lib/megatron_ref.py), path
// conventions and detection, the writer, and every bad input as a usage error naming the file.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/megatron_dataset.h"
#include "data/token_source.h"
#include "tests/unit/testing.h"

namespace fs = std::filesystem;
using namespace switchyard;
using namespace switchyard::data;

namespace {

void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << p;
}

std::vector<int64_t> read_line(std::istream& in) {
  std::string line;
  std::getline(in, line);
  std::istringstream s(line);
  std::vector<int64_t> v;
  for (int64_t x; s >> x;) v.push_back(x);
  return v;
}

std::vector<int64_t> read_all(const TokenSource& src) {
  std::vector<int32_t> v(static_cast<size_t>(src.size()));
  src.read(0, src.size(), v.data());
  return {v.begin(), v.end()};
}

template <typename T>
void put(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

// A hand-built index, field by field, so each test can break one field.
struct Index {
  std::string magic = std::string("MMIDIDX\0\0", 9);
  uint64_t version = 1;
  uint8_t code = 4;  // int32
  std::vector<int32_t> lengths = {3, 2, 4};
  std::vector<int64_t> pointers = {0, 12, 20};
  std::vector<int64_t> doc_idx = {0, 2, 3};
  std::string bytes() const {
    std::string s = magic;
    put(s, version);
    put(s, code);
    put(s, static_cast<uint64_t>(lengths.size()));
    put(s, static_cast<uint64_t>(doc_idx.size()));
    for (auto x : lengths) put(s, x);
    for (auto x : pointers) put(s, x);
    for (auto x : doc_idx) put(s, x);
    return s;
  }
};

template <typename T>
std::string bin_of(const std::vector<T>& v) {
  std::string s;
  for (T x : v) put(s, x);
  return s;
}

const std::vector<int32_t> kTokens = {5, 6, 7, 8, 9, 10, 11, 12, 13};

#define EXPECT_USAGE_WITH(stmt, name, what)                                                       \
  do {                                                                                            \
    std::string msg_ = test::usage_error([&] { stmt; });                                          \
    EXPECT_NE(msg_.find(name), std::string::npos) << "want " << (name) << " in: " << msg_;       \
    EXPECT_NE(msg_.find(what), std::string::npos) << "want '" << (what) << "' in: " << msg_;     \
  } while (0)

}  // namespace

TEST(Megatron, EveryDtypeMatchesTheIndependentPythonWriter) {
  const fs::path root = test::temp_dir("megatron_ref");
  const std::string cmd = "/usr/bin/python3 " + std::string(SWITCHYARD_SOURCE_DIR) +
                          "/tests/scripts/lib/megatron_ref.py write " + root.string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  for (int code = 1; code <= 8; ++code) {
    SCOPED_TRACE(megatron_dtype_name(code));
    const std::string prefix = (root / fmt::format("d{}", code)).string();
    std::ifstream in(prefix + ".expected");
    const auto tokens = read_line(in), doc_offsets = read_line(in), doc_idx = read_line(in);
    ASSERT_FALSE(tokens.empty());
    for (const std::string& path : {prefix, prefix + ".idx", prefix + ".bin"}) {
      EXPECT_EQ(detect_token_file_format(path), TokenFileFormat::megatron) << path;
      auto src = open_token_source(path, "train");
      EXPECT_EQ(read_all(*src), tokens) << path;
      auto* ds = dynamic_cast<MegatronDataset*>(src.get());
      ASSERT_NE(ds, nullptr);
      EXPECT_EQ(ds->dtype_code(), code);
      EXPECT_EQ(ds->doc_offsets(), doc_offsets);
      EXPECT_EQ(ds->document_index(), doc_idx);
      EXPECT_EQ(ds->documents(), static_cast<int64_t>(doc_idx.size()) - 1);
      EXPECT_EQ(ds->sequences(), doc_idx.back());
    }
    // a range in the middle, and no splits: "valid" reads the same stream, has_split only "train"
    auto src = open_token_source(prefix, "valid");
    std::vector<int32_t> mid(5);
    src->read(7, 5, mid.data());
    for (int i = 0; i < 5; ++i) EXPECT_EQ(mid[static_cast<size_t>(i)], tokens[static_cast<size_t>(7 + i)]);
    EXPECT_TRUE(token_file_has_split(prefix, "train"));
    EXPECT_FALSE(token_file_has_split(prefix, "valid"));
  }
}

TEST(Megatron, WriterRoundTripAndDtypeChoice) {
  const fs::path root = test::temp_dir("megatron_writer");
  EXPECT_EQ(megatron_dtype_for_vocab(256), megatron_dtype_uint16);
  EXPECT_EQ(megatron_dtype_for_vocab(65536), megatron_dtype_uint16);
  EXPECT_EQ(megatron_dtype_for_vocab(65537), megatron_dtype_int32);
  for (int code : {8, 4}) {
    const std::string prefix = (root / fmt::format("w{}", code)).string();
    const std::vector<int32_t> a = {1, 2, 3}, b = {65535, 0};
    {
      MegatronDatasetWriter w(prefix, code);
      w.append(a.data(), 3);
      w.end_document();
      w.append(b.data(), 1);
      w.append(b.data() + 1, 1);
      w.end_document();
      w.finish();
    }
    MegatronDataset ds(prefix + ".bin");
    EXPECT_EQ(ds.dtype_code(), code);
    EXPECT_EQ(read_all(ds), (std::vector<int64_t>{1, 2, 3, 65535, 0}));
    EXPECT_EQ(ds.doc_offsets(), (std::vector<int64_t>{0, 3, 5}));
    EXPECT_EQ(ds.document_index(), (std::vector<int64_t>{0, 1, 2}));
    EXPECT_EQ(fs::file_size(prefix + ".bin"), 5u * static_cast<unsigned>(megatron_dtype_bytes(code)));
  }
  // a token beyond uint16, no documents, and nothing left behind by an unfinished writer
  const int32_t big = 70000;
  EXPECT_USAGE_WITH(MegatronDatasetWriter((root / "big").string(), 8).append(&big, 1), "big", "uint16");
  EXPECT_USAGE_WITH(MegatronDatasetWriter((root / "none").string(), 8).finish(), "none", "empty");
  int files = 0;
  for (auto& e : fs::directory_iterator(root)) files += e.path().string().find(".tmp-") != std::string::npos;
  EXPECT_EQ(files, 0);
}

TEST(Megatron, BadInputsAreUsageErrorsNamingTheFile) {
  const fs::path root = test::temp_dir("megatron_bad");
  int n = 0;
  // writes a dataset; returns its prefix
  auto make = [&](const Index& idx, const std::string& bin) {
    const std::string prefix = (root / fmt::format("case{}", n++)).string();
    write_file(prefix + ".idx", idx.bytes());
    write_file(prefix + ".bin", bin);
    return prefix;
  };
  const std::string good_bin = bin_of(kTokens);
  const std::string good = make(Index{}, good_bin);
  EXPECT_EQ(read_all(*open_token_source(good, "train")), std::vector<int64_t>(kTokens.begin(), kTokens.end()));

  // truncated .idx: inside the magic, inside the header, inside the arrays
  for (size_t cut : {5u, 20u, 60u}) {
    const std::string p = make(Index{}, good_bin);
    write_file(p + ".idx", Index{}.bytes().substr(0, cut));
    EXPECT_USAGE_WITH(open_token_source(p, "train"), p + ".idx", "truncated");
  }
  Index i;
  i.magic = std::string("TNTIDX\0\0\0", 9);  // the other (non-mmap) indexed dataset
  std::string p = make(i, good_bin);
  EXPECT_USAGE_WITH(open_token_source(p, "train"), p + ".idx", "not a Megatron index");
  EXPECT_USAGE_WITH(open_token_source(p + ".idx", "train"), p + ".idx", "Megatron");
  i = {};
  i.version = 2;
  p = make(i, good_bin);
  EXPECT_USAGE_WITH(open_token_source(p, "train"), p + ".idx", "version 2");
  for (uint8_t code : {0, 9, 255}) {
    i = {};
    i.code = code;
    p = make(i, good_bin);
    EXPECT_USAGE_WITH(open_token_source(p, "train"), p + ".idx", fmt::format("dtype code {}", code));
  }
  // sizes and pointers that run past the end of .bin, or leave gaps
  i = {};
  i.lengths = {3, 2, 5};
  p = make(i, good_bin);
  EXPECT_USAGE_WITH(open_token_source(p, "train"), p + ".bin", "past the end");
  i = {};
  i.pointers = {0, 12, 400};
  p = make(i, good_bin);
  EXPECT_USAGE_WITH(open_token_source(p, "train"), p + ".bin", "past the end");
  i = {};
  i.pointers = {0, 16, 20};
  p = make(i, good_bin);
  EXPECT_USAGE_WITH(open_token_source(p, "train"), p + ".idx", "back to back");
  i = {};
  i.lengths = {3, -2, 4};
  p = make(i, good_bin);
  EXPECT_USAGE_WITH(open_token_source(p, "train"), p + ".idx", "negative length");
  // .bin missing, truncated, or with trailing bytes; a .bin given without its .idx
  p = make(Index{}, good_bin);
  fs::remove(p + ".bin");
  EXPECT_USAGE_WITH(open_token_source(p, "train"), p + ".bin", "no such file");
  p = make(Index{}, good_bin.substr(0, good_bin.size() - 4));
  EXPECT_USAGE_WITH(open_token_source(p, "train"), p + ".bin", "past the end");
  p = make(Index{}, good_bin + "xxxx");
  EXPECT_USAGE_WITH(open_token_source(p + ".bin", "train"), p + ".bin", "trailing bytes");
  p = make(Index{}, good_bin);
  fs::remove(p + ".idx");
  EXPECT_USAGE_WITH(open_token_source(p + ".bin", "train"), p + ".idx", "is missing");
  EXPECT_USAGE_WITH(open_token_source(p, "train"), p, "no such file");
  // the document index: not from 0, not monotone, not ending at the sequence count, empty
  for (auto [doc_idx, what] : {std::pair{std::vector<int64_t>{1, 2, 3}, "not 0"},
                               std::pair{std::vector<int64_t>{0, 2, 1, 3}, "monotonically"},
                               std::pair{std::vector<int64_t>{0, 2}, "not at the sequence count"},
                               std::pair{std::vector<int64_t>{0, 4}, "beyond the last sequence"},
                               std::pair{std::vector<int64_t>{}, "document index is empty"}}) {
    i = {};
    i.doc_idx = doc_idx;
    p = make(i, good_bin);
    EXPECT_USAGE_WITH(open_token_source(p, "train"), p + ".idx", what);
  }
  // empty datasets: no sequences; sequences of no tokens
  i = {};
  i.lengths = {};
  i.pointers = {};
  i.doc_idx = {0};
  p = make(i, "");
  EXPECT_USAGE_WITH(open_token_source(p, "train"), p + ".idx", "empty");
  i = {};
  i.lengths = {0, 0, 0};
  i.pointers = {0, 0, 0};
  p = make(i, "");
  EXPECT_USAGE_WITH(open_token_source(p, "train"), p + ".idx", "empty");
  EXPECT_USAGE_WITH(token_file_has_split(p, "train"), p + ".idx", "empty");
}

TEST(Megatron, TokensThatAreNotInt32AreUsageErrorsNamingTheFile) {
  const fs::path root = test::temp_dir("megatron_values");
  auto make = [&](const std::string& name, uint8_t code, const std::string& bin, int32_t count) {
    Index i;
    i.code = code;
    const int64_t item = megatron_dtype_bytes(code);
    i.lengths = {1, count - 1};
    i.pointers = {0, item};
    i.doc_idx = {0, 2};
    const std::string prefix = (root / name).string();
    write_file(prefix + ".idx", i.bytes());
    write_file(prefix + ".bin", bin);
    return prefix;
  };
  auto read_error = [](const std::string& prefix) {
    return test::usage_error([&] { read_all(*open_token_source(prefix, "train")); });
  };
  std::string p = make("i64", 5, bin_of(std::vector<int64_t>{1, int64_t{1} << 31, 2}), 3);
  std::string msg = read_error(p);
  EXPECT_NE(msg.find(p + ".bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find("2147483648 at position 1"), std::string::npos) << msg;
  p = make("f32", 7, bin_of(std::vector<float>{1.0f, 1.5f}), 2);
  msg = read_error(p);
  EXPECT_NE(msg.find(p + ".bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not an integral"), std::string::npos) << msg;
  p = make("f64", 6, bin_of(std::vector<double>{3e9, 1.0}), 2);
  EXPECT_NE(read_error(p).find(p + ".bin"), std::string::npos);
  // in range: int64 and float values that are int32 token ids read fine
  p = make("ok64", 5, bin_of(std::vector<int64_t>{7, -3, 2147483647}), 3);
  EXPECT_EQ(read_all(*open_token_source(p, "train")), (std::vector<int64_t>{7, -3, 2147483647}));
  p = make("okf", 6, bin_of(std::vector<double>{4.0, 2147483647.0}), 2);
  EXPECT_EQ(read_all(*open_token_source(p, "train")), (std::vector<int64_t>{4, 2147483647}));
}
