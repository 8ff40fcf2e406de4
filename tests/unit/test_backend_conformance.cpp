// tests/unit/test_backend_conformance.cpp: every op of the backend table (core/backend.h) on each
// backend against the CPU backend, the reference (ggml's test-backend-ops idea). Each test feeds
// both backends the same fresh random inputs, poisons outputs with NaN first (so an output a kernel
// forgets to write fails), and compares: fp32 ops by relative L2 error <= 1e-5, GEMMs with
// bf16/fp16 operands <= 5e-3, indices and roundings exactly.
// Backends: "cpu" (against a second CPU backend: the harness itself is exercised, and one test
// checks that a perturbed output is detected), "cuda" (every test says "skipped: no GPU" where
// core::cuda_device_count() is 0, as on CPU-only CI; an op the CUDA backend does not have yet
// says "not implemented yet" and is skipped with that message) and "device_check" (the CPU backend
// behind the device-discipline checker, core/device_check_backend.h: every op's arguments checked
// against its device allocations, every host access to them a SIGSEGV).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "core/backend.h"
#include "core/error.h"
#include "core/half.h"
#include "tests/unit/conformance.h"

namespace switchyard::core {
namespace {

using namespace conformance;  // NOLINT: the harness
using test::randn;

// ---------------------------------------------------------------- the harness itself

TEST_P(Conformance, HarnessDetectsAPerturbedOrUnwrittenOutput) {
  const int64_t n = 1000;
  auto a = rand(n, 1), b = rand(n, 2), out = poisoned(n);
  both([&](Backend& be, bool r) { be.add(on(out, r), on(a, r), on(b, r), n); });
  auto [got, want] = get(out);
  EXPECT_LE(rel_l2(got, want), kTolF32);
  got[n / 2] += 0.01f;  // one element off by 0.01 among a thousand of norm ~45: ~2e-4 relative L2
  EXPECT_GT(rel_l2(got, want), kTolF32) << "the comparison must catch a perturbed element";
  got[n / 2] = kNaN;  // an element a kernel forgot to write stays poisoned
  EXPECT_GT(rel_l2(got, want), kTolF32) << "the comparison must catch a NaN";
}

// ---------------------------------------------------------------- memory

TEST_P(Conformance, MemoryIsZeroedCopiedAndCounted) {
  const MemoryStats before = be_->memory_stats();
  void* p = be_->alloc(1000);
  void* q = be_->alloc(0);
  EXPECT_EQ(be_->memory_stats().live_bytes - before.live_bytes, 1024 + 64);
  std::vector<float> zeros(250, 1.f), h = randn(250, 3);
  be_->copy_to_host(zeros.data(), p, 1000);
  EXPECT_EQ(zeros, std::vector<float>(250, 0.f)) << "alloc() must zero-fill";
  be_->copy_from_host(p, h.data(), 1000);
  void* c = be_->alloc(1000);
  be_->copy(c, p, 1000);
  std::vector<float> back(250);
  be_->copy_to_host(back.data(), c, 1000);
  EXPECT_EQ(back, h);
  be_->zero(c, 400);
  be_->copy_to_host(back.data(), c, 1000);
  EXPECT_EQ(back[99], 0.f);
  EXPECT_EQ(back[100], h[100]);
  EXPECT_GE(be_->memory_stats().peak_bytes, be_->memory_stats().live_bytes);
  be_->release(c);
  be_->release(q);
  be_->release(p);
  EXPECT_EQ(be_->memory_stats().live_bytes, before.live_bytes);
  be_->reset_peak_memory();
  EXPECT_EQ(be_->memory_stats().peak_bytes, before.live_bytes);
}

// ---------------------------------------------------------------- GEMM

struct GemmCase {
  bool ta, tb;
};

TEST_P(Conformance, GemmFp32AllTranspositionsWithLeadingDimensions) {
  const int64_t M = 37, N = 29, K = 53, pad = 3;
  for (const GemmCase g : {GemmCase{false, false}, {false, true}, {true, false}, {true, true}}) {
    SCOPED_TRACE(::testing::Message() << "trans_a " << g.ta << " trans_b " << g.tb);
    const int64_t lda = (g.ta ? M : K) + pad, ldb = (g.tb ? K : N) + pad, ldc = N + pad;
    auto A = rand((g.ta ? K : M) * lda, 10), B = rand((g.tb ? N : K) * ldb, 11);
    auto C = rand(M * ldc, 12);
    both([&](Backend& be, bool r) {
      be.gemm(g.ta, g.tb, M, N, K, 0.7f, on(A, r), lda, on(B, r), ldb, 0.3f, on(C, r), ldc);
    });
    expect_close("gemm beta 0.3", C, kTolF32);
    auto C0 = poisoned(M * N);  // beta 0: C is never read
    both([&](Backend& be, bool r) {
      be.gemm(g.ta, g.tb, M, N, K, 1.f, on(A, r), lda, on(B, r), ldb, 0.f, on(C0, r), N);
    });
    expect_close("gemm beta 0", C0, kTolF32);
  }
}

TEST_P(Conformance, GemmRoundingBf16AndFp16) {
  const int64_t M = 64, N = 48, K = 96;
  for (Dtype d : {Dtype::bf16, Dtype::f16}) {
    SCOPED_TRACE(fmt::format("dtype {}", d));
    // a fresh activation against a stored (already rounded) weight, output stored
    auto X = rand(M * K, 20), W = upload(rounded(d, randn(N * K, 21, 0.1f)));
    auto Y = poisoned(M * N);
    both([&](Backend& be, bool r) {
      be.gemm(false, true, M, N, K, 1.f, on(X, r), K, on(W, r), K, 0.f, on(Y, r), N,
              GemmRounding{d, Dtype::f32, d, d});
    });
    expect_close("activation GEMM", Y, kTolHalf);
    // weight gradient: fresh dY^T x stored X, accumulated in fp32
    auto dY = rand(M * N, 22), Xs = upload(rounded(d, randn(M * K, 23))), dW = rand(N * K, 24);
    both([&](Backend& be, bool r) {
      be.gemm(true, false, N, K, M, 1.f, on(dY, r), N, on(Xs, r), K, 1.f, on(dW, r), K,
              GemmRounding{d, Dtype::f32, Dtype::f32, d});
    });
    expect_close("weight-gradient GEMM", dW, kTolHalf);
    // fp32 product, output rounded (the router's input gradient)
    auto G = rand(M * 8, 25), R = rand(8 * K, 26), dX = poisoned(M * K);
    both([&](Backend& be, bool r) {
      be.gemm(false, false, M, K, 8, 1.f, on(G, r), 8, on(R, r), K, 0.f, on(dX, r), K,
              GemmRounding{Dtype::f32, Dtype::f32, d, Dtype::f32});
    });
    expect_close("fp32 GEMM with rounded output", dX, kTolHalf);
  }
}

TEST_P(Conformance, GemmEmptySizes) {
  auto A = rand(12, 30), B = rand(12, 31), C = rand(12, 32);
  both([&](Backend& be, bool r) {  // K = 0: C = beta * C
    be.gemm(false, false, 3, 4, 0, 1.f, on(A, r), 1, on(B, r), 4, 0.5f, on(C, r), 4);
  });
  expect_close("gemm K=0", C, kTolF32);
  const auto before = get(C).first;
  be_->gemm(false, false, 0, 4, 3, 1.f, A.test, 3, B.test, 4, 0.f, C.test, 4);  // M = 0: no-op
  be_->gemm(false, false, 3, 0, 3, 1.f, A.test, 3, B.test, 1, 0.f, C.test, 1);  // N = 0: no-op
  EXPECT_EQ(get(C).first, before);
}

// The roles of the experts' grouped GEMMs (core/ffn.cpp): each problem's C from grouped_gemm on
// the backend under test against gemm() per problem on the CPU. Rows per expert are M (forward,
// input gradient) or K (weight gradient): an empty expert gives M = 0 (nothing) or K = 0
// (C = beta * C). Operands of a 16-bit product are stored (already rounded), as layers keep them.
TEST_P(Conformance, GroupedGemmAgainstGemmPerProblem) {
  constexpr Dtype f32 = Dtype::f32, bf16 = Dtype::bf16, f16 = Dtype::f16;
  struct Role {
    const char* what;
    bool ta, tb;
    GemmRounding r;
    float beta;
  };
  const Role roles[] = {
      {"forward fp32", false, true, {}, 0.f},
      {"input gradient fp32, accumulated", false, false, {}, 0.3f},
      {"weight gradient fp32", true, false, {}, 1.f},
      {"weight gradient fp32, beta 0", true, false, {}, 0.f},
      {"fp32 product, rounded A and C", false, true, {bf16, f32, bf16, f32}, 0.f},
      {"bf16 stored activation", false, true, {f32, f32, bf16, bf16}, 0.f},
      {"bf16 fresh activation", false, false, {bf16, f32, bf16, bf16}, 0.f},
      {"bf16 activation, accumulated", false, false, {f32, f32, bf16, bf16}, 0.5f},
      {"bf16 weight gradient", true, false, {f32, f32, f32, bf16}, 1.f},
      {"fp16 stored activation", false, true, {f32, f32, f16, f16}, 0.f},
  };
  const std::vector<int64_t> rows = {13, 0, 7, 21, 7, 1};  // per expert
  const int64_t F = 24, G = 40, pad = 3;
  uint64_t seed = 300;
  for (const Role& role : roles) {
    SCOPED_TRACE(role.what);
    const GemmRounding& r = role.r;
    auto operand = [&](int64_t n) {
      std::vector<float> v = randn(n, seed++);
      return upload(r.operands == f32 ? v : rounded(r.operands, v));
    };
    std::vector<Pair<float>> As, Bs, Cs;
    std::vector<GemmProblem> test, ref;
    for (const int64_t n : rows) {
      const int64_t M = role.ta ? F : n, N = role.ta ? G : F, K = role.ta ? n : G;
      const int64_t lda = (role.ta ? M : K) + pad, ldb = (role.tb ? K : N) + pad;
      const int64_t ldc = role.beta == 0.f && M > 0 ? N : N + pad;
      As.push_back(operand((role.ta ? K : M) * lda));
      Bs.push_back(operand((role.tb ? N : K) * ldb));
      // beta 0: C poisoned (never read); an empty problem's C is one row it must leave as it is
      Cs.push_back(M == 0            ? rand(ldc, seed++)
                   : role.beta == 0.f ? poisoned(M * ldc)
                                      : rand(M * ldc, seed++));
      for (const bool is_ref : {false, true})
        (is_ref ? ref : test)
            .push_back({M, N, K, on(As.back(), is_ref), lda, on(Bs.back(), is_ref), ldb,
                        on(Cs.back(), is_ref), ldc});
    }
    be_->grouped_gemm(role.ta, role.tb, test, 0.7f, role.beta, r);
    for (const GemmProblem& p : ref)
      ref_->gemm(role.ta, role.tb, p.M, p.N, p.K, 0.7f, p.A, p.lda, p.B, p.ldb, role.beta, p.C,
                 p.ldc, r);
    for (size_t i = 0; i < rows.size(); ++i) {
      const std::string what = fmt::format("problem {} ({} rows)", i, rows[i]);
      if (test[i].M == 0) expect_bitwise(what, Cs[i]);
      else expect_close(what, Cs[i], r.any() ? kTolHalf : kTolF32);
    }
  }
  be_->grouped_gemm(false, true, {}, 1.f, 0.f);  // no problems: nothing
}

// fp16 outputs overflow to inf as gemm()'s do (the loss scaler's overflow check relies on it):
// constant operands make every sum exact whatever the order, 2048 * 40 overflows, 256 * 40 not.
TEST_P(Conformance, GroupedGemmFp16OverflowIsInf) {
  const int64_t M = 5, N = 6, K = 40;
  const GemmRounding r{Dtype::f32, Dtype::f32, Dtype::f16, Dtype::f16};
  auto B = upload(std::vector<float>(static_cast<size_t>(N * K), 1.f));
  std::vector<Pair<float>> As, Cs;
  for (const float a : {2048.f, 256.f}) {
    As.push_back(upload(std::vector<float>(static_cast<size_t>(M * K), a)));
    Cs.push_back(poisoned(M * N));
  }
  both([&](Backend& be, bool ref) {
    const std::vector<GemmProblem> p = {
        {M, N, K, on(As[0], ref), K, on(B, ref), K, on(Cs[0], ref), N},
        {M, N, K, on(As[1], ref), K, on(B, ref), K, on(Cs[1], ref), N}};
    be.grouped_gemm(false, true, p, 1.f, 0.f, r);
  });
  expect_bitwise("overflowing problem", Cs[0]);
  expect_bitwise("finite problem", Cs[1]);
  EXPECT_TRUE(std::isinf(get(Cs[0]).second[0]));
}

// ---------------------------------------------------------------- rounding, elementwise

TEST_P(Conformance, RoundToIsBitwiseTheCpus) {
  std::vector<float> v = randn(4000, 40);
  for (size_t i = 0; i < v.size(); i += 7) v[i] *= 3e4f;   // fp16 overflow to inf around 65520
  for (size_t i = 3; i < v.size(); i += 11) v[i] *= 1e-6f; // fp16 subnormals
  v[1] = INFINITY;
  v[2] = -INFINITY;
  v[4] = kNaN;
  v[5] = 65519.f;
  v[6] = 65520.f;
  v[8] = bf16_to_f32(0x3f80) + std::ldexp(1.f, -8);  // a bf16 tie: to even
  for (Dtype d : {Dtype::bf16, Dtype::f16, Dtype::f32}) {
    auto x = upload(v);
    both([&](Backend& be, bool r) { be.round_to(d, on(x, r), x.n); });
    expect_bitwise(fmt::format("round_to {}", d), x);
  }
}

TEST_P(Conformance, ElementwiseAndBias) {
  const int64_t rows = 33, cols = 70, n = rows * cols;
  auto a = rand(n, 50), b = rand(n, 51), out = poisoned(n), y = rand(n, 52), x = rand(n, 53);
  auto bias = rand(cols, 54), dbias = rand(cols, 55);
  both([&](Backend& be, bool r) {
    be.add(on(out, r), on(a, r), on(b, r), n);
    be.axpy(on(y, r), -0.37f, on(a, r), n);
    be.scale(on(x, r), 1.7f, n);
    be.add_bias(on(b, r), on(bias, r), rows, cols);
    be.bias_backward(on(dbias, r), on(a, r), rows, cols);
  });
  expect_close("add", out, kTolF32);
  expect_close("axpy", y, kTolF32);
  expect_close("scale", x, kTolF32);
  expect_close("add_bias", b, kTolF32);
  expect_close("bias_backward (+=)", dbias, kTolF32);
}

TEST_P(Conformance, SumSquares) {
  for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{1000}, int64_t{300001}}) {
    auto x = rand(n, 60 + n);
    const double got = be_->sum_squares(x.test, n), want = ref_->sum_squares(x.ref, n);
    EXPECT_NEAR(got, want, 1e-6 * std::max(1.0, want)) << "n " << n;
  }
}

