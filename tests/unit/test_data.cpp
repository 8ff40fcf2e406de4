// tests/unit/test_data.cpp: token files (HDF5, llm.c), text preparation, samplers, bad inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/hdf5_tokens.h"
#include "data/llmc_shard.h"
#include "data/prepare.h"
#include "data/sampler.h"
#include "data/token_source.h"
#include "tests/unit/testing.h"

namespace fs = std::filesystem;
using namespace switchyard;
using namespace switchyard::data;

namespace {

void write_file(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << p;
}

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

using test::usage_error;

#define EXPECT_USAGE_NAMING(stmt, name)                                        \
  do {                                                                         \
    std::string msg_ = usage_error([&] { stmt; });                             \
    EXPECT_NE(msg_.find(name), std::string::npos) << "message: " << msg_;      \
  } while (0)

// Independent FNV-1a (64-bit) for the split rule.
uint64_t ref_fnv(const std::string& s) {
  uint64_t h = 14695981039346656037ull;
  for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return h;
}

std::vector<int32_t> read_all(const TokenSource& src) {
  std::vector<int32_t> v(static_cast<size_t>(src.size()));
  src.read(0, src.size(), v.data());
  return v;
}

std::vector<int32_t> iota_tokens(int64_t n, int32_t mod) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<int32_t>(i % mod);
  return v;
}

}  // namespace

// ------------------------------------------------------------------ small pieces

