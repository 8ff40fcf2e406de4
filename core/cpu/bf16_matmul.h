// core/cpu/bf16_matmul.h: GEMMs in native bf16 through oneDNN's matmul primitive (AMX where the CPU
// exposes it, AVX512-BF16 otherwise): fp32 operands rounded (nearest even) and packed to bf16,
// fp32 accumulation and output. The CPU backend uses it for bf16 GEMMs when it is faster than
// running the fp32 kernel on rounded operands; `SWITCHYARD_CPU_BF16_GEMM=native|emulated|auto`
// (default auto: both timed once on a training-sized shape, the faster kept).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>

namespace switchyard::core {

// Why oneDNN cannot run a bf16 matmul on this CPU (its ISA, capped by ONEDNN_MAX_CPU_ISA /
// DNNL_MAX_CPU_ISA, is below avx512_core: an AVX2-only CPU), or "" where it can. Probed once per
// process by creating a small bf16 matmul primitive.
const std::string& native_bf16_unavailable();

// The ISA oneDNN dispatches to on this CPU, after any cap: "avx2", "avx512_core_amx", ...
std::string onednn_cpu_isa();

class Bf16Matmul {
 public:
  Bf16Matmul();  // throws a usage Error with native_bf16_unavailable() where that is not empty
  ~Bf16Matmul();
  Bf16Matmul(const Bf16Matmul&) = delete;
  Bf16Matmul& operator=(const Bf16Matmul&) = delete;

  // C[M,N] = alpha * op(A) op(B) + beta * C as CpuBackend::gemm (row-major, leading dimensions);
  // A and B are rounded to bf16 on the way in, packed into a_scratch (M*K) and b_scratch (K*N).
  void run(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
           uint16_t* a_scratch, uint16_t* b_scratch);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// dst[r*cols + c] = bf16(src[r*lds + c]) (round to nearest even, NaN kept quiet), packed.
void pack_bf16(uint16_t* dst, const float* src, int64_t lds, int64_t rows, int64_t cols);

}  // namespace switchyard::core