TEST_P(Conformance, AdamwWithAndWithoutComputeWeights) {
  const int64_t n = 5000;
  for (Dtype d : {Dtype::f32, Dtype::bf16, Dtype::f16}) {
    auto p = rand(n, 70), g = rand(n, 71), m = rand(n, 72, 0.1f);
    auto v = upload(std::vector<float>(static_cast<size_t>(n), 0.01f)), pc = poisoned(n);
    const bool with_compute = d != Dtype::f32;
    both([&](Backend& be, bool r) {
      be.adamw_update(on(p, r), on(g, r), on(m, r), on(v, r), n, 0.5f, 1e-3f, 0.9f, 0.95f, 1e-8f,
                      0.1f, 1 - 0.9f * 0.9f, 1 - 0.95f * 0.95f, with_compute ? on(pc, r) : nullptr,
                      d);
    });
    expect_close("adamw p", p, kTolF32);
    expect_close("adamw m", m, kTolF32);
    expect_close("adamw v", v, kTolF32);
    if (with_compute) expect_close(fmt::format("adamw compute weights {}", d), pc, kTolHalf);
  }
}

// ---------------------------------------------------------------- dense layers

TEST_P(Conformance, EmbeddingWithRepeatedTokens) {
  const int64_t V = 11, N = 40, C = 19;
  auto wte = rand(V * C, 80), dwte = rand(V * C, 81), dout = rand(N * C, 82);
  auto tokens = upload(random_ints(N, 0, static_cast<int32_t>(V - 1), 83));
  auto out = poisoned(N * C);
  both([&](Backend& be, bool r) {
    be.embedding_forward(on(out, r), on(tokens, r), on(wte, r), N, C);
    be.embedding_backward(on(dwte, r), on(dout, r), on(tokens, r), N, C);
  });
  expect_close("embedding_forward", out, kTolF32);
  expect_close("embedding_backward (+=)", dwte, kTolF32);
}

