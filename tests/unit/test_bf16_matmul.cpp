// tests/unit/test_bf16_matmul.cpp: the native bf16 GEMM path of the CPU backend (oneDNN matmul on
// packed bf16 operands), which the backend picks over the emulated one (fp32 kernel on rounded
// operands) where it measures faster (AMX CPUs). Checked here by forcing it:
//  - packing to bf16 equals core/half.h's f32_to_bf16 (ties, NaN, inf, strided rows, tails);
//  - every transpose combination, alpha, beta 0/1 and non-compact leading dimensions give the
//    emulated path's result up to fp32 summation order (the products are exact in both);
//  - a mixed-precision model step under it matches the emulated one, and activation
//    checkpointing stays bit-identical under it (the native path is deterministic).
// Where oneDNN has no bf16 matmul (AVX2-only CPUs, or ONEDNN_MAX_CPU_ISA=AVX2 on any), the forced
// native tests skip, and the test of that case checks that auto falls back to emulation and that
// forcing native is a usage error that says why.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/cpu/bf16_matmul.h"
#include "core/cpu/cpu_backend.h"
#include "core/half.h"
#include "core/precision.h"
#include "moe/model.h"
#include "tests/unit/testing.h"

namespace switchyard {
namespace {

#define SKIP_WITHOUT_NATIVE_BF16()                                                        \
  if (!core::native_bf16_unavailable().empty()) GTEST_SKIP() << core::native_bf16_unavailable()

std::unique_ptr<core::Backend> backend_with(const char* mode) {
  setenv("SWITCHYARD_CPU_BF16_GEMM", mode, 1);
  auto be = core::make_cpu_backend(2);
  EXPECT_STREQ(static_cast<core::CpuBackend&>(*be).bf16_gemm_path(),
               std::string(mode) == "native" ? "native" : "emulated");
  unsetenv("SWITCHYARD_CPU_BF16_GEMM");
  return be;
}

// auto times both paths once and keeps the faster; which one depends on the CPU (AMX or not)
TEST(Bf16Matmul, AutoPicksOneOfTheTwoPaths) {
  unsetenv("SWITCHYARD_CPU_BF16_GEMM");
  auto be = core::make_cpu_backend(2);
  const std::string path = static_cast<core::CpuBackend&>(*be).bf16_gemm_path();
  EXPECT_TRUE(path == "native" || path == "emulated") << path;
  std::printf("auto chose the %s bf16 GEMM path on this CPU (oneDNN ISA %s): %s\n", path.c_str(),
              core::onednn_cpu_isa().c_str(), static_cast<core::CpuBackend&>(*be).bf16_gemm_why().c_str());
}

// oneDNN 2.6 creates bf16 matmuls from avx512_core up; below it (AVX2-only CPUs, or a cap) the
// backend must fall back to emulation, and forcing native must say why instead of crashing.
TEST(Bf16Matmul, AvailabilityFollowsOnednnIsaAndMissingNativeIsAUsageError) {
  const std::string isa = core::onednn_cpu_isa();
  const bool avx512 = isa.rfind("avx512_core", 0) == 0;
  EXPECT_EQ(core::native_bf16_unavailable().empty(), avx512) << "oneDNN ISA " << isa;
  if (avx512) return;
  EXPECT_NE(core::native_bf16_unavailable().find(isa), std::string::npos) << core::native_bf16_unavailable();
  unsetenv("SWITCHYARD_CPU_BF16_GEMM");
  auto be = core::make_cpu_backend(2);
  auto& cpu = static_cast<core::CpuBackend&>(*be);
  EXPECT_STREQ(cpu.bf16_gemm_path(), "emulated");
  EXPECT_EQ(cpu.bf16_gemm_why(), core::native_bf16_unavailable());
  try {
    cpu.set_native_bf16(true);
    ADD_FAILURE() << "set_native_bf16(true) without a oneDNN bf16 matmul did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage) << e.what();
  }
  setenv("SWITCHYARD_CPU_BF16_GEMM", "native", 1);
  auto forced = core::make_cpu_backend(2);
  const std::vector<float> a(64, 1.f);
  std::vector<float> c(64);
  const core::GemmRounding r{core::Dtype::bf16, core::Dtype::bf16, core::Dtype::f32, core::Dtype::bf16};
  try {
    forced->gemm(false, true, 8, 8, 8, 1.f, a.data(), 8, a.data(), 8, 0.f, c.data(), 8, r);
    ADD_FAILURE() << "forcing native bf16 without a oneDNN bf16 matmul did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage) << e.what();
    EXPECT_NE(std::string(e.what()).find("SWITCHYARD_CPU_BF16_GEMM=native"), std::string::npos) << e.what();
  }
  unsetenv("SWITCHYARD_CPU_BF16_GEMM");
}

TEST(Bf16Matmul, PackMatchesScalarConversion) {
  std::vector<float> src = test::randn(37 * 53, 3, 10.0f);
  const float specials[] = {0.f, -0.f, 1.0f + 1.0f / 256, 1.0f + 3.0f / 256, 3.3895314e38f,
                            std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(), 1e-40f, -2.5f};
  for (size_t i = 0; i < std::size(specials); ++i) src[i * 7] = specials[i];
  std::vector<uint16_t> got(37 * 50);
  core::pack_bf16(got.data(), src.data(), 53, 37, 50);  // 50 of 53 columns: strided rows, tails
  for (int64_t r = 0; r < 37; ++r)
    for (int64_t c = 0; c < 50; ++c) {
      const float x = src[static_cast<size_t>(r * 53 + c)];
      ASSERT_EQ(got[static_cast<size_t>(r * 50 + c)], core::f32_to_bf16(x)) << "row " << r << " col " << c << " x " << x;
    }
}

TEST(Bf16Matmul, NativeEqualsEmulatedUpToSummationOrder) {
  SKIP_WITHOUT_NATIVE_BF16();
  auto native = backend_with("native"), emulated = backend_with("emulated");
  const core::GemmRounding r{core::Dtype::bf16, core::Dtype::bf16, core::Dtype::f32, core::Dtype::bf16};
  const int64_t M = 45, N = 37, K = 70, pad = 3;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (float beta : {0.f, 1.f}) {
        const int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
        const auto A = test::randn((ta ? K : M) * lda, 11), B = test::randn((tb ? N : K) * ldb, 12);
        const auto C0 = test::randn(M * ldc, 13);
        std::vector<float> c1 = C0, c2 = C0;
        native->gemm(ta, tb, M, N, K, 1.f, A.data(), lda, B.data(), ldb, beta, c1.data(), ldc, r);
        emulated->gemm(ta, tb, M, N, K, 1.f, A.data(), lda, B.data(), ldb, beta, c2.data(), ldc, r);
        double num = 0, den = 0;
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < N; ++j) {
            const double d = c1[i * ldc + j] - c2[i * ldc + j];
            num += d * d;
            den += static_cast<double>(c2[i * ldc + j]) * c2[i * ldc + j];
          }
        EXPECT_LT(std::sqrt(num / den), 1e-6) << "ta " << ta << " tb " << tb << " beta " << beta;
        for (int64_t i = 0; i < M; ++i)  // the padding columns of C are untouched
          for (int64_t j = N; j < ldc; ++j) ASSERT_EQ(c1[i * ldc + j], C0[i * ldc + j]);
      }
}

TEST(Bf16Matmul, ModelStepMatchesEmulatedAndCheckpointingStaysBitIdentical) {
  SKIP_WITHOUT_NATIVE_BF16();
  const core::ModelConfig cfg = test::small_moe_model(2);
  std::vector<int32_t> tok(32), tgt(32);
  for (size_t i = 0; i < tok.size(); ++i) {
    tok[i] = static_cast<int32_t>((i * 2654435761u) % 64);
    tgt[i] = static_cast<int32_t>((i * 40503u + 3) % 64);
  }
  auto grads = [&](core::Backend& be, core::Recompute rc) {
    moe::ModelOptions o;
    o.precision = core::PrecisionPolicy{core::Dtype::bf16};
    o.recompute = rc;
    moe::Model m(be, cfg, 2, 16, {}, o);
    m.init_random(4);
    m.zero_grads();
    m.forward(tok.data(), tgt.data(), 2, 16);
    m.backward();
    std::vector<float> g(static_cast<size_t>(m.num_params()));
    be.copy_to_host(g.data(), m.grads(), g.size() * sizeof(float));
    return g;
  };
  auto native = backend_with("native"), emulated = backend_with("emulated");
  const auto gn = grads(*native, core::Recompute::none), ge = grads(*emulated, core::Recompute::none);
  double num = 0, den = 0;
  for (size_t i = 0; i < gn.size(); ++i) {
    num += (static_cast<double>(gn[i]) - ge[i]) * (static_cast<double>(gn[i]) - ge[i]);
    den += static_cast<double>(ge[i]) * ge[i];
  }
  // summation order differs, and a bf16 rounding of a GEMM output can then fall the other way
  EXPECT_LT(std::sqrt(num / den), 1e-4);  // measured 2.8e-8
  EXPECT_GT(std::sqrt(num / den), 0.0) << "the native path did not run";
  std::printf("native vs emulated bf16 gradients: %.3g norm-relative\n", std::sqrt(num / den));
  const auto gf = grads(*native, core::Recompute::full);
  EXPECT_EQ(0, std::memcmp(gf.data(), gn.data(), gn.size() * sizeof(float)));
}

}  // namespace
}  // namespace switchyard
