// tests/unit/test_precision_kernels.cpp: the CPU backend's precision kernels: round_to against the
// scalar conversions of core/half.h (bit for bit, over every fp16/bf16 value, the midpoints between
// neighbours and their fp32 neighbours, special values and random bit patterns), the rounding GEMM
// against round_to + plain GEMM + round_to (bit for bit, all transpositions, padded leading
// dimensions), and the memory accounting (live/peak bytes).
// DISABLED_Timing prints the cost of the rounding passes: run it with
//   test_precision_kernels --gtest_also_run_disabled_tests --gtest_filter='*Timing*'
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/half.h"
#include "tests/unit/testing.h"

namespace switchyard::core {
namespace {

float from_bits(uint32_t b) { return std::bit_cast<float>(b); }
uint32_t bits(float f) { return std::bit_cast<uint32_t>(f); }

// The reference: round trip through core/half.h.
float ref_round(Dtype d, float x) {
  switch (d) {
    case Dtype::bf16: return bf16_to_f32(f32_to_bf16(x));
    case Dtype::f16: return f16_to_f32(f32_to_f16(x));
    case Dtype::f32: return x;
  }
  return x;
}

// round_to over `in` (as one array) equals ref_round element by element, bit for bit.
void expect_round_matches(Backend& be, Dtype d, const std::vector<float>& in,
                          const std::string& what) {
  std::vector<float> got = in;
  be.round_to(d, got.data(), static_cast<int64_t>(got.size()));
  int64_t bad = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    const float want = ref_round(d, in[i]);
    if (bits(got[i]) != bits(want)) {
      if (++bad <= 10)
        ADD_FAILURE() << what << " " << dtype_name(d) << ": input 0x" << std::hex << bits(in[i])
                      << " (" << in[i] << ") gave 0x" << bits(got[i]) << " want 0x" << bits(want)
                      << std::dec;
    }
  }
  EXPECT_EQ(bad, 0) << what << " " << dtype_name(d) << ": " << bad << "/" << in.size()
                    << " mismatches";
}

// Adds x, its negation and the fp32 neighbours of both (+-1, +-2 ulp).
void add_with_neighbours(std::vector<float>& v, float x) {
  for (float s : {x, -x}) {
    v.push_back(s);
    float up = s, down = s;
    for (int k = 0; k < 2; ++k) {
      up = std::nextafter(up, std::numeric_limits<float>::infinity());
      down = std::nextafter(down, -std::numeric_limits<float>::infinity());
      v.push_back(up);
      v.push_back(down);
    }
  }
}

std::vector<float> boundary_sweep() {
  std::vector<float> v;
  const float named[] = {0.0f,
                         1.0f,
                         65504.0f,            // largest fp16
                         65519.99f,           // just below the fp16 overflow threshold
                         65520.0f,            // rounds to inf in fp16 (tie, 65504 is odd)
                         65536.0f,
                         6.1035156e-5f,       // 2^-14: smallest fp16 normal
                         6.0975552e-5f,       // largest fp16 subnormal
                         5.9604645e-8f,       // 2^-24: smallest fp16 subnormal
                         2.9802322e-8f,       // 2^-25: tie between 0 and the smallest subnormal
                         8.940697e-8f,        // 1.5 * 2^-24: tie, rounds to even (2 * 2^-24)
                         1.0f + 0x1p-11f,     // fp16 tie, rounds down to even
                         1.0f + 3 * 0x1p-11f, // fp16 tie, rounds up to even
                         1.0f + 0x1p-8f,      // bf16 tie, down
                         1.0f + 3 * 0x1p-8f,  // bf16 tie, up
                         3.4e38f,
                         std::numeric_limits<float>::max(),
                         std::numeric_limits<float>::min(),         // smallest fp32 normal
                         std::numeric_limits<float>::denorm_min(),  // fp32 denormals
                         from_bits(0x00400000u),
                         from_bits(0x007fffffu),
                         from_bits(0x7f7f8000u),  // bf16 tie below FLT_MAX's bf16 neighbour
                         from_bits(0x7f7fffffu)};
  for (float x : named) add_with_neighbours(v, x);
  // Every fp16 and every bf16 value, the midpoint to the next one up (the ties) and their fp32
  // neighbours: every rounding boundary of both formats, in every binade, subnormals included.
  for (uint32_t h = 0; h < 0x7c00u; ++h) {
    const double lo = f16_to_f32(static_cast<uint16_t>(h));
    const double hi = h + 1 == 0x7c00u ? 65536.0 : f16_to_f32(static_cast<uint16_t>(h + 1));
    add_with_neighbours(v, static_cast<float>(lo));
    add_with_neighbours(v, static_cast<float>((lo + hi) / 2));  // exact in fp32
  }
  for (uint32_t h = 0; h < 0x7f80u; ++h) {
    add_with_neighbours(v, bf16_to_f32(static_cast<uint16_t>(h)));
    add_with_neighbours(v, from_bits((h << 16) | 0x8000u));  // the tie above h
  }
  // Infinities and NaNs: quiet, signalling, with payload bits above and below the 16-bit cut.
  for (uint32_t b : {0x7f800000u, 0x7fc00000u, 0x7f800001u, 0x7fbfffffu, 0x7fc00001u, 0x7fffffffu,
                     0x7fa5a5a5u, 0x7f80e000u, 0x7f802000u, 0x7f801fffu}) {
    v.push_back(from_bits(b));
    v.push_back(from_bits(b | 0x80000000u));
  }
  return v;
}

TEST(PrecisionKernels, RoundToMatchesHalfOnBoundaries) {
  auto be = make_cpu_backend(2);
  const std::vector<float> sweep = boundary_sweep();
  ASSERT_GT(sweep.size(), 100000u);  // large enough for the parallel path
  for (Dtype d : {Dtype::bf16, Dtype::f16}) expect_round_matches(*be, d, sweep, "boundary sweep");
}

TEST(PrecisionKernels, RoundToMatchesHalfOnRandomBits) {
  auto be = make_cpu_backend(2);
  std::mt19937 rng(42);
  std::vector<float> any(1 << 20), finite(1 << 20), in_range(1 << 20);
  for (float& x : any) x = from_bits(static_cast<uint32_t>(rng()));
  for (float& x : finite) {
    uint32_t b;
    do b = static_cast<uint32_t>(rng());
    while ((b & 0x7f800000u) == 0x7f800000u);
    x = from_bits(b);
  }
  // Magnitudes around fp16's range (2^-30 .. 2^17), where its rounding is most varied.
  for (float& x : in_range) {
    const uint32_t b = static_cast<uint32_t>(rng());
    x = from_bits((b & 0x807fffffu) | ((97u + (b >> 23) % 48u) << 23));
  }
  for (Dtype d : {Dtype::bf16, Dtype::f16}) {
    expect_round_matches(*be, d, any, "random bits");
    expect_round_matches(*be, d, finite, "random finite bits");
    expect_round_matches(*be, d, in_range, "random fp16-range bits");
  }
}

TEST(PrecisionKernels, RoundToTailsAndOffsets) {
  auto be = make_cpu_backend(2);
  const std::vector<float> src = boundary_sweep();
  for (Dtype d : {Dtype::bf16, Dtype::f16}) {
    for (int64_t off = 0; off < 5; ++off) {
      for (int64_t n = 0; n <= 41; ++n) {
        std::vector<float> buf(src.begin() + 1000 * n, src.begin() + 1000 * n + 64);
        const std::vector<float> orig = buf;
        be->round_to(d, buf.data() + off, n);
        for (int64_t i = 0; i < 64; ++i) {
          const bool inside = i >= off && i < off + n;
          const float want = inside ? ref_round(d, orig[i]) : orig[i];
          ASSERT_EQ(bits(buf[i]), bits(want))
              << dtype_name(d) << " off=" << off << " n=" << n << " i=" << i;
        }
      }
    }
  }
  std::vector<float> x = {1.0f + 0x1p-20f, 3.0f};
  be->round_to(Dtype::f32, x.data(), 2);  // f32: as is
  EXPECT_EQ(x[0], 1.0f + 0x1p-20f);
}

// A padded row-major matrix of `rows` x `cols` with leading dimension ld >= cols.
std::vector<float> padded(int64_t rows, int64_t ld, uint64_t seed, float stddev) {
  return test::randn(rows * ld, seed, stddev);
}

// Rounds the rows x cols region of x (leading dimension ld) with round_to, row by row.
void round_region(Backend& be, Dtype d, float* x, int64_t rows, int64_t cols, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) be.round_to(d, x + r * ld, cols);
}