TEST_P(Conformance, RmsnormForwardBackwardAndFused) {
  for (int64_t C : {int64_t{7}, int64_t{256}, int64_t{1000}}) {
    SCOPED_TRACE(fmt::format("C {}", C));
    const int64_t N = 21;
    auto x = rand(N * C, 90), w = rand(C, 91), out = poisoned(N * C), rstd = poisoned(N);
    both([&](Backend& be, bool r) { be.rmsnorm_forward(on(out, r), on(rstd, r), on(x, r), on(w, r), N, C, 1e-5f); });
    expect_close("rmsnorm_forward out", out, kTolF32);
    expect_close("rmsnorm_forward rstd", rstd, kTolF32);
    auto dout = rand(N * C, 92), dx = poisoned(N * C), dw = rand(C, 93), dxa = rand(N * C, 94);
    both([&](Backend& be, bool r) {
      be.rmsnorm_backward(on(dx, r), on(dw, r), on(dout, r), on(x, r), on(w, r), on(rstd, r), N, C);
      be.rmsnorm_backward_accumulate(on(dxa, r), on(dw, r), on(dout, r), on(x, r), on(w, r),
                                     on(rstd, r), N, C);
    });
    expect_close("rmsnorm_backward dx", dx, kTolF32);
    expect_close("rmsnorm_backward_accumulate dx (+=)", dxa, kTolF32);
    expect_close("rmsnorm dw (+=, twice)", dw, kTolF32);
    // fused residual add: into a separate sum, and in place over a
    auto a = rand(N * C, 95), b = rand(N * C, 96), sum = poisoned(N * C), out2 = poisoned(N * C);
    both([&](Backend& be, bool r) {
      be.add_rmsnorm_forward(on(sum, r), on(out2, r), on(rstd, r), on(a, r), on(b, r), on(w, r), N, C, 1e-5f);
      be.add_rmsnorm_forward(on(a, r), on(out, r), on(rstd, r), on(a, r), on(b, r), on(w, r), N, C, 1e-5f);
    });
    expect_close("add_rmsnorm sum", sum, kTolF32);
    expect_close("add_rmsnorm out", out2, kTolF32);
    expect_close("add_rmsnorm sum over a", a, kTolF32);
    expect_close("add_rmsnorm out (sum over a)", out, kTolF32);
  }
}

