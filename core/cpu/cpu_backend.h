// core/cpu/cpu_backend.h: the CPU backend. GEMMs go to oneDNN (dnnl_sgemm); other kernels are
// OpenMP loops. The methods are defined across core/cpu/*.cpp, one file per kind of kernel:
//   cpu_backend.cpp  memory (with live/peak accounting), GEMM, elementwise, reductions
//   rounding.cpp     rounding to bf16/fp16 precision (round_to, the GEMM operand/result rounding)
//   bf16_matmul.cpp  native bf16 GEMMs (oneDNN matmul), where oneDNN has them and they are faster
//   cpu_requirements.cpp  the start-up check of the instruction set this build needs
//   dense_kernels.cpp embedding, RMSNorm, RoPE, cross-entropy
//   attention.cpp    causal GQA attention forward/backward
//   moe_kernels.cpp  SwiGLU, sigmoid gate, router top-k and its backward, routing plan,
//                    dispatch/combine permutations
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "core/backend.h"
#include "core/cpu/bf16_matmul.h"
#include "core/memory_ledger.h"

namespace switchyard::core {

// The first instruction-set feature that this build needs (SWITCHYARD_ARCH) and this CPU lacks, or
// nullptr. Checked once before main() by cpu_requirements.cpp.
const char* missing_cpu_feature();

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads);
  ~CpuBackend() override;
  CpuBackend(const CpuBackend&) = delete;
  CpuBackend& operator=(const CpuBackend&) = delete;
  std::string name() const override { return "cpu"; }
  int threads() const { return threads_; }

  void* alloc(size_t bytes) override;
  void release(void* p) override;
  void zero(void* p, size_t bytes) override;
  void copy_to_host(void* host_dst, const void* src, size_t bytes) override;
  void copy_from_host(void* dst, const void* host_src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;  // dense_kernels.cpp
  void synchronize() override;
  // Live bytes are the sizes alloc() hands out rounded up to 64 (alloc(0) holds 64), the GEMM's
  // rounding scratch (below) included.
  MemoryStats memory_stats() const override;
  void reset_peak_memory() override;
  // With rounding.any(), an operand whose dtype is not f32 is copied, rounded, into a scratch
  // buffer of the backend (just the region op(X) reads, compact, same transposition), dnnl_sgemm
  // runs on the copies with fp32 accumulation, and the M x N region of C is rounded in place to
  // rounding.c. The two scratch buffers grow to the largest operand seen and are kept until the
  // backend is destroyed: they count toward memory_stats(). Not thread-safe (one caller thread).
  void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, const GemmRounding& rounding = {}) override;
  void round_to(Dtype d, float* x, int64_t n) override;  // rounding.cpp
  void add(float* out, const float* a, const float* b, int64_t n) override;
  void axpy(float* y, float alpha, const float* x, int64_t n) override;
  void add_bias(float* x, const float* bias, int64_t rows, int64_t cols) override;
  void bias_backward(float* dbias, const float* dout, int64_t rows, int64_t cols) override;
  double sum_squares(const float* x, int64_t n) override;
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
  void scatter_add_rows(float* dst, const int64_t* dst_index, const float* src, const int64_t* src_index, const float* w, const uint8_t* first, int64_t n, int64_t C) override;
  void gate_dot_scale(float* dy, float* dgate, const float* y, const float* gate, int64_t rows, int64_t C) override;

 private:
  // dst[r*ldd + c] = round_d(src[r*lds + c]) for r < rows, c < cols (dst == src with ldd == lds:
  // in place). OpenMP-parallel over rows and column chunks once the region is large enough; runs
  // on the calling thread alone inside a parallel region. d == f32: copies. (rounding.cpp)
  void round_rows(Dtype d, float* dst, int64_t ldd, const float* src, int64_t lds, int64_t rows,
                  int64_t cols);
  // Scratch buffer `slot` (0: GEMM operand A, 1: B) of at least n floats; grows, never shrinks.
  float* gemm_scratch(int slot, int64_t n);
  // Whether bf16 GEMMs run natively (oneDNN bf16 matmul) or as the fp32 kernel on rounded
  // operands: SWITCHYARD_CPU_BF16_GEMM=native|emulated, or auto (default): emulated where oneDNN
  // has no bf16 matmul on this CPU, else both timed once per process, at the first bf16 GEMM, on a
  // training-sized shape; native is kept if 20% faster.
  bool native_bf16();
  int threads_;
  // Memory accounting: every live block from alloc() and its rounded size.
  MemoryLedger ledger_;
  float* scratch_[2] = {nullptr, nullptr};
  int64_t scratch_floats_[2] = {0, 0};
  std::unique_ptr<Bf16Matmul> bf16_matmul_;  // created on first use
  int native_bf16_ = -1;                     // -1: not decided yet
  std::string bf16_gemm_why_;                // why that path (for the start-up line)

 public:
  // The bf16 GEMM path in use ("native" or "emulated"; decides it if needed), for logs and tests.
  const char* bf16_gemm_path() { return native_bf16() ? "native" : "emulated"; }
  // Why that path: "set by SWITCHYARD_CPU_BF16_GEMM", the CPU lacks it, or the measured speed.
  const std::string& bf16_gemm_why() {
    native_bf16();
    return bf16_gemm_why_;
  }
  // Overrides the choice (the trainer makes every rank agree, so ranks compute alike); native on a
  // CPU without a oneDNN bf16 matmul is a usage Error.
  void set_native_bf16(bool native, std::string why = "set by the caller");
  std::optional<GemmPath> gemm_path(Dtype operands) override;
  void use_reference_gemm(Dtype operands, const std::string& why) override;
};

}  // namespace switchyard::core
