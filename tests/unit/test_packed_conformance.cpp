// tests/unit/test_packed_conformance.cpp: the kernels of packed rows (AttentionShape::doc_start) on
// each backend (the harness of tests/unit/conformance.h) against an independent reference: the CPU
// backend running every document as a row of its own (B = 1, T = its length, no doc_start). RoPE
// positions restart at each document and attention is block-diagonal causal; an all-zero doc_start
// is bitwise the plain causal call; the device checker counts doc_start among the checked arguments.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/error.h"
#include "tests/unit/conformance.h"

namespace switchyard::core {
namespace {

using namespace conformance;  // NOLINT: the harness

// One document of a packed batch: row b, positions t0 .. t0+len-1.
struct Doc {
  int64_t b, t0, len;
};

// The documents of B rows given each row's document lengths (each row's lengths sum to T).
std::vector<Doc> documents(const std::vector<std::vector<int64_t>>& lengths) {
  std::vector<Doc> docs;
  for (size_t b = 0; b < lengths.size(); ++b) {
    int64_t t0 = 0;
    for (const int64_t len : lengths[b]) {
      docs.push_back({static_cast<int64_t>(b), t0, len});
      t0 += len;
    }
  }
  return docs;
}

// doc_start [B*T] of those documents.
std::vector<int32_t> doc_start_of(const std::vector<Doc>& docs, int64_t B, int64_t T) {
  std::vector<int32_t> v(static_cast<size_t>(B * T), -1);
  for (const Doc& d : docs)
    for (int64_t t = d.t0; t < d.t0 + d.len; ++t)
      v[static_cast<size_t>(d.b * T + t)] = static_cast<int32_t>(d.t0);
  return v;
}

// A document alone: one row of its length, no doc_start.
AttentionShape alone(const AttentionShape& s, const Doc& d) { return {1, d.len, s.NH, s.NKV, s.HD}; }

struct Case {
  AttentionShape s;
  std::vector<std::vector<int64_t>> lengths;
};

// Shapes as the configs use them and past the CUDA kernels' tiles (16 own rows, 32-row shared
// tiles): documents of one token, documents across tile edges, a row that is one document.
const std::vector<Case> kCases = {
    {{2, 7, 4, 2, 8}, {{3, 4}, {7}}},
    {{2, 53, 8, 2, 64}, {{20, 1, 32}, {5, 40, 8}}},
    {{1, 100, 4, 1, 128}, {{33, 50, 17}}},
};

class PackedConformance : public Conformance {
 protected:
  void rope_matches(const Case& c, uint64_t seed) {
    const AttentionShape& shape = c.s;
    const std::vector<Doc> docs = documents(c.lengths);
    const int64_t W = shape.qkv_width(), rows = shape.B * shape.T;
    auto doc = upload(doc_start_of(docs, shape.B, shape.T));
    auto qkv = rand(rows * W, seed), dqkv = rand(rows * W, seed + 1);
    AttentionShape s = shape;
    s.doc_start = doc.test;
    be_->rope_forward(qkv.test, s, 10000.f);
    be_->rope_backward(dqkv.test, s, 500.f);
    for (const Doc& d : docs) {
      const int64_t off = (d.b * shape.T + d.t0) * W;
      ref_->rope_forward(qkv.ref + off, alone(shape, d), 10000.f);
      ref_->rope_backward(dqkv.ref + off, alone(shape, d), 500.f);
    }
    expect_close("rope_forward", qkv, kTolF32);
    expect_close("rope_backward", dqkv, kTolF32);
  }