TEST_P(Conformance, RopeForwardBackward) {
  const AttentionShape s{2, 5, 4, 2, 8};
  auto qkv = rand(s.B * s.T * s.qkv_width(), 100), dqkv = rand(s.B * s.T * s.qkv_width(), 101);
  both([&](Backend& be, bool r) {
    be.rope_forward(on(qkv, r), s, 10000.f);
    be.rope_backward(on(dqkv, r), s, 500.f);
  });
  expect_close("rope_forward", qkv, kTolF32);
  expect_close("rope_backward", dqkv, kTolF32);
}

// RoPE at an offset (AttentionShape::pos0, incremental decoding with a KV cache): the rows rotate
// as the last rows of a sequence pos0 + T long do on the reference.
TEST_P(Conformance, RopeAtAPositionOffset) {
  const int64_t pos0 = 9;
  AttentionShape s{1, 3, 4, 2, 8};
  s.pos0 = pos0;
  const AttentionShape whole{1, pos0 + s.T, 4, 2, 8};
  const int64_t W = s.qkv_width(), n = s.T * W;
  const auto x = randn(n, 102);
  std::vector<float> longer(static_cast<size_t>(whole.T * W), 0.f);
  std::copy(x.begin(), x.end(), longer.end() - n);
  auto fwd = upload(x), bwd = upload(x), fwd_whole = upload(longer), bwd_whole = upload(longer);
  be_->rope_forward(fwd.test, s, 10000.f);
  be_->rope_backward(bwd.test, s, 500.f);
  ref_->rope_forward(fwd_whole.ref, whole, 10000.f);
  ref_->rope_backward(bwd_whole.ref, whole, 500.f);
  for (const auto& [name, got, want] : {std::tuple{"rope_forward", &fwd, &fwd_whole}, std::tuple{"rope_backward", &bwd, &bwd_whole}}) {
    const auto g = down(*be_, got->test, n), w = down(*ref_, want->ref + (whole.T - s.T) * W, n);
    EXPECT_LT(test::max_rel_error(g.data(), w.data(), n), 1e-5) << name << " at pos0 " << pos0;
  }
}

// One query row against a KV cache (incremental decoding): attention_decode equals the last row
// of the reference's attention_forward over the same rows (one key, GQA groups, head dims).
TEST_P(Conformance, AttentionDecodeIsTheLastRowOfTheForward) {
  for (const AttentionShape s : {AttentionShape{1, 1, 4, 2, 8}, AttentionShape{1, 37, 8, 2, 64},
                                 AttentionShape{1, 130, 4, 4, 16}}) {
    SCOPED_TRACE(fmt::format("T {} NH {} NKV {} HD {}", s.T, s.NH, s.NKV, s.HD));
    const int64_t QW = s.q_width();
    auto qkv = rand(s.T * s.qkv_width(), 104 + static_cast<uint64_t>(s.T)), out = poisoned(s.T * QW);
    auto lse = poisoned(s.T * s.NH);
    be_->attention_decode(out.test, qkv.test, s);
    ref_->attention_forward(out.ref, lse.ref, qkv.ref, s);
    const auto got = down(*be_, out.test, QW), want = down(*ref_, out.ref + (s.T - 1) * QW, QW);
    EXPECT_LE(rel_l2(got, want), kTolF32) << "relative L2 error";
  }
}

