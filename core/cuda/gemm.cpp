// core/cuda/gemm.cpp: CudaBackend::gemm, row-major with the GemmRounding of core/backend.h, on
// cuBLAS (column-major): row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, so cuBLAS
// gets B as its first operand and A as its second, with the same transpose flags, m = N, n = M.
//   fp32 operands: cublasGemmEx in fp32 with CUBLAS_COMPUTE_32F (full fp32, never TF32: the
//     conformance bound against the CPU is 1e-5). An operand rounded to bf16/fp16 while the
//     product stays fp32 (operands == f32) is rounded into fp32 scratch first.
//   bf16/fp16 operands (rounding.operands): both operands are converted into packed 16-bit scratch
//     (round to nearest even: exact for operands already stored in that dtype, the rounding of the
//     CPU for fresh ones), cuBLAS multiplies them on tensor cores with fp32 accumulation into fp32
//     C (alpha, beta in fp32), and C's M x N region is then rounded to rounding.c in place.
// CudaBackend::grouped_gemm: the same per problem, all problems in one
// cublasGemmGroupedBatchedEx_64 (below). A straightforward correct first path: a cuBLASLt version
// with the conversion fused or operands kept in bf16 storage belongs to the performance work of
// issue 12.
#include <utility>
#include <vector>

#include "core/cuda/cuda_backend.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/kernels.h"