  // Forward then backward on the packed rows against the documents alone; false when the backend
  // does not have attention yet.
  bool packed_attention_matches(const Case& c, uint64_t seed) {
    const AttentionShape& shape = c.s;
    const std::vector<Doc> docs = documents(c.lengths);
    const int64_t W = shape.qkv_width(), QW = shape.q_width(), T = shape.T, NH = shape.NH;
    const int64_t rows = shape.B * T;
    auto doc = upload(doc_start_of(docs, shape.B, T));
    auto qkv = rand(rows * W, seed), out = poisoned(rows * QW), lse = poisoned(shape.B * NH * T);
    auto dout = rand(rows * QW, seed + 1), dqkv = poisoned(rows * W);
    AttentionShape s = shape;
    s.doc_start = doc.test;
    try {
      be_->attention_forward(out.test, lse.test, qkv.test, s);
      be_->attention_backward(dqkv.test, dout.test, out.test, lse.test, qkv.test, s);
    } catch (const Error& e) {
      if (std::string(e.what()).find("not implemented yet") == std::string::npos) throw;
      return false;
    }
    std::vector<float> lse_want(static_cast<size_t>(lse.n));
    for (const Doc& d : docs) {
      const AttentionShape a = alone(shape, d);
      const int64_t r0 = d.b * T + d.t0;
      auto lse_d = poisoned(NH * d.len);
      ref_->attention_forward(out.ref + r0 * QW, lse_d.ref, qkv.ref + r0 * W, a);
      ref_->attention_backward(dqkv.ref + r0 * W, dout.ref + r0 * QW, out.ref + r0 * QW, lse_d.ref,
                               qkv.ref + r0 * W, a);
      const std::vector<float> l = down(*ref_, lse_d.ref, lse_d.n);
      for (int64_t h = 0; h < NH; ++h)
        for (int64_t t = 0; t < d.len; ++t)
          lse_want[static_cast<size_t>((d.b * NH + h) * T + d.t0 + t)] =
              l[static_cast<size_t>(h * d.len + t)];
    }
    expect_close("attention_forward out", out, kTolF32);
    const double e = rel_l2(down(*be_, lse.test, lse.n), lse_want);
    EXPECT_LE(e, kTolF32) << "attention_forward lse on " << GetParam() << ": relative L2 error " << e;
    expect_close("attention_backward", dqkv, kTolF32);
    return true;
  }
};

TEST_P(PackedConformance, RopePositionsRestartAtEachDocument) {
  for (size_t i = 0; i < kCases.size(); ++i) {
    SCOPED_TRACE(testing::Message() << "case " << i);
    rope_matches(kCases[i], 300 + i);
  }
}

TEST_P(PackedConformance, AttentionIsBlockDiagonalCausal) {
  for (size_t i = 0; i < kCases.size(); ++i) {
    SCOPED_TRACE(testing::Message() << "case " << i);
    if (!packed_attention_matches(kCases[i], 310 + 2 * i))
      GTEST_SKIP() << GetParam() << " backend: attention not implemented yet";
  }
}

// doc_start all 0 (each row one document) takes the plain causal path: bitwise the call without it.
TEST_P(PackedConformance, AllZeroDocStartIsBitwisePlainCausal) {
  const AttentionShape plain{2, 53, 8, 2, 64};
  const int64_t rows = plain.B * plain.T, W = plain.qkv_width(), QW = plain.q_width();
  auto zeros = upload(std::vector<int32_t>(static_cast<size_t>(rows), 0));
  auto qkv = rand(rows * W, 330), dout = rand(rows * QW, 331);
  AttentionShape packed = plain;
  packed.doc_start = zeros.test;
  std::vector<std::vector<float>> got[2];
  for (int k = 0; k < 2; ++k) {
    const AttentionShape& s = k == 0 ? plain : packed;
    auto out = poisoned(rows * QW), lse = poisoned(plain.B * plain.NH * plain.T);
    auto dqkv = poisoned(rows * W), roped = upload(down(*be_, qkv.test, qkv.n));
    try {
      be_->attention_forward(out.test, lse.test, qkv.test, s);
      be_->attention_backward(dqkv.test, dout.test, out.test, lse.test, qkv.test, s);
    } catch (const Error& e) {
      if (std::string(e.what()).find("not implemented yet") == std::string::npos) throw;
      GTEST_SKIP() << GetParam() << " backend: attention not implemented yet";
    }
    be_->rope_forward(roped.test, s, 10000.f);
    for (const auto* p : {&out, &lse, &dqkv, &roped}) got[k].push_back(down(*be_, p->test, p->n));
  }
  const char* names[] = {"attention out", "lse", "dqkv", "rope"};
  for (size_t j = 0; j < got[0].size(); ++j)
    EXPECT_EQ(std::memcmp(got[0][j].data(), got[1][j].data(), got[0][j].size() * sizeof(float)), 0)
        << names[j] << " on " << GetParam() << " differs with an all-zero doc_start";
}

// The device checker checks doc_start's extent like every other pointer argument.
TEST_P(PackedConformance, DeviceCheckerChecksDocStart) {
  if (GetParam() != "device_check") GTEST_SKIP() << "the device-check backend only";
  const AttentionShape plain{1, 8, 2, 1, 8};
  const int64_t rows = plain.B * plain.T;
  auto short_doc = upload(std::vector<int32_t>(static_cast<size_t>(rows - 1), 0));
  auto qkv = rand(rows * plain.qkv_width(), 340), out = poisoned(rows * plain.q_width());
  auto lse = poisoned(plain.NH * plain.T);
  AttentionShape s = plain;
  s.doc_start = short_doc.test;
  EXPECT_HAS(test::internal_error([&] { be_->attention_forward(out.test, lse.test, qkv.test, s); }),
             "doc_start");
  EXPECT_HAS(test::internal_error([&] { be_->rope_forward(qkv.test, s, 10000.f); }), "doc_start");
  const std::vector<int32_t> host(static_cast<size_t>(rows), 0);
  s.doc_start = host.data();
  EXPECT_HAS(test::internal_error([&] { be_->rope_backward(qkv.test, s, 10000.f); }),
             "not device memory");
}

INSTANTIATE_TEST_SUITE_P(Backends, PackedConformance, ::testing::Values("cpu", "cuda", "device_check"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace switchyard::core