TEST_P(Conformance, CrossEntropyWithIgnoredTargetsAndInPlaceBackward) {
  const int64_t N = 17, V = 301;
  auto logits = rand(N * V, 110, 3.f), losses = poisoned(N), dloss = rand(N, 111);
  std::vector<int32_t> t = random_ints(N, 0, static_cast<int32_t>(V - 1), 112);
  t[3] = -1;
  t[9] = -100;
  auto targets = upload(t);
  auto dlogits = poisoned(N * V);
  both([&](Backend& be, bool r) {
    be.cross_entropy_forward(on(losses, r), on(logits, r), on(targets, r), N, V);
    be.cross_entropy_backward(on(dlogits, r), on(logits, r), on(targets, r), on(dloss, r), N, V);
    be.cross_entropy_backward(on(logits, r), on(logits, r), on(targets, r), on(dloss, r), N, V);
  });
  expect_close("cross_entropy_forward", losses, kTolF32);
  expect_close("cross_entropy_backward", dlogits, kTolF32);
  expect_close("cross_entropy_backward in place", logits, kTolF32);
}

TEST_P(Conformance, AttentionForwardBackward) {
  if (!attention_matches(AttentionShape{2, 7, 4, 2, 8}, 120))
    GTEST_SKIP() << GetParam() << " backend: attention not implemented yet";
}

// Grouped-query attention as the configs use it: 4 q heads per kv head, head dims 64 and 128, T
// not a multiple of the CUDA kernels' tiles (16 own rows, 32-row shared tiles) and longer than
// one tile of either.
TEST_P(Conformance, AttentionGroupedQueryHeadDims) {
  for (const int64_t HD : {int64_t{64}, int64_t{128}}) {
    SCOPED_TRACE(fmt::format("HD {}", HD));
    if (!attention_matches(AttentionShape{2, 53, 8, 2, HD}, 122 + static_cast<uint64_t>(HD)))
      GTEST_SKIP() << GetParam() << " backend: attention not implemented yet";
  }
}

// ---------------------------------------------------------------- MoE

TEST_P(Conformance, SwigluAndSigmoidGate) {
  const int64_t rows = 19, I = 45, C = 33;
  auto h = rand(rows * 2 * I, 130, 2.f), out = poisoned(rows * I), dout = rand(rows * I, 131);
  auto dh = poisoned(rows * 2 * I);
  both([&](Backend& be, bool r) {
    be.swiglu_forward(on(out, r), on(h, r), rows, I);
    be.swiglu_backward(on(dh, r), on(dout, r), on(h, r), rows, I);
  });
  expect_close("swiglu_forward", out, kTolF32);
  expect_close("swiglu_backward", dh, kTolF32);
  auto logit = rand(rows, 132), y = rand(rows * C, 133), o = rand(rows * C, 134);
  auto d = rand(rows * C, 135), dy = poisoned(rows * C), dlogit = poisoned(rows);
  both([&](Backend& be, bool r) {
    be.sigmoid_gate_forward(on(o, r), on(logit, r), on(y, r), rows, C);
    be.sigmoid_gate_backward(on(dy, r), on(dlogit, r), on(d, r), on(logit, r), on(y, r), rows, C);
  });
  expect_close("sigmoid_gate_forward (+=)", o, kTolF32);
  expect_close("sigmoid_gate_backward dy", dy, kTolF32);
  expect_close("sigmoid_gate_backward dlogit", dlogit, kTolF32);
}

struct RouterCase {
  int64_t E, K;
  bool renormalize;
  RouterScoring scoring = RouterScoring::softmax;
  bool bias = false;  // a selection bias (experts 1 and 5 share one value: ties stay ties)
};

TEST_P(Conformance, RouterTopkWithTiesAndBackward) {
  const int64_t N = 41;
  const auto sigmoid = RouterScoring::sigmoid;
  for (const RouterCase c : {RouterCase{8, 2, true}, {8, 2, false}, {8, 1, true}, {16, 4, false},
                             {8, 2, true, RouterScoring::softmax, true}, {8, 2, true, sigmoid},
                             {8, 2, false, sigmoid, true}, {16, 4, true, sigmoid, true}}) {
    SCOPED_TRACE(fmt::format("E {} K {} renormalize {} {} bias {}", c.E, c.K, c.renormalize,
                             name_of(c.scoring), c.bias));
    std::vector<float> l = randn(N * c.E, 140 + c.E);
    for (int64_t e = 0; e < c.E; ++e) l[e] = 0.25f;  // token 0: all tied
    l[c.E + 1] = l[c.E + 5] = 4.f;                    // token 1: a tie for the top
    std::vector<float> b = randn(c.E, 145);
    for (float& v : b) v *= 0.05f;
    b[5] = b[1];
    auto logits = upload(l), probs = poisoned(N * c.E), lse = poisoned(N);
    auto bias = upload(b);
    auto idx = poisoned_i(N * c.K);
    auto gates = poisoned(N * c.K);
    auto opt = [&](bool r) {
      return RouterOptions{c.scoring, c.renormalize, c.bias ? on(bias, r) : nullptr};
    };
    both([&](Backend& be, bool r) {
      be.router_topk(on(probs, r), on(lse, r), on(idx, r), on(gates, r), on(logits, r), N, c.E, c.K,
                     opt(r));
    });
    expect_close("router probs", probs, kTolF32);
    expect_close("router lse", lse, kTolF32);
    expect_equal("router idx", idx);
    expect_close("router gates", gates, kTolF32);
    // backward from the reference's plan (the same on both), with and without the aux term
    auto plan_idx = upload(get(idx).second);
    auto plan_gates = upload(get(gates).second);
    auto plan_probs = upload(get(probs).second), plan_lse = upload(get(lse).second);
    auto dgates = rand(N * c.K, 150), dprobs_all = rand(c.E, 151);
    auto dl = poisoned(N * c.E), dl_noaux = poisoned(N * c.E);
    both([&](Backend& be, bool r) {
      be.router_backward(on(dl, r), on(dgates, r), on(logits, r), on(plan_probs, r), on(plan_lse, r),
                         on(plan_idx, r), on(plan_gates, r), on(dprobs_all, r), 0.01f, N, c.E, c.K,
                         opt(r));
      be.router_backward(on(dl_noaux, r), on(dgates, r), on(logits, r), on(plan_probs, r),
                         on(plan_lse, r), on(plan_idx, r), on(plan_gates, r), nullptr, 0.f, N, c.E,
                         c.K, opt(r));
    });
    expect_close("router_backward", dl, kTolF32);
    expect_close("router_backward without aux", dl_noaux, kTolF32);
  }
}

