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
// A straightforward correct first path: a cuBLASLt version with the conversion fused or operands
// kept in bf16 storage belongs to the performance work of issue 12.
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

}  // namespace switchyard::core