void check_gemm_equivalence(Backend& be, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                            float beta, GemmRounding rnd, float scale) {
  const int64_t a_rows = ta ? K : M, a_cols = ta ? M : K;
  const int64_t b_rows = tb ? N : K, b_cols = tb ? K : N;
  const int64_t lda = a_cols + 3, ldb = b_cols + 5, ldc = N + 7;
  const std::vector<float> A = padded(a_rows, lda, 11, scale), B = padded(b_rows, ldb, 12, scale);
  const std::vector<float> C0 = padded(M, ldc, 13, scale * scale);
  const float alpha = 0.75f;
  // The rounding GEMM.
  std::vector<float> A1 = A, B1 = B, C1 = C0;
  be.gemm(ta, tb, M, N, K, alpha, A1.data(), lda, B1.data(), ldb, beta, C1.data(), ldc, rnd);
  // The reference: round the operands with round_to, plain GEMM, round_to on C.
  std::vector<float> A2 = A, B2 = B, C2 = C0;
  round_region(be, rnd.a, A2.data(), a_rows, a_cols, lda);
  round_region(be, rnd.b, B2.data(), b_rows, b_cols, ldb);
  be.gemm(ta, tb, M, N, K, alpha, A2.data(), lda, B2.data(), ldb, beta, C2.data(), ldc);
  round_region(be, rnd.c, C2.data(), M, N, ldc);
  const std::string what = std::string("ta=") + std::to_string(ta) + " tb=" + std::to_string(tb) +
                           " M=" + std::to_string(M) + " N=" + std::to_string(N) +
                           " K=" + std::to_string(K) + " beta=" + std::to_string(beta) + " a=" +
                           dtype_name(rnd.a) + " b=" + dtype_name(rnd.b) + " c=" + dtype_name(rnd.c);
  // Inputs unmodified, C's padding untouched, C bit for bit the reference's.
  for (size_t i = 0; i < A.size(); ++i) ASSERT_EQ(bits(A1[i]), bits(A[i])) << what << " A " << i;
  for (size_t i = 0; i < B.size(); ++i) ASSERT_EQ(bits(B1[i]), bits(B[i])) << what << " B " << i;
  int64_t bad = 0;
  for (int64_t i = 0; i < M * ldc; ++i) bad += bits(C1[i]) != bits(C2[i]);
  EXPECT_EQ(bad, 0) << what << ": C differs from round_to + gemm + round_to in " << bad << " places";
  for (int64_t r = 0; r < M; ++r)
    for (int64_t c = N; c < ldc; ++c) ASSERT_EQ(bits(C1[r * ldc + c]), bits(C0[r * ldc + c])) << what;
  // The rounded result really is representable in c's dtype (and differs from fp32 somewhere).
  if (rnd.c != Dtype::f32) {
    for (int64_t r = 0; r < M; ++r)
      for (int64_t c = 0; c < N; ++c) {
        const float x = C1[r * ldc + c];
        ASSERT_EQ(bits(x), bits(ref_round(rnd.c, x))) << what;
      }
  }
}