// Top-p routing (RouterOptions::top_p) on the backend under test against an independent double
// reference written here: selection by score + bias (stable), the cut at cumulative probs >= p
// in selection order (at least 1, at most K = k_max), gates renormalised over the kept slots;
// backward against central differences of the reference loss in double, the kept set frozen
// (the cut is piecewise constant). Tokens 0-2 pin k = 1, k = k_max with all scores tied, and a
// tie for the top.
struct TopPRef {
  std::vector<int32_t> idx;
  std::vector<double> gates, probs, lse;
};

// Routes token t of logits (double) with the given selection (kept slots, -1 after them), or
// selects when sel is null; returns L_t = sum dg*g + sum a*probs + z*lse^2.
double top_p_token(TopPRef& out, const std::vector<double>& l, const std::vector<float>& bias,
                   int64_t t, int64_t E, int64_t K, const RouterOptions& o, const int32_t* sel,
                   const std::vector<float>& dg, const std::vector<float>& a, double z) {
  const bool sig = o.scoring == RouterScoring::sigmoid;
  const double* lt = l.data() + t * E;
  double mx = -INFINITY, se = 0, ss = 0;
  for (int64_t e = 0; e < E; ++e) mx = std::max(mx, lt[e]);
  for (int64_t e = 0; e < E; ++e) se += std::exp(lt[e] - mx);
  const double lse = mx + std::log(se);
  std::vector<double> s(E), prob(E);
  for (int64_t e = 0; e < E; ++e) ss += s[e] = sig ? 1 / (1 + std::exp(-lt[e])) : std::exp(lt[e] - lse);
  for (int64_t e = 0; e < E; ++e) prob[e] = sig ? s[e] / ss : s[e];
  int32_t* it = out.idx.data() + t * K;
  if (!sel) {
    std::vector<int32_t> order(E);
    for (int64_t e = 0; e < E; ++e) order[e] = static_cast<int32_t>(e);
    std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) {
      return s[x] + (bias.empty() ? 0.0 : bias[x]) > s[y] + (bias.empty() ? 0.0 : bias[y]);
    });
    double cum = 0;
    for (int64_t k = 0; k < K; ++k) {
      it[k] = cum >= o.top_p ? -1 : order[k];
      cum += prob[order[k]];
    }
  } else {
    std::copy(sel, sel + K, it);
  }
  double kept = 0, L = z * lse * lse;
  for (int64_t k = 0; k < K; ++k) kept += it[k] >= 0 ? s[it[k]] : 0.0;
  for (int64_t k = 0; k < K; ++k) {
    const double g = it[k] < 0 ? 0.0 : s[it[k]] / (o.renormalize ? kept : 1.0);
    out.gates[t * K + k] = g;
    L += dg[t * K + k] * g;
  }
  for (int64_t e = 0; e < E; ++e) {
    out.probs[t * E + e] = prob[e];
    L += a[e] * prob[e];
  }
  out.lse[t] = lse;
  return L;
}

