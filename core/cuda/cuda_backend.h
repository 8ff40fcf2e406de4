// core/cuda/cuda_backend.h: the CUDA backend. One device and one stream per backend; every method
// enqueues on that stream and returns, except those that hand values to the host (copy_to_host,
// sum_squares) or free memory, which wait for it. Defined across core/cuda/:
//   cuda_backend.cpp  device query, factory, memory (live/peak accounting), the kernel table
//   gemm.cpp          GEMMs through cuBLAS, with the GemmRounding of core/backend.h
//   elementwise.cu, dense.cu, moe.cu   the kernels (core/cuda/kernels.h), by family
// Host code only: this header compiles without nvcc.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <mutex>
#include <string>
#include <unordered_map>

#include "core/backend.h"
#include "core/cuda/kernels.h"
#include "core/memory_ledger.h"

namespace switchyard::core {

// The kernels' name of a rounding dtype.
inline cuda_kernels::Half half_of(Dtype d) {
  return d == Dtype::bf16 ? cuda_kernels::Half::bf16
         : d == Dtype::f16 ? cuda_kernels::Half::f16
                           : cuda_kernels::Half::none;
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;
  std::string name() const override { return "cuda"; }
  bool host_memory() const override { return false; }  // device memory
  int device() const override { return device_; }
  void* stream() const override { return stream_; }
  int64_t memory_capacity() const override;  // cudaMemGetInfo's total
  double seconds_per_run(const std::function<void()>& work, int repeats) override;  // CUDA events

  // cudaMalloc'd (256-byte aligned), zero-filled on the stream. Live bytes are the sizes asked for
  // rounded up to 64 (alloc(0) holds 64), the GEMM and reduction scratch included.
  void* alloc(size_t bytes) override;
  void release(void* p) override;  // waits for the device (cudaFree)
  void zero(void* p, size_t bytes) override;
  void copy_to_host(void* host_dst, const void* src, size_t bytes) override;  // waits
  void copy_from_host(void* dst, const void* host_src, size_t bytes) override;  // waits
  void copy(void* dst, const void* src, size_t bytes) override;
  void synchronize() override;
  MemoryStats memory_stats() const override;
  void reset_peak_memory() override;
  // gemm.cpp. fp32 operands: cublasGemmEx in fp32 (CUBLAS_COMPUTE_32F, no TF32). Operands of dtype
  // bf16/fp16 (rounding.operands): both operands are converted (rounded to nearest even) into
  // packed 16-bit scratch, the product runs in that dtype with fp32 accumulation and fp32 C, then
  // C's M x N region is rounded to rounding.c in place.
  void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, const GemmRounding& rounding = {}) override;
  // gemm.cpp. One cublasGemmGroupedBatchedEx over the problems with M, N, K > 0 (consecutive equal
  // shapes share a group), with gemm()'s rounding: fp32 operands in fp32 (operands to round are
  // rounded into fp32 scratch); bf16/fp16 operands packed into 16-bit scratch with a 16-bit C
  // written to scratch and widened into C (cuBLAS has no 16-bit A/B with fp32 C grouped), which
  // needs rounding.c == rounding.operands and beta == 0. Otherwise, and for a single problem, a
  // loop of gemm(). K == 0 problems go to gemm() (C = beta * C).
  void grouped_gemm(bool trans_a, bool trans_b, std::span<const GemmProblem> problems, float alpha, float beta, const GemmRounding& rounding = {}) override;
  void round_to(Dtype d, float* x, int64_t n) override;
  void add(float* out, const float* a, const float* b, int64_t n) override;
  void axpy(float* y, float alpha, const float* x, int64_t n) override;
  void add_bias(float* x, const float* bias, int64_t rows, int64_t cols) override;
  void bias_backward(float* dbias, const float* dout, int64_t rows, int64_t cols) override;
  double sum_squares(const float* x, int64_t n) override;  // waits
  void scale(float* x, float alpha, int64_t n) override;
  void adamw_update(float* p, const float* grads, float* m, float* v, int64_t n, float grad_scale, float lr, float beta1, float beta2, float eps, float weight_decay, float bc1, float bc2, float* p_compute = nullptr, Dtype compute = Dtype::f32) override;
  void embedding_forward(float* out, const int32_t* tokens, const float* wte, int64_t N, int64_t C) override;
  void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int64_t N, int64_t C) override;
  void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int64_t N, int64_t C, float eps) override;
  void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w, const float* rstd, int64_t N, int64_t C) override;
  void add_rmsnorm_forward(float* sum, float* out, float* rstd, const float* a, const float* b, const float* w, int64_t N, int64_t C, float eps) override;
  void rmsnorm_backward_accumulate(float* dx, float* dw, const float* dout, const float* x, const float* w, const float* rstd, int64_t N, int64_t C) override;
  void rope_forward(float* qkv, const AttentionShape& s, float theta) override;
  void rope_backward(float* dqkv, const AttentionShape& s, float theta) override;
  void attention_forward(float* out, float* lse, const float* qkv, const AttentionShape& s) override;
  void attention_backward(float* dqkv, const float* dout, const float* out, const float* lse, const float* qkv, const AttentionShape& s) override;
  void attention_decode(float* out, const float* qkv, const AttentionShape& s) override;
  void swiglu_forward(float* out, const float* h, int64_t rows, int64_t I) override;
  void swiglu_backward(float* dh, const float* dout, const float* h, int64_t rows, int64_t I) override;
  void sigmoid_gate_forward(float* out, const float* logit, const float* y, int64_t rows, int64_t C) override;
  void sigmoid_gate_backward(float* dy, float* dlogit, const float* dout, const float* logit, const float* y, int64_t rows, int64_t C) override;
  void cross_entropy_forward(float* losses, const float* logits, const int32_t* targets, int64_t N, int64_t V) override;
  void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets, const float* dloss, int64_t N, int64_t V) override;
  void router_topk(float* probs, float* lse, int32_t* idx, float* gates, const float* logits, int64_t N, int64_t E, int64_t K, const RouterOptions& opt) override;
  void router_backward(float* dlogits, const float* dgates, const float* logits, const float* probs, const float* lse, const int32_t* idx, const float* gates, const float* dprobs_all, float z_coef, int64_t N, int64_t E, int64_t K, const RouterOptions& opt) override;
  void route_plan(int32_t* pos, int32_t* expert_offsets, const int32_t* idx, int64_t N, int64_t E, int64_t K) override;
  void dispatch_forward(float* xp, const float* x, const int32_t* pos, int64_t N, int64_t K, int64_t C) override;
  void dispatch_backward(float* dx, const float* dxp, const int32_t* pos, int64_t N, int64_t K, int64_t C) override;
  void combine_forward(float* out, const float* y, const int32_t* pos, const float* gates, int64_t N, int64_t K, int64_t C) override;
  void combine_backward(float* dy, float* dgates, const float* dout, const float* y, const int32_t* pos, const float* gates, int64_t N, int64_t K, int64_t C) override;
  void gather_rows(void* dst, const void* src, const int64_t* index, int64_t n, int64_t row_bytes) override;
  void scatter_rows(void* dst, const void* src, const int64_t* index, int64_t n, int64_t row_bytes) override;
  void scatter_add_rows(float* dst, const int64_t* dst_index, const float* src, const int64_t* src_index,
                        const float* w, const uint8_t* first, int64_t n, int64_t C) override;
  void gate_dot_scale(float* dy, float* dgate, const float* y, const float* gate, int64_t rows, int64_t C) override;

 private:
  // Makes this backend's device current on the calling thread (every entry point calls it).
  void use_device() const;
  // Device scratch `slot` of at least `bytes` (grow-only, kept until destruction, counted in
  // memory_stats): 0 and 1 the GEMM operands, 2 the reduction partials, 3 attention's D rows, 4 the
  // grouped GEMM's 16-bit C, 5 its pointer arrays.
  void* scratch(int slot, size_t bytes);
  // Throws for an attention shape the kernels do not take (core/cuda/attention.cu).
  void check_attention(const AttentionShape& s) const;
  int device_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  MemoryLedger ledger_;
  static constexpr int kScratchSlots = 6;
  void* scratch_[kScratchSlots] = {};
  size_t scratch_bytes_[kScratchSlots] = {};
};

}  // namespace switchyard::core