TEST(PrecisionKernels, RoundingGemmEqualsRoundThenGemm) {
  auto be = make_cpu_backend(2);
  for (Dtype d : {Dtype::bf16, Dtype::f16}) {
    const GemmRounding cases[] = {{d, d, d}, {d, Dtype::f32, Dtype::f32},
                                  {Dtype::f32, d, Dtype::f32}, {Dtype::f32, Dtype::f32, d},
                                  {d, d, Dtype::f32}};
    for (const GemmRounding& rnd : cases)
      for (bool ta : {false, true})
        for (bool tb : {false, true})
          for (float beta : {0.0f, 1.0f}) {
            check_gemm_equivalence(*be, ta, tb, 37, 29, 45, beta, rnd, 1.0f);
            check_gemm_equivalence(*be, ta, tb, 130, 97, 70, beta, rnd, 1.0f);
          }
  }
  // K == 0: C = beta * C, rounded.
  check_gemm_equivalence(*be, false, false, 9, 11, 0, 1.0f, {Dtype::f16, Dtype::f16, Dtype::f16},
                         1.0f);
}

TEST(PrecisionKernels, Fp16GemmOverflowGivesInf) {
  auto be = make_cpu_backend(2);
  const int64_t K = 4;
  std::vector<float> A = {200.f, 200.f, 200.f, 200.f, -200.f, -200.f, -200.f, -200.f};  // [2,4]
  std::vector<float> B = {100.f, 100.f, 100.f, 100.f};                                  // [4,1]
  std::vector<float> C(2, 0.f);
  // 80000 > 65504: +-inf in fp16; finite in fp32 and in bf16 (rounded to 79872).
  be->gemm(false, false, 2, 1, K, 1.f, A.data(), K, B.data(), 1, 0.f, C.data(), 1,
           {Dtype::f16, Dtype::f16, Dtype::f16});
  EXPECT_TRUE(std::isinf(C[0]) && C[0] > 0) << C[0];
  EXPECT_TRUE(std::isinf(C[1]) && C[1] < 0) << C[1];
  be->gemm(false, false, 2, 1, K, 1.f, A.data(), K, B.data(), 1, 0.f, C.data(), 1,
           {Dtype::f16, Dtype::f16, Dtype::f32});
  EXPECT_EQ(C[0], 80000.f);
  be->gemm(false, false, 2, 1, K, 1.f, A.data(), K, B.data(), 1, 0.f, C.data(), 1,
           {Dtype::bf16, Dtype::bf16, Dtype::bf16});
  EXPECT_EQ(C[0], 79872.f);
  EXPECT_EQ(C[1], -79872.f);
  // An operand above 65504 is inf once rounded to fp16: inf * positive = inf.
  std::vector<float> big = {70000.f, 1.f, 1.f, 1.f};
  be->gemm(false, false, 1, 1, K, 1.f, big.data(), K, B.data(), 1, 0.f, C.data(), 1,
           {Dtype::f16, Dtype::f32, Dtype::f32});
  EXPECT_TRUE(std::isinf(C[0])) << C[0];
  EXPECT_EQ(big[0], 70000.f);  // the operand in memory is not modified
}