TEST_P(Conformance, RouterTopPAgainstADoubleReference) {
  const int64_t N = 24, E = 8, K = 4;
  const auto sigmoid = RouterScoring::sigmoid, softmax = RouterScoring::softmax;
  for (const RouterCase c : {RouterCase{E, K, true}, {E, K, false}, {E, K, true, sigmoid},
                             {E, K, false, sigmoid}, {E, K, true, softmax, true},
                             {E, K, true, sigmoid, true}}) {
    SCOPED_TRACE(fmt::format("renormalize {} {} bias {}", c.renormalize, name_of(c.scoring), c.bias));
    std::vector<float> l = randn(N * E, 170, 1.5f);
    for (int64_t e = 0; e < E; ++e) l[e] = e == 3 ? 6.f : -6.f;  // token 0: expert 3 alone reaches p
    for (int64_t e = 0; e < E; ++e) l[E + e] = 0.25f;            // token 1: all tied, needs k_max
    for (int64_t e = 0; e < E; ++e) l[2 * E + e] = e == 1 || e == 5 ? 3.f : -3.f;  // tie at the top
    std::vector<float> b;
    if (c.bias) {
      b = randn(E, 171, 0.05f);
      b[1] = b[5] = b[3] = 0.f;  // the pinned tokens keep their selections
      b[6] = 0.2f;               // expert 6 is favoured: some selection changes
    }
    const RouterOptions opt_ref{c.scoring, c.renormalize, nullptr, 0.6f};
    auto logits = upload(l), bias = upload(b.empty() ? std::vector<float>(E, 0.f) : b);
    auto probs = poisoned(N * E), lse = poisoned(N), gates = poisoned(N * K);
    auto idx = poisoned_i(N * K);
    RouterOptions opt = opt_ref;
    opt.bias = c.bias ? bias.test : nullptr;
    be_->router_topk(probs.test, lse.test, idx.test, gates.test, logits.test, N, E, K, opt);

    const std::vector<float> dg = randn(N * K, 172), a = randn(E, 173);
    const double z = 0.01;
    const std::vector<double> ld(l.begin(), l.end());
    TopPRef ref{std::vector<int32_t>(N * K), std::vector<double>(N * K), std::vector<double>(N * E),
                std::vector<double>(N)};
    std::vector<int> kept_count(K + 1, 0);
    for (int64_t t = 0; t < N; ++t) {
      top_p_token(ref, ld, b, t, E, K, opt_ref, nullptr, dg, a, z);
      kept_count[std::count_if(ref.idx.begin() + t * K, ref.idx.begin() + (t + 1) * K,
                               [](int32_t i) { return i >= 0; })]++;
    }
    EXPECT_EQ(down(*be_, idx.test, N * K), ref.idx);
    const auto near = [](const std::vector<float>& got, const std::vector<double>& want) {
      return rel_l2(got, std::vector<float>(want.begin(), want.end()));
    };
    EXPECT_LE(near(down(*be_, gates.test, N * K), ref.gates), kTolF32);
    EXPECT_LE(near(down(*be_, probs.test, N * E), ref.probs), kTolF32);
    EXPECT_LE(near(down(*be_, lse.test, N), ref.lse), kTolF32);
    // pinned tokens (a bias reorders token 1's tie, which keeps all k_max slots either way)
    const auto slots = [&](int64_t t) {
      return std::vector<int32_t>(ref.idx.begin() + t * K, ref.idx.begin() + (t + 1) * K);
    };
    EXPECT_EQ(slots(0), (std::vector<int32_t>{3, -1, -1, -1}));
    if (!c.bias) {
      EXPECT_EQ(slots(1), (std::vector<int32_t>{0, 1, 2, 3}));
    }
    EXPECT_EQ(std::count(ref.idx.begin() + K, ref.idx.begin() + 2 * K, -1), 0);
    EXPECT_EQ(slots(2), (std::vector<int32_t>{1, 5, -1, -1}));
    EXPECT_GT(kept_count[2] + kept_count[3], 0) << "no token between 1 and k_max experts";

    // backward: dL/dlogits of L = sum_t L_t against central differences (kept set frozen)
    auto dgates = upload(dg), dprobs_all = upload(a), dl = poisoned(N * E);
    auto plan_idx = upload(ref.idx);
    auto plan_gates = upload(down(*be_, gates.test, N * K));
    be_->router_backward(dl.test, dgates.test, logits.test, probs.test, lse.test, plan_idx.test,
                         plan_gates.test, dprobs_all.test, static_cast<float>(z), N, E, K, opt);
    std::vector<float> fd(N * E);
    TopPRef scratch = ref;
    for (int64_t i = 0; i < N * E; ++i) {
      const int64_t t = i / E;
      std::vector<double> lp = ld, lm = ld;
      const double h = 1e-6;
      lp[i] += h;
      lm[i] -= h;
      fd[i] = static_cast<float>(
          (top_p_token(scratch, lp, b, t, E, K, opt_ref, ref.idx.data() + t * K, dg, a, z) -
           top_p_token(scratch, lm, b, t, E, K, opt_ref, ref.idx.data() + t * K, dg, a, z)) /
          (2 * h));
    }
    EXPECT_LE(rel_l2(down(*be_, dl.test, N * E), fd), 2e-5);
  }
}

TEST_P(Conformance, RoutePlanDispatchCombineWithDropsAndEmptyExperts) {
  const int64_t N = 29, E = 6, K = 2, C = 24;
  std::vector<int32_t> ids = random_ints(N * K, 0, static_cast<int32_t>(E - 1), 160);
  for (auto& e : ids)
    if (e == 3) e = 4;  // expert 3 gets no rows
  ids[5] = ids[17] = ids[40] = -1;  // dropped slots
  auto idx = upload(ids), pos = poisoned_i(N * K), offsets = poisoned_i(E + 1);
  both([&](Backend& be, bool r) { be.route_plan(on(pos, r), on(offsets, r), on(idx, r), N, E, K); });
  expect_equal("route_plan pos", pos);
  expect_equal("route_plan expert_offsets", offsets);
  const int64_t kept = get(offsets).second[E];
  ASSERT_EQ(kept, N * K - 3);

  auto plan = upload(get(pos).second);
  auto x = rand(N * C, 161), xp = poisoned(kept * C), dx = poisoned(N * C);
  auto gates = rand(N * K, 162), y = rand(kept * C, 163), out = poisoned(N * C);
  auto dout = rand(N * C, 164), dy = poisoned(kept * C), dgates = poisoned(N * K);
  both([&](Backend& be, bool r) {
    be.dispatch_forward(on(xp, r), on(x, r), on(plan, r), N, K, C);
    be.dispatch_backward(on(dx, r), on(y, r), on(plan, r), N, K, C);
    be.combine_forward(on(out, r), on(y, r), on(plan, r), on(gates, r), N, K, C);
    be.combine_backward(on(dy, r), on(dgates, r), on(dout, r), on(y, r), on(plan, r), on(gates, r), N, K, C);
  });
  expect_close("dispatch_forward", xp, kTolF32);
  expect_close("dispatch_backward", dx, kTolF32);
  expect_close("combine_forward", out, kTolF32);
  expect_close("combine_backward dy", dy, kTolF32);
  expect_close("combine_backward dgates", dgates, kTolF32);
}