namespace switchyard::core {

namespace k = cuda_kernels;

void CudaBackend::gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                       const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                       float* C, int64_t ldc, const GemmRounding& rounding) {
  if (M == 0 || N == 0) return;
  use_device();
  if (K == 0) {  // C = beta * C
    k::scale_rows(C, ldc, M, N, beta, stream_);
    SY_CUDA_CHECK_LAUNCH();
    if (rounding.c != Dtype::f32) k::round_rows(half_of(rounding.c), C, ldc, C, ldc, M, N, stream_);
    SY_CUDA_CHECK_LAUNCH();
    return;
  }
  SY_CHECK(M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX && lda <= INT32_MAX &&
               ldb <= INT32_MAX && ldc <= INT32_MAX,
           "gemm: sizes beyond int32 (M={} N={} K={})", M, N, K);
  // op(A) reads A as stored rows x cols: [M,K], or [K,M] when transposed; op(B): [K,N] or [N,K]
  const int64_t a_rows = trans_a ? K : M, a_cols = trans_a ? M : K;
  const int64_t b_rows = trans_b ? N : K, b_cols = trans_b ? K : N;
  const void* a = A;
  const void* b = B;
  cudaDataType_t type = CUDA_R_32F;
  if (rounding.operands != Dtype::f32) {
    type = rounding.operands == Dtype::bf16 ? CUDA_R_16BF : CUDA_R_16F;
    auto* a16 = static_cast<uint16_t*>(scratch(0, static_cast<size_t>(a_rows * a_cols) * 2));
    auto* b16 = static_cast<uint16_t*>(scratch(1, static_cast<size_t>(b_rows * b_cols) * 2));
    k::pack_half(half_of(rounding.operands), a16, A, lda, a_rows, a_cols, stream_);
    SY_CUDA_CHECK_LAUNCH();
    k::pack_half(half_of(rounding.operands), b16, B, ldb, b_rows, b_cols, stream_);
    SY_CUDA_CHECK_LAUNCH();
    a = a16;
    b = b16;
    lda = a_cols;
    ldb = b_cols;
  } else {  // fp32 product: an operand to round is rounded into fp32 scratch `slot`
    auto round_operand = [&](Dtype d, int slot, const void*& X, const float* src, int64_t& ld,
                             int64_t rows, int64_t cols) {
      if (d == Dtype::f32) return;
      auto* x = static_cast<float*>(scratch(slot, static_cast<size_t>(rows * cols) * 4));
      k::round_rows(half_of(d), x, cols, src, ld, rows, cols, stream_);
      SY_CUDA_CHECK_LAUNCH();
      X = x;
      ld = cols;
    };
    round_operand(rounding.a, 0, a, A, lda, a_rows, a_cols);
    round_operand(rounding.b, 1, b, B, ldb, b_rows, b_cols);
  }
  SY_CUBLAS_CHECK(cublasGemmEx(cublas_, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                               trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(N),
                               static_cast<int>(M), static_cast<int>(K), &alpha, b, type,
                               static_cast<int>(ldb), a, type, static_cast<int>(lda), &beta, C,
                               CUDA_R_32F, static_cast<int>(ldc), CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
  if (rounding.c != Dtype::f32) {
    k::round_rows(half_of(rounding.c), C, ldc, C, ldc, M, N, stream_);
    SY_CUDA_CHECK_LAUNCH();
  }
}

namespace {

// Elements rounded up to a multiple of 8: every packed operand copy starts 16-byte aligned (cuBLAS
// asks that of 16-bit grouped operands).
int64_t aligned8(int64_t n) { return (n + 7) / 8 * 8; }

// One group of cublasGemmGroupedBatchedEx: its shape in cuBLAS's (column-major, swapped) terms.
struct GroupShape {
  int64_t m, n, k, lda, ldb, ldc;
  bool operator==(const GroupShape&) const = default;
};

}  // namespace

// Per problem, what gemm() does: operands read as rounded (16-bit packed copies, or rounded fp32
// copies for an fp32 product), fp32 accumulation, C rounded to rounding.c. The copies of every
// problem's A and B sit in scratch slots 0 and 1 at per-problem offsets; the pointer arrays
// (device memory, as cuBLAS requires: [cuBLAS A = our B | cuBLAS B = our A | C]) in slot 5.
// cublasGemmGroupedBatchedEx in CUDA 13.1 takes, with CUBLAS_COMPUTE_32F, Atype = Btype = Ctype =
// fp32, bf16 or fp16 only. So a 16-bit product writes a 16-bit C into scratch slot 4 (cuBLAS
// rounds its fp32 result to nearest even, fp16 overflow to inf) that is then widened into C:
// gemm()'s result when rounding.c is the operands' dtype and beta == 0 (C unread). The other
// 16-bit cases (an fp32 C: the weight gradients, accumulated with beta = 1; or a 16-bit C that
// beta would read) fall back to a loop of gemm(), as does a single problem.
void CudaBackend::grouped_gemm(bool trans_a, bool trans_b, std::span<const GemmProblem> problems,
                               float alpha, float beta, const GemmRounding& rounding) {
  std::vector<GemmProblem> live;  // M, N, K > 0
  live.reserve(problems.size());
  for (const GemmProblem& p : problems) {
    if (p.M == 0 || p.N == 0) continue;
    if (p.K > 0) live.push_back(p);
    else  // C = beta * C
      gemm(trans_a, trans_b, p.M, p.N, 0, alpha, p.A, p.lda, p.B, p.ldb, beta, p.C, p.ldc,
           rounding);
  }
  const bool half = rounding.operands != Dtype::f32;
  if (live.size() <= 1 || (half && (rounding.c != rounding.operands || beta != 0.f))) {
    for (const GemmProblem& p : live)
      gemm(trans_a, trans_b, p.M, p.N, p.K, alpha, p.A, p.lda, p.B, p.ldb, beta, p.C, p.ldc,
           rounding);
    return;
  }
  use_device();
  const size_t P = live.size();
  // op(A) reads A as stored rows x cols: [M,K], or [K,M] when transposed; op(B): [K,N] or [N,K]
  auto a_shape = [&](const GemmProblem& p) {
    return std::pair{trans_a ? p.K : p.M, trans_a ? p.M : p.K};
  };
  auto b_shape = [&](const GemmProblem& p) {
    return std::pair{trans_b ? p.N : p.K, trans_b ? p.K : p.N};
  };
  std::vector<int64_t> off_a(P), off_b(P), off_c(P);
  int64_t na = 0, nb = 0, nc = 0;
  for (size_t i = 0; i < P; ++i) {
    const auto [ar, ac] = a_shape(live[i]);
    const auto [br, bc] = b_shape(live[i]);
    off_a[i] = na;
    na += aligned8(ar * ac);
    off_b[i] = nb;
    nb += aligned8(br * bc);
    off_c[i] = nc;
    nc += aligned8(live[i].M * live[i].N);
  }
  const size_t elem = half ? 2 : 4;
  auto copies = [&](Dtype d, int slot, int64_t n) -> char* {
    if (!half && d == Dtype::f32) return nullptr;
    return static_cast<char*>(scratch(slot, static_cast<size_t>(n) * elem));
  };
  char* copies_a = copies(rounding.a, 0, na);
  char* copies_b = copies(rounding.b, 1, nb);
  auto* c16 = half ? static_cast<uint16_t*>(scratch(4, static_cast<size_t>(nc) * 2)) : nullptr;
  auto** ptrs = static_cast<void**>(scratch(5, 3 * P * sizeof(void*)));

  // Operand X (rows x cols as stored, leading dimension ld) as the product reads it: X itself, or
  // its copy at element offset `off` of `copies` (ld becomes cols).
  const k::Half operands = half_of(rounding.operands);
  auto operand = [&](Dtype d, char* copies, int64_t off, const float* X, int64_t& ld, int64_t rows,
                     int64_t cols) -> void* {
    void* x = nullptr;
    if (half) {
      x = reinterpret_cast<uint16_t*>(copies) + off;
      k::pack_half(operands, static_cast<uint16_t*>(x), X, ld, rows, cols, stream_);
    } else if (d != Dtype::f32) {
      x = reinterpret_cast<float*>(copies) + off;
      k::round_rows(half_of(d), static_cast<float*>(x), cols, X, ld, rows, cols, stream_);
    } else {
      return const_cast<float*>(X);
    }
    ld = cols;
    return x;
  };
  std::vector<void*> host_ptrs(3 * P);
  std::vector<GroupShape> groups;
  std::vector<int64_t> group_size;
  for (size_t i = 0; i < P; ++i) {
    const GemmProblem& p = live[i];
    const auto [ar, ac] = a_shape(p);
    const auto [br, bc] = b_shape(p);
    int64_t lda = p.lda, ldb = p.ldb;
    host_ptrs[i] = operand(rounding.b, copies_b, off_b[i], p.B, ldb, br, bc);
    host_ptrs[P + i] = operand(rounding.a, copies_a, off_a[i], p.A, lda, ar, ac);
    host_ptrs[2 * P + i] = half ? static_cast<void*>(c16 + off_c[i]) : p.C;
    const GroupShape g{p.N, p.M, p.K, ldb, lda, half ? p.N : p.ldc};
    if (groups.empty() || groups.back() != g) {
      groups.push_back(g);
      group_size.push_back(0);
    }
    ++group_size.back();
  }
  SY_CUDA_CHECK_LAUNCH();
  k::upload_small(ptrs, host_ptrs.data(), 3 * P * sizeof(void*), stream_);
  SY_CUDA_CHECK_LAUNCH();

  const size_t G = groups.size();
  std::vector<cublasOperation_t> op_a(G, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N);
  std::vector<cublasOperation_t> op_b(G, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N);
  std::vector<int64_t> m(G), n(G), kk(G), lda(G), ldb(G), ldc(G);
  for (size_t g = 0; g < G; ++g) {
    m[g] = groups[g].m;
    n[g] = groups[g].n;
    kk[g] = groups[g].k;
    lda[g] = groups[g].lda;
    ldb[g] = groups[g].ldb;
    ldc[g] = groups[g].ldc;
  }
  const std::vector<float> alphas(G, alpha), betas(G, beta);
  const cudaDataType_t type = !half                                ? CUDA_R_32F
                              : rounding.operands == Dtype::bf16 ? CUDA_R_16BF
                                                                 : CUDA_R_16F;
  SY_CUBLAS_CHECK(cublasGemmGroupedBatchedEx_64(
      cublas_, op_a.data(), op_b.data(), m.data(), n.data(), kk.data(), alphas.data(), ptrs, type,
      lda.data(), ptrs + P, type, ldb.data(), betas.data(), ptrs + 2 * P, type, ldc.data(),
      static_cast<int64_t>(G), group_size.data(), CUBLAS_COMPUTE_32F));
  for (size_t i = 0; i < P; ++i) {
    const GemmProblem& p = live[i];
    if (half)
      k::unpack_half(operands, p.C, p.ldc, c16 + off_c[i], p.M, p.N, stream_);
    else if (rounding.c != Dtype::f32)
      k::round_rows(half_of(rounding.c), p.C, p.ldc, p.C, p.ldc, p.M, p.N, stream_);
  }
  SY_CUDA_CHECK_LAUNCH();
}

}  // namespace switchyard::core