TEST(PrecisionKernels, MemoryStats) {
  auto be = make_cpu_backend(2);
  const MemoryStats s0 = be->memory_stats();
  EXPECT_GE(s0.live_bytes, 0);
  EXPECT_EQ(s0.peak_bytes, s0.live_bytes);
  void* p = be->alloc(1000);
  MemoryStats s = be->memory_stats();
  EXPECT_EQ(s.live_bytes, s0.live_bytes + 1024);
  EXPECT_EQ(s.peak_bytes, s.live_bytes);
  void* q = be->alloc(64 * 100);
  s = be->memory_stats();
  EXPECT_EQ(s.live_bytes, s0.live_bytes + 1024 + 6400);
  EXPECT_EQ(s.peak_bytes, s.live_bytes);
  be->release(p);
  s = be->memory_stats();
  EXPECT_EQ(s.live_bytes, s0.live_bytes + 6400);
  EXPECT_EQ(s.peak_bytes, s0.live_bytes + 1024 + 6400);  // the peak stays
  be->reset_peak_memory();
  s = be->memory_stats();
  EXPECT_EQ(s.peak_bytes, s.live_bytes);
  void* z = be->alloc(0);  // holds 64 bytes
  EXPECT_EQ(be->memory_stats().live_bytes, s0.live_bytes + 6400 + 64);
  be->release(z);
  be->release(nullptr);  // no-op
  be->release(q);
  s = be->memory_stats();
  EXPECT_EQ(s.live_bytes, s0.live_bytes);
  EXPECT_EQ(s.peak_bytes, s0.live_bytes + 6400 + 64);
  int not_ours = 0;
  EXPECT_THROW(be->release(&not_ours), Error);
  EXPECT_EQ(be->memory_stats().live_bytes, s0.live_bytes);
}