TEST(Data, Fnv1aKnownValues) {
  EXPECT_EQ(fnv1a64(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(fnv1a64("a"), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(fnv1a64("foobar"), 0x85944171f73967e8ull);
}

TEST(Data, TextDetection) {
  EXPECT_TRUE(is_text_document("plain ascii\n"));
  EXPECT_TRUE(is_text_document("gr\xc3\xbc\xc3\x9f \xe2\x82\xac \xf0\x9f\x98\x80"));  // ü ß € 😀
  EXPECT_FALSE(is_text_document(std::string("a\0b", 3)));                             // NUL
  EXPECT_FALSE(is_text_document("\xff\xfe"));                                          // not UTF-8
  EXPECT_FALSE(is_text_document("\xc0\xaf"));                                          // overlong
  EXPECT_FALSE(is_text_document("\xe0\x80\xaf"));                                      // overlong
  EXPECT_FALSE(is_text_document("\xed\xa0\x80"));                                      // surrogate
  EXPECT_FALSE(is_text_document("\xf4\x90\x80\x80"));                                  // > U+10FFFF
  EXPECT_FALSE(is_text_document("abc\xe2\x82"));                                       // cut short
}

// ------------------------------------------------------------------ prepare

namespace {

struct CorpusFile {
  std::string rel;
  std::string bytes;
  bool text;
};

// Expected streams computed from the files the test wrote, by the documented rule.
struct Expected {
  std::vector<int32_t> tokens[2];   // 0 train, 1 valid
  std::vector<int64_t> offsets[2];
};

Expected expected_streams(std::vector<CorpusFile> files, double valid_fraction) {
  std::sort(files.begin(), files.end(), [](auto& a, auto& b) { return a.rel < b.rel; });
  std::vector<std::pair<const CorpusFile*, int>> docs;
  int n_valid = 0;
  for (auto& f : files) {
    if (!f.text || f.bytes.empty()) continue;
    int split = static_cast<double>(ref_fnv(f.rel) % 1000) < valid_fraction * 1000 ? 1 : 0;
    n_valid += split;
    docs.emplace_back(&f, split);
  }
  const int n = static_cast<int>(docs.size());
  if (valid_fraction > 0 && n >= 2) {
    if (n_valid == 0) docs.back().second = 1;
    if (n_valid == n) docs.back().second = 0;
  }
  Expected e;
  e.offsets[0] = {0};
  e.offsets[1] = {0};
  for (auto& [f, s] : docs) {
    for (unsigned char c : f->bytes) e.tokens[s].push_back(c);
    e.tokens[s].push_back(0);
    e.offsets[s].push_back(static_cast<int64_t>(e.tokens[s].size()));
  }
  return e;
}

std::vector<CorpusFile> make_corpus(const fs::path& dir) {
  std::vector<CorpusFile> files = {
      {"a.txt", "hello world\n", true},
      {"b.md", "# Title\n\nSome *markdown* text.\n", true},
      {"sub/c.txt", "gr\xc3\xbc\xc3\x9f dich \xe2\x82\xac\n", true},
      {"sub/deeper/d.txt", "deep file", true},
      {"sub/e.txt", std::string(3000, 'x') + "\n", true},
      {"z/last.txt", "the last one", true},
      {"image.bin", std::string("\x89PNG\r\n\x1a\n\0\0\0\rIHDR", 16), false},
      {"latin1.txt", "caf\xe9\n", false},
      {"empty.txt", "", true},
  };
  for (int i = 0; i < 12; ++i) files.push_back({fmt::format("many/f{:02d}.txt", i), fmt::format("doc {}\n", i), true});
  for (auto& f : files) write_file(dir / f.rel, f.bytes);
  return files;
}

}  // namespace

TEST(Data, PrepareReadsBackExactly) {
  auto root = test::temp_dir("data_prepare");
  auto corpus = root / "corpus";
  auto files = make_corpus(corpus);
  // A symlink loop and a symlinked duplicate must neither hang nor duplicate documents.
  fs::create_directory_symlink("..", corpus / "sub" / "loop");
  fs::create_symlink(corpus / "a.txt", corpus / "zz_link_to_a.txt");

  std::map<std::string, std::string> skipped;
  PrepareOptions opt;
  opt.on_skip = [&](const std::string& p, const std::string& why) {
    skipped[fs::path(p).filename().string()] = why;
  };
  const std::string out = (root / "out" / "tokens.h5").string();
  const double vf = 0.3;
  PrepareStats st = prepare_corpus({corpus.string()}, out, vf, opt);

  Expected e = expected_streams(files, vf);
  EXPECT_EQ(st.skipped_binary, 2);
  EXPECT_EQ(st.skipped_empty, 1);
  EXPECT_EQ(st.skipped_other, 1);  // the duplicate via symlink
  EXPECT_EQ(skipped["image.bin"], "binary");
  EXPECT_EQ(skipped["latin1.txt"], "binary");
  EXPECT_EQ(skipped["empty.txt"], "empty");
  EXPECT_EQ(skipped["zz_link_to_a.txt"], "duplicate");
  EXPECT_EQ(st.documents_train, static_cast<int64_t>(e.offsets[0].size()) - 1);
  EXPECT_EQ(st.documents_valid, static_cast<int64_t>(e.offsets[1].size()) - 1);
  EXPECT_EQ(st.documents(), 18);
  EXPECT_EQ(st.tokens_train, static_cast<int64_t>(e.tokens[0].size()));
  EXPECT_EQ(st.tokens_valid, static_cast<int64_t>(e.tokens[1].size()));
  EXPECT_GE(st.documents_valid, 1);
  EXPECT_GE(st.documents_train, 1);
  EXPECT_NE(st.summary(out).find(out), std::string::npos);

  // No temporary file left next to the output.
  int n_out = 0;
  for (auto& ent : fs::directory_iterator(root / "out")) {
    n_out += 1;
    EXPECT_EQ(ent.path().string(), out);
  }
  EXPECT_EQ(n_out, 1);

  EXPECT_EQ(detect_token_file_format(out), TokenFileFormat::hdf5);
  EXPECT_TRUE(token_file_has_split(out, "train"));
  EXPECT_TRUE(token_file_has_split(out, "valid"));
  const char* names[2] = {"train", "valid"};
  for (int s = 0; s < 2; ++s) {
    auto src = open_token_source(out, names[s]);
    EXPECT_EQ(src->vocab_hint(), 256);
    EXPECT_NE(src->describe().find(out), std::string::npos);
    EXPECT_NE(src->describe().find(names[s]), std::string::npos);
    EXPECT_EQ(read_all(*src), e.tokens[s]) << names[s];
    Hdf5TokenSource h(out, names[s]);
    EXPECT_EQ(h.doc_offsets(), e.offsets[s]) << names[s];
    EXPECT_EQ(h.documents(), static_cast<int64_t>(e.offsets[s].size()) - 1);
    EXPECT_EQ(h.tokenizer(), "bytes");
    // Range reads agree with the whole.
    if (src->size() > 10) {
      std::vector<int32_t> part(7);
      src->read(3, 7, part.data());
      EXPECT_TRUE(std::equal(part.begin(), part.end(), e.tokens[s].begin() + 3));
    }
  }
  // Independent check of one known document's bytes: a.txt followed by token 0.
  auto train = read_all(*open_token_source(out, "train"));
  auto valid = read_all(*open_token_source(out, "valid"));
  std::string all(train.begin(), train.end());
  all.append(valid.begin(), valid.end());
  EXPECT_NE(all.find(std::string("hello world\n") + '\0'), std::string::npos);

  // Deterministic: a second run writes the same token streams.
  const std::string out2 = (root / "out2.h5").string();
  prepare_corpus({corpus.string()}, out2, vf);
  EXPECT_EQ(read_all(*open_token_source(out2, "train")), e.tokens[0]);
  EXPECT_EQ(read_all(*open_token_source(out2, "valid")), e.tokens[1]);
}

TEST(Data, PrepareGuaranteesBothSplitsAndHonoursZeroFraction) {
  auto root = test::temp_dir("data_prepare_splits");
  // Two documents and a tiny fraction: hashes almost surely put both in train; one must move.
  std::vector<CorpusFile> files = {{"one.txt", "first", true}, {"two.txt", "second", true}};
  for (auto& f : files) write_file(root / "c" / f.rel, f.bytes);
  const std::string out = (root / "t.h5").string();
  auto st = prepare_corpus({(root / "c").string()}, out, 0.001);
  EXPECT_EQ(st.documents_train, 1);
  EXPECT_EQ(st.documents_valid, 1);
  Expected e = expected_streams(files, 0.001);
  EXPECT_EQ(read_all(*open_token_source(out, "train")), e.tokens[0]);
  EXPECT_EQ(read_all(*open_token_source(out, "valid")), e.tokens[1]);

  // Fraction 0: everything in train; the valid split exists but is empty.
  const std::string out0 = (root / "t0.h5").string();
  // Files given directly (not a folder): keyed by their path as given.
  auto st0 = prepare_corpus({(root / "c" / "two.txt").string(), (root / "c" / "one.txt").string()}, out0, 0.0);
  EXPECT_EQ(st0.documents_train, 2);
  EXPECT_EQ(st0.documents_valid, 0);
  std::vector<int32_t> want;
  for (std::string s : {"second", "first"}) {
    for (unsigned char c : s) want.push_back(c);
    want.push_back(0);
  }
  EXPECT_EQ(read_all(*open_token_source(out0, "train")), want);
  EXPECT_FALSE(token_file_has_split(out0, "valid"));
  EXPECT_USAGE_NAMING(open_token_source(out0, "valid"), out0);

  // Bad arguments and an input with no text.
  write_file(root / "bin" / "x.bin", std::string("\0\1\2", 3));
  EXPECT_USAGE_NAMING(prepare_corpus({(root / "bin").string()}, (root / "n.h5").string(), 0.1), "no text documents");
  EXPECT_FALSE(fs::exists(root / "n.h5"));
  EXPECT_USAGE_NAMING(prepare_corpus({(root / "missing").string()}, (root / "n.h5").string(), 0.1), "missing");
  usage_error([&] { prepare_corpus({(root / "c").string()}, (root / "n.h5").string(), 1.0); });
  usage_error([&] { prepare_corpus({(root / "c").string()}, (root / "n.h5").string(), -0.1); });
}

// ------------------------------------------------------------------ HDF5 writer/reader

TEST(Data, Hdf5RoundTripUint32AndSmallChunks) {
  auto root = test::temp_dir("data_hdf5_u32");
  const std::string path = (root / "big_vocab.h5").string();
  Hdf5TokenWriter::Options opt;
  opt.tokenizer = "custom";
  opt.chunk_tokens = 7;  // many chunks: reads cross chunk boundaries
  Hdf5TokenWriter w(path, 100000, opt);
  std::vector<int32_t> doc1 = {99999, 5, 70000, 0}, doc2 = {1, 2, 3};
  w.append("train", doc1.data(), 4);
  w.end_document("train");
  w.append("train", doc2.data(), 2);
  w.append("train", doc2.data() + 2, 1);  // a document appended in pieces
  w.end_document("train");
  std::vector<int32_t> v = iota_tokens(50, 65539);
  w.append("valid", v.data(), 50);  // left open: finish() ends it
  EXPECT_EQ(w.tokens("train"), 7);
  EXPECT_EQ(w.documents("train"), 2);
  int32_t bad = 100000;
  EXPECT_USAGE_NAMING(w.append("train", &bad, 1), path);
  EXPECT_FALSE(fs::exists(path));  // nothing visible before finish
  w.finish();

  Hdf5TokenSource tr(path, "train");
  EXPECT_EQ(tr.vocab_hint(), 100000);
  EXPECT_EQ(tr.tokenizer(), "custom");
  EXPECT_EQ(read_all(tr), (std::vector<int32_t>{99999, 5, 70000, 0, 1, 2, 3}));
  EXPECT_EQ(tr.doc_offsets(), (std::vector<int64_t>{0, 4, 7}));
  Hdf5TokenSource va(path, "valid");
  EXPECT_EQ(read_all(va), v);
  EXPECT_EQ(va.doc_offsets(), (std::vector<int64_t>{0, 50}));
  for (int64_t b = 0; b < 50; b += 5) {
    for (int64_t n : {1, 6, 13}) {
      if (b + n > 50) continue;
      std::vector<int32_t> part(static_cast<size_t>(n));
      va.read(b, n, part.data());
      EXPECT_TRUE(std::equal(part.begin(), part.end(), v.begin() + b)) << b << " " << n;
    }
  }
  EXPECT_EQ(hdf5_token_splits(path), (std::vector<std::string>{"train", "valid"}));
}

TEST(Data, Hdf5WriterWithoutFinishLeavesNothing) {
  auto root = test::temp_dir("data_hdf5_abandon");
  {
    Hdf5TokenWriter w((root / "x.h5").string(), 256);
    int32_t t = 5;
    w.append("train", &t, 1);
  }
  EXPECT_TRUE(fs::is_empty(root));
}

// ------------------------------------------------------------------ llm.c shards

TEST(Data, LlmcRoundTripBothVersions) {
  auto root = test::temp_dir("data_llmc");
  for (int version : {1, 7}) {
    const std::string path = (root / fmt::format("shard_v{}.bin", version)).string();
    std::vector<int32_t> toks = iota_tokens(5000, version == 1 ? 65536 : 1 << 30);
    toks[17] = version == 1 ? 65535 : 2000000000;
    write_llmc_shard(path, toks.data(), static_cast<int64_t>(toks.size()), version);
    const int tb = version == 1 ? 2 : 4;
    EXPECT_EQ(static_cast<int64_t>(fs::file_size(path)), 1024 + 5000 * tb);
    // Header read independently.
    std::string raw = read_bytes(path);
    int32_t h[3];
    std::memcpy(h, raw.data(), 12);
    EXPECT_EQ(h[0], version == 1 ? 20240520 : 20240801);
    EXPECT_EQ(h[1], version);
    EXPECT_EQ(h[2], 5000);
    EXPECT_EQ(detect_token_file_format(path), TokenFileFormat::llmc);
    auto src = open_token_source(path, "train");
    EXPECT_EQ(src->size(), 5000);
    EXPECT_EQ(src->vocab_hint(), 0);
    EXPECT_NE(src->describe().find(path), std::string::npos);
    EXPECT_EQ(read_all(*src), toks);
    std::vector<int32_t> part(10);
    src->read(4990, 10, part.data());
    EXPECT_TRUE(std::equal(part.begin(), part.end(), toks.begin() + 4990));
    LlmcShardSource direct(path);
    EXPECT_EQ(direct.version(), version);
    EXPECT_EQ(direct.token_bytes(), tb);
    EXPECT_TRUE(token_file_has_split(path, "train"));
    EXPECT_FALSE(token_file_has_split(path, "valid"));
    // An llm.c shard named as a validation file is read whole.
    EXPECT_EQ(open_token_source(path, "valid")->size(), 5000);
  }
  int32_t big = 70000;
  EXPECT_USAGE_NAMING(write_llmc_shard((root / "b.bin").string(), &big, 1, 1), "b.bin");
  int32_t neg = -1;
  EXPECT_USAGE_NAMING(write_llmc_shard((root / "b.bin").string(), &neg, 1, 7), "b.bin");
  EXPECT_USAGE_NAMING(write_llmc_shard((root / "b.bin").string(), &neg, 0, 3), "b.bin");
}

// ------------------------------------------------------------------ bad inputs

TEST(Data, BadInputsAreUsageErrorsNamingTheFile) {
  auto root = test::temp_dir("data_bad");
  auto p = [&](const std::string& n) { return (root / n).string(); };
  std::vector<int32_t> toks = iota_tokens(100, 50);
  write_llmc_shard(p("good.bin"), toks.data(), 100, 1);
  std::string good = read_bytes(p("good.bin"));

  // Missing file, with the hint to run prepare; a folder.
  const std::string missing = p("nope.h5");
  std::string msg = usage_error([&] { open_token_source(missing, "train"); });
  EXPECT_NE(msg.find(missing), std::string::npos) << msg;
  EXPECT_NE(msg.find("switchyard prepare"), std::string::npos) << msg;
  EXPECT_USAGE_NAMING(open_token_source(root.string(), "train"), root.string());

  // Truncated shard (and trailing bytes).
  write_file(p("trunc.bin"), good.substr(0, good.size() - 2));
  msg = usage_error([&] { open_token_source(p("trunc.bin"), "train"); });
  EXPECT_NE(msg.find(p("trunc.bin")), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  write_file(p("long.bin"), good + "xx");
  EXPECT_USAGE_NAMING(open_token_source(p("long.bin"), "train"), p("long.bin"));
  write_file(p("short.bin"), good.substr(0, 100));
  EXPECT_USAGE_NAMING(open_token_source(p("short.bin"), "train"), p("short.bin"));

  // Wrong magic: unknown format through open_token_source, "not an llm.c shard" directly.
  std::string wrong = good;
  int32_t m = 12345;
  std::memcpy(wrong.data(), &m, 4);
  write_file(p("magic.bin"), wrong);
  EXPECT_EQ(detect_token_file_format(p("magic.bin")), TokenFileFormat::unknown);
  EXPECT_USAGE_NAMING(open_token_source(p("magic.bin"), "train"), p("magic.bin"));
  EXPECT_USAGE_NAMING(LlmcShardSource{p("magic.bin")}, p("magic.bin"));

  // Bad version for the magic.
  std::string badver = good;
  int32_t v = 7;
  std::memcpy(badver.data() + 4, &v, 4);
  write_file(p("version.bin"), badver);
  msg = usage_error([&] { open_token_source(p("version.bin"), "train"); });
  EXPECT_NE(msg.find(p("version.bin")), std::string::npos) << msg;
  EXPECT_NE(msg.find("version 7"), std::string::npos) << msg;

  // Not HDF5 (a text file), an empty file, a truncated HDF5 file.
  write_file(p("text.h5"), "just some text, not HDF5\n");
  EXPECT_USAGE_NAMING(open_token_source(p("text.h5"), "train"), p("text.h5"));
  write_file(p("empty.h5"), "");
  EXPECT_USAGE_NAMING(open_token_source(p("empty.h5"), "train"), p("empty.h5"));
  write_file(p("trunc.h5"), std::string("\x89HDF\r\n\x1a\n", 8) + std::string(40, '\x01'));
  EXPECT_USAGE_NAMING(open_token_source(p("trunc.h5"), "train"), p("trunc.h5"));
  {  // a real token file cut in half
    Hdf5TokenWriter w(p("whole.h5"), 256);
    std::vector<int32_t> t = iota_tokens(100000, 256);
    w.append("train", t.data(), 100000);
    w.finish();
    std::string whole = read_bytes(p("whole.h5"));
    write_file(p("half.h5"), whole.substr(0, whole.size() / 2));
    EXPECT_USAGE_NAMING(
        {
          auto s = open_token_source(p("half.h5"), "train");
          std::vector<int32_t> buf(static_cast<size_t>(s->size()));
          s->read(0, s->size(), buf.data());
        },
        p("half.h5"));
  }

  // HDF5 without our attributes; with another format; with another version.
  {
    Hdf5TokenWriter::Options o;
    o.format = "";
    Hdf5TokenWriter w(p("noattr.h5"), 256, o);
    w.finish();
  }
  msg = usage_error([&] { open_token_source(p("noattr.h5"), "train"); });
  EXPECT_NE(msg.find(p("noattr.h5")), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a Switchyard token file"), std::string::npos) << msg;
  {
    Hdf5TokenWriter::Options o;
    o.format = "something-else";
    Hdf5TokenWriter w(p("otherfmt.h5"), 256, o);
    w.finish();
  }
  EXPECT_USAGE_NAMING(open_token_source(p("otherfmt.h5"), "train"), p("otherfmt.h5"));
  {
    Hdf5TokenWriter::Options o;
    o.version = 2;
    Hdf5TokenWriter w(p("v2.h5"), 256, o);
    w.finish();
  }
  msg = usage_error([&] { open_token_source(p("v2.h5"), "train"); });
  EXPECT_NE(msg.find(p("v2.h5")), std::string::npos) << msg;
  EXPECT_NE(msg.find("version 2"), std::string::npos) << msg;

  // Missing split.
  {
    Hdf5TokenWriter::Options o;
    o.splits = {"train"};
    Hdf5TokenWriter w(p("trainonly.h5"), 256, o);
    std::vector<int32_t> t = {1, 2, 3, 0};
    w.append("train", t.data(), 4);
    w.finish();
  }
  msg = usage_error([&] { open_token_source(p("trainonly.h5"), "valid"); });
  EXPECT_NE(msg.find(p("trainonly.h5") + " has no 'valid' split"), std::string::npos) << msg;
  EXPECT_FALSE(token_file_has_split(p("trainonly.h5"), "valid"));
  EXPECT_EQ(open_token_source(p("trainonly.h5"), "train")->size(), 4);

  // Token >= vocab: position named. Tokens 0..49 repeating; model vocab 40 -> token 40 at position 40.
  write_llmc_shard(p("vocab.bin"), toks.data(), 100, 1);
  auto src = open_token_source(p("vocab.bin"), "train");
  {
    EvalWindows ev(*src, 9, 40);  // windows of 10: window 4 holds position 40
    std::vector<int32_t> a(9), b(9);
    ev.read(3, a.data(), b.data());  // fine: tokens 30..39
    msg = usage_error([&] { ev.read(4, a.data(), b.data()); });
    EXPECT_NE(msg.find(p("vocab.bin")), std::string::npos) << msg;
    EXPECT_NE(msg.find("position 40"), std::string::npos) << msg;
  }
  {
    WindowSampler ws(*src, 30, 40, 1, 0, 1, 1);
    std::vector<int32_t> a(30 * 4), b(30 * 4);
    EXPECT_USAGE_NAMING(ws.next_batch(0, 0, 4, a.data(), b.data()), p("vocab.bin"));
  }
  // A file made for a bigger vocabulary than the model's.
  auto big = open_token_source(p("trainonly.h5"), "train");
  EXPECT_USAGE_NAMING((WindowSampler{*big, 2, 100, 1, 0, 1, 1}), p("trainonly.h5"));
  // Fewer than seq_len + 1 tokens.
  EXPECT_USAGE_NAMING((WindowSampler{*src, 100, 256, 1, 0, 1, 1}), p("vocab.bin"));
  EXPECT_USAGE_NAMING((EvalWindows{*src, 100, 256}), p("vocab.bin"));
}

// ------------------------------------------------------------------ samplers

TEST(Data, WindowSamplerDeterminism) {
  auto root = test::temp_dir("data_sampler");
  const int64_t N = 20000, T = 16, B = 4;
  std::vector<int32_t> toks(N);
  for (int64_t i = 0; i < N; ++i) toks[static_cast<size_t>(i)] = static_cast<int32_t>(i);  // token = position
  const std::string path = (root / "pos.bin").string();
  write_llmc_shard(path, toks.data(), N, 7);
  auto src = open_token_source(path, "train");

  auto batch = [&](uint64_t seed, int rank, int world, int64_t n_micro, int64_t step, int64_t micro, int64_t b) {
    WindowSampler s(*src, T, N, seed, rank, world, n_micro);
    std::vector<int32_t> x(static_cast<size_t>(b * T)), y(static_cast<size_t>(b * T));
    s.next_batch(step, micro, b, x.data(), y.data());
    return std::make_pair(x, y);
  };

  auto [x, y] = batch(42, 1, 4, 2, 7, 1, B);
  // Targets are tokens shifted by one; each row is a contiguous window.
  for (int64_t i = 0; i < B; ++i) {
    for (int64_t t = 0; t < T; ++t) {
      EXPECT_EQ(y[static_cast<size_t>(i * T + t)], x[static_cast<size_t>(i * T + t)] + 1);
      if (t > 0) {
        EXPECT_EQ(x[static_cast<size_t>(i * T + t)], x[static_cast<size_t>(i * T)] + t);
      }
    }
    EXPECT_GE(x[static_cast<size_t>(i * T)], 0);
    EXPECT_LE(x[static_cast<size_t>(i * T)] + T, N - 1);
  }
  // Same key -> same windows, from a fresh sampler (resume).
  EXPECT_EQ(batch(42, 1, 4, 2, 7, 1, B), std::make_pair(x, y));
  // Different rank, micro, step or seed -> different windows.
  EXPECT_NE(batch(42, 2, 4, 2, 7, 1, B).first, x);
  EXPECT_NE(batch(42, 1, 4, 2, 7, 0, B).first, x);
  EXPECT_NE(batch(42, 1, 4, 2, 8, 1, B).first, x);
  EXPECT_NE(batch(43, 1, 4, 2, 7, 1, B).first, x);

  // Another layout of the same global batch (world 2 x B 4 vs world 1 x B 8) sees the same samples.
  auto starts = [&](const std::vector<int32_t>& v, int64_t b) {
    std::vector<int32_t> s;
    for (int64_t i = 0; i < b; ++i) s.push_back(v[static_cast<size_t>(i * T)]);
    return s;
  };
  for (int64_t step : {0, 3}) {
    auto one = starts(batch(9, 0, 1, 1, step, 0, 8).first, 8);
    auto r0 = starts(batch(9, 0, 2, 1, step, 0, 4).first, 4);
    auto r1 = starts(batch(9, 1, 2, 1, step, 0, 4).first, 4);
    r0.insert(r0.end(), r1.begin(), r1.end());
    EXPECT_EQ(one, r0);
  }

  // Starts spread over the whole stream.
  WindowSampler s(*src, T, N, 5, 0, 1, 1);
  int64_t lo = N, hi = 0;
  std::set<int64_t> distinct;
  for (int64_t g = 0; g < 2000; ++g) {
    int64_t st = s.window_start(g);
    ASSERT_GE(st, 0);
    ASSERT_LE(st, N - T - 1);
    lo = std::min(lo, st);
    hi = std::max(hi, st);
    distinct.insert(st);
  }
  EXPECT_LT(lo, N / 50);
  EXPECT_GT(hi, N - N / 50);
  EXPECT_GT(distinct.size(), 1800u);
  EXPECT_EQ(s.global_index(2, 0, 4, 3), 2 * 4 + 3);
}

TEST(Data, EvalWindowsCoverTheStreamInOrder) {
  auto root = test::temp_dir("data_eval");
  const std::string out = (root / "t.h5").string();
  {
    Hdf5TokenWriter w(out, 256);
    std::vector<int32_t> t = iota_tokens(1000, 251);
    w.append("valid", t.data(), 1000);
    w.append("train", t.data(), 10);
    w.finish();
  }
  auto src = open_token_source(out, "valid");
  const int64_t T = 12;
  EvalWindows ev(*src, T, 256);
  EXPECT_EQ(ev.count(), 1000 / 13);
  std::vector<int32_t> all = read_all(*src), x(T), y(T);
  std::vector<int32_t> joined;
  for (int64_t w = 0; w < ev.count(); ++w) {
    ev.read(w, x.data(), y.data());
    joined.insert(joined.end(), x.begin(), x.end());
    joined.push_back(y.back());
    EXPECT_TRUE(std::equal(y.begin(), y.end() - 1, x.begin() + 1));
  }
  ASSERT_EQ(static_cast<int64_t>(joined.size()), ev.count() * (T + 1));
  EXPECT_TRUE(std::equal(joined.begin(), joined.end(), all.begin()));
}
