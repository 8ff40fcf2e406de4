// tests/unit/test_exchange_kernels.cpp: the token exchange's pack and sum kernels of core::Backend
// (gather_rows, scatter_rows, scatter_add_rows, gate_dot_scale) against plain reference loops, bit
// for bit: they are the same loops in the same summation order, now behind the backend table.
// Inputs live in the backend's memory (copied in and out), outputs are poisoned first, and the
// sizes reach the kernels' parallel paths.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <vector>

#include "core/backend.h"
#include "tests/unit/testing.h"

namespace switchyard {
namespace {

using test::DeviceCopy;

bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

constexpr float kPoison = -12345.f;

TEST(ExchangeKernels, GatherRowsSkipsNegativeIndices) {
  auto be = core::make_cpu_backend(2);
  const int64_t rows = 50, n = 700, C = 400;  // n * C * 4 bytes >= 1 MiB: the parallel path
  const std::vector<float> src = test::randn(rows * C, 1);
  std::vector<int64_t> index(n);
  for (int64_t i = 0; i < n; ++i) index[i] = i % 5 == 3 ? -1 : (i * 13) % rows;
  std::vector<float> want(static_cast<size_t>(n * C), kPoison);
  for (int64_t i = 0; i < n; ++i)
    if (index[i] >= 0)
      for (int64_t c = 0; c < C; ++c) want[i * C + c] = src[index[i] * C + c];

  DeviceCopy<float> s(*be, src), d(*be, std::vector<float>(want.size(), kPoison));
  DeviceCopy<int64_t> ix(*be, index);
  be->gather_rows(d.get(), s.get(), ix.get(), n, C * static_cast<int64_t>(sizeof(float)));
  EXPECT_TRUE(bit_equal(d.host(), want));
}

TEST(ExchangeKernels, ScatterRowsIsTheInverseOfGather) {
  auto be = core::make_cpu_backend(2);
  const int64_t n = 900, C = 300;
  const std::vector<float> src = test::randn(n * C, 2);
  std::vector<int64_t> index(n);
  for (int64_t i = 0; i < n; ++i) index[i] = (i * 7) % n;  // a permutation (gcd(7, 900) = 1)
  std::vector<float> want(src.size(), kPoison);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < C; ++c) want[index[i] * C + c] = src[i * C + c];

  DeviceCopy<float> s(*be, src), d(*be, std::vector<float>(src.size(), kPoison));
  DeviceCopy<int64_t> ix(*be, index);
  be->scatter_rows(d.get(), s.get(), ix.get(), n, C * static_cast<int64_t>(sizeof(float)));
  EXPECT_TRUE(bit_equal(d.host(), want));
  // single floats per row (the per-slot values of return_to_slots)
  DeviceCopy<float> d1(*be, std::vector<float>(static_cast<size_t>(n), kPoison));
  be->scatter_rows(d1.get(), s.get(), ix.get(), n, sizeof(float));
  const std::vector<float> got1 = d1.host();
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(got1[index[i]], src[i]);
}

// The summation, with and without weights and first-term flags, against the loop in index order.
TEST(ExchangeKernels, ScatterAddRowsSumsInIndexOrder) {
  auto be = core::make_cpu_backend(2);
  const int64_t n = 500, C = 600, rows = 37, src_rows = 120;  // n*C >= 2^18, C > one column block
  const std::vector<float> src = test::randn(src_rows * C, 3);
  const std::vector<float> w = test::randn(n, 4);
  std::vector<int64_t> dst_index(n), src_index(n);
  for (int64_t i = 0; i < n; ++i) {
    dst_index[i] = (i * 11) % rows;
    src_index[i] = (i * 17 + 5) % src_rows;
  }
  std::vector<uint8_t> first(static_cast<size_t>(n), 0), seen(static_cast<size_t>(rows), 0);
  for (int64_t i = 0; i < n; ++i) {
    first[i] = seen[dst_index[i]] == 0;
    seen[dst_index[i]] = 1;
  }
  const std::vector<float> init = test::randn(rows * C, 5);
  for (bool weighted : {false, true}) {
    for (bool with_first : {false, true}) {
      std::vector<float> want = init;
      for (int64_t i = 0; i < n; ++i) {
        const bool write = with_first && first[i] != 0;
        // the kernel's statements (the compiler contracts d += g * s alike in both)
        float* d = want.data() + dst_index[i] * C;
        const float* s = src.data() + src_index[i] * C;
        const float g = w[i];
        for (int64_t c = 0; c < C; ++c) {
          if (write)
            d[c] = weighted ? g * s[c] : s[c];
          else if (weighted)
            d[c] += g * s[c];
          else
            d[c] += s[c];
        }
      }
      DeviceCopy<float> s(*be, src), d(*be, init), wd(*be, w);
      DeviceCopy<int64_t> di(*be, dst_index), si(*be, src_index);
      DeviceCopy<uint8_t> fd(*be, first);
      be->scatter_add_rows(d.get(), di.get(), s.get(), si.get(), weighted ? wd.get() : nullptr,
                           with_first ? fd.get() : nullptr, n, C);
      EXPECT_TRUE(bit_equal(d.host(), want)) << "weighted " << weighted << ", first " << with_first;
    }
  }
}

TEST(ExchangeKernels, GateDotScale) {
  auto be = core::make_cpu_backend(2);
  const int64_t rows = 300, C = 1000;
  const std::vector<float> dy0 = test::randn(rows * C, 6), y = test::randn(rows * C, 7);
  const std::vector<float> gate = test::randn(rows, 8);
  std::vector<float> want_dy = dy0, want_dgate(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    double dot = 0;
    for (int64_t c = 0; c < C; ++c) dot += static_cast<double>(dy0[r * C + c]) * static_cast<double>(y[r * C + c]);
    want_dgate[r] = static_cast<float>(dot);
    for (int64_t c = 0; c < C; ++c) want_dy[r * C + c] = gate[r] * dy0[r * C + c];
  }
  DeviceCopy<float> dy(*be, dy0), yd(*be, y), gd(*be, gate);
  DeviceCopy<float> dgate(*be, std::vector<float>(static_cast<size_t>(rows), kPoison));
  be->gate_dot_scale(dy.get(), dgate.get(), yd.get(), gd.get(), rows, C);
  EXPECT_TRUE(bit_equal(dy.host(), want_dy));
  EXPECT_TRUE(bit_equal(dgate.host(), want_dgate));
}

}  // namespace
}  // namespace switchyard