TEST(PrecisionKernels, GemmScratchCountsAndIsReused) {
  auto be = make_cpu_backend(2);
  const int64_t M = 10, N = 3, K = 100;  // A: 1000 floats = 4000 bytes -> 4032
  std::vector<float> A = test::randn(M * K, 1), B = test::randn(K * N, 2), C(M * N);
  const int64_t live0 = be->memory_stats().live_bytes;
  be->gemm(false, false, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, C.data(), N,
           {Dtype::bf16, Dtype::f32, Dtype::bf16});
  const int64_t live1 = be->memory_stats().live_bytes;
  EXPECT_EQ(live1, live0 + 4032);
  for (int i = 0; i < 3; ++i)  // the same or smaller: no new allocation
    be->gemm(false, false, M / 2, N, K, 1.f, A.data(), K, B.data(), N, 0.f, C.data(), N,
             {Dtype::bf16, Dtype::f32, Dtype::f32});
  EXPECT_EQ(be->memory_stats().live_bytes, live1);
  // Plain GEMMs never touch the scratch.
  auto be2 = make_cpu_backend(2);
  const int64_t plain0 = be2->memory_stats().live_bytes;
  be2->gemm(false, false, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, C.data(), N);
  EXPECT_EQ(be2->memory_stats().live_bytes, plain0);
}

TEST(PrecisionKernels, DtypeNames) {
  EXPECT_STREQ(dtype_name(Dtype::f32), "fp32");
  EXPECT_STREQ(dtype_name(Dtype::bf16), "bf16");
  EXPECT_STREQ(dtype_name(Dtype::f16), "fp16");
}

// Not a check: prints the cost of the rounding passes against the plain GEMM.
TEST(PrecisionKernels, DISABLED_Timing) {
  auto be = make_cpu_backend(0);
  const int64_t M = 2048, N = 1024, K = 256;
  float* A = static_cast<float*>(be->alloc(M * K * 4));
  float* B = static_cast<float*>(be->alloc(K * N * 4));
  float* C = static_cast<float*>(be->alloc(M * N * 4));
  const std::vector<float> a = test::randn(M * K, 1), b = test::randn(K * N, 2);
  be->copy_from_host(A, a.data(), a.size() * 4);
  be->copy_from_host(B, b.data(), b.size() * 4);
  auto time_ms = [&](auto&& f) {  // median of 21 runs after a warm-up (and scratch growth)
    f();
    std::vector<double> t;
    for (int rep = 0; rep < 21; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      f();
      t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                      .count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  };
  const int64_t big_n = int64_t{1} << 25;  // 128 MB: beyond the caches
  float* X = static_cast<float*>(be->alloc(big_n * 4));
  for (Dtype d : {Dtype::bf16, Dtype::f16}) {
    const double plain =
        time_ms([&] { be->gemm(false, false, M, N, K, 1.f, A, K, B, N, 0.f, C, N); });
    const double ac = time_ms([&] {
      be->gemm(false, false, M, N, K, 1.f, A, K, B, N, 0.f, C, N, {d, Dtype::f32, d});
    });
    const double abc = time_ms([&] {
      be->gemm(false, false, M, N, K, 1.f, A, K, B, N, 0.f, C, N, {d, d, d});
    });
    const double rc = time_ms([&] { be->round_to(d, C, M * N); });
    const double rx = time_ms([&] { be->round_to(d, X, big_n); });
    std::printf("threads=%d M=%lld N=%lld K=%lld %s: plain gemm %.3f ms, A+C rounded %.3f ms, "
                "A+B+C rounded %.3f ms; round_to of C (8 MB) %.3f ms = %.1f GB/s, of 128 MB "
                "%.2f ms = %.1f GB/s (read + write)\n",
                omp_get_max_threads(), static_cast<long long>(M), static_cast<long long>(N),
                static_cast<long long>(K), dtype_name(d), plain, ac, abc, rc,
                2.0 * M * N * 4 / rc / 1e6, rx, 2.0 * big_n * 4 / rx / 1e6);
  }
  be->release(X);
  be->release(A);
  be->release(B);
  be->release(C);
}

}  // namespace
}  // namespace switchyard::core