// The token exchange's pack and sum steps: gathers with skipped rows, a scatter, a weighted
// scatter-add whose destination rows repeat (written first, then added in index order), and the
// gate dot/scale of combine backward.
TEST_P(Conformance, ExchangePackAndSumKernels) {
  const int64_t n = 23, rows = 9, C = 13;
  auto src = rand(rows * C, 180), gathered = poisoned(n * C);
  std::vector<int64_t> gidx(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) gidx[static_cast<size_t>(i)] = i % 5 == 4 ? -1 : (i * 7) % rows;
  auto gindex = upload(gidx);
  auto keep = rand(n * C, 181);  // what skipped rows keep
  both([&](Backend& be, bool r) {
    be.copy(on(gathered, r), on(keep, r), static_cast<size_t>(n * C) * sizeof(float));
    be.gather_rows(on(gathered, r), on(src, r), on(gindex, r), n, C * static_cast<int64_t>(sizeof(float)));
  });
  expect_bitwise("gather_rows", gathered);

  std::vector<int64_t> perm(static_cast<size_t>(rows));
  for (int64_t i = 0; i < rows; ++i) perm[static_cast<size_t>(i)] = (i * 4 + 3) % rows;
  auto pindex = upload(perm);
  auto scattered = poisoned(rows * C);
  both([&](Backend& be, bool r) {
    be.scatter_rows(on(scattered, r), on(src, r), on(pindex, r), rows, C * static_cast<int64_t>(sizeof(float)));
  });
  expect_bitwise("scatter_rows", scattered);

  std::vector<int64_t> didx(static_cast<size_t>(n)), sidx(static_cast<size_t>(n));
  std::vector<uint8_t> first(static_cast<size_t>(n), 0);
  std::vector<bool> seen(4, false);
  for (int64_t i = 0; i < n; ++i) {
    didx[static_cast<size_t>(i)] = (i * 3) % 4;
    sidx[static_cast<size_t>(i)] = (i * 5) % rows;
    first[static_cast<size_t>(i)] = seen[static_cast<size_t>(didx[static_cast<size_t>(i)])] ? 0 : 1;
    seen[static_cast<size_t>(didx[static_cast<size_t>(i)])] = true;
  }
  auto dindex = upload(didx), sindex = upload(sidx);
  auto firsts = upload(first);
  auto w = rand(n, 182);
  auto summed = poisoned(4 * C), added = rand(4 * C, 183);
  both([&](Backend& be, bool r) {
    be.scatter_add_rows(on(summed, r), on(dindex, r), on(src, r), on(sindex, r), on(w, r), on(firsts, r), n, C);
    be.scatter_add_rows(on(added, r), on(dindex, r), on(src, r), on(sindex, r), nullptr, nullptr, n, C);
  });
  expect_close("scatter_add_rows (weighted, first written)", summed, kTolF32);
  expect_close("scatter_add_rows (unweighted, accumulated)", added, kTolF32);

  auto dy = rand(rows * C, 184), y = rand(rows * C, 185), gate = rand(rows, 186), dgate = poisoned(rows);
  both([&](Backend& be, bool r) { be.gate_dot_scale(on(dy, r), on(dgate, r), on(y, r), on(gate, r), rows, C); });
  expect_close("gate_dot_scale dy", dy, kTolF32);
  expect_close("gate_dot_scale dgate", dgate, kTolF32);
}

TEST_P(Conformance, EmptySizesWriteNothingAndDoNotFail) {
  auto buf = rand(64, 170);
  auto ids = upload(std::vector<int32_t>(64, 0));
  auto offsets = poisoned_i(5);
  const auto before = get(buf).first;
  const AttentionShape s0{0, 4, 2, 1, 8};
  both([&](Backend& be, bool r) {
    float* p = on(buf, r);
    int32_t* i = on(ids, r);
    be.add(p, p, p, 0);
    be.axpy(p, 1.f, p, 0);
    be.scale(p, 2.f, 0);
    be.round_to(Dtype::bf16, p, 0);
    be.add_bias(p, p, 0, 8);
    be.adamw_update(p, p, p, p, 0, 1.f, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.f, 0.1f, 0.05f);
    be.embedding_forward(p, i, p, 0, 8);
    be.embedding_backward(p, p, i, 0, 8);
    be.rmsnorm_forward(p, p, p, p, 0, 8, 1e-5f);
    be.rmsnorm_backward(p, p, p, p, p, p, 0, 8);
    be.rope_forward(p, s0, 10000.f);
    be.swiglu_forward(p, p, 0, 8);
    be.cross_entropy_forward(p, p, i, 0, 8);
    be.dispatch_forward(p, p, i, 0, 2, 8);
    be.combine_forward(p, p, i, p, 0, 2, 8);
    be.route_plan(i, on(offsets, r), i, 0, 4, 2);  // no slots: offsets all 0
  });
  EXPECT_EQ(get(buf).first, before);
  EXPECT_EQ(get(offsets).first, std::vector<int32_t>(5, 0));
  EXPECT_EQ(be_->sum_squares(buf.test, 0), 0.0);
}

INSTANTIATE_TEST_SUITE_P(Backends, Conformance, ::testing::Values("cpu", "cuda", "device_check"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace switchyard::core
