// core/cpu/cpu_backend.h: the CPU backend. GEMMs go to oneDNN (dnnl_sgemm); other kernels are
// OpenMP loops. The methods are defined across core/cpu/*.cpp, one file per kind of kernel:
//   cpu_backend.cpp  memory, GEMM, elementwise, reductions
//   dense_kernels.cpp embedding, RMSNorm, RoPE, cross-entropy
//   attention.cpp    causal GQA attention forward/backward
//   moe_kernels.cpp  SwiGLU, sigmoid gate, router top-k and its backward, routing plan,
//                    dispatch/combine permutations
#pragma once

#include "core/backend.h"

namespace switchyard::core {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads);
  std::string name() const override { return "cpu"; }
  int threads() const { return threads_; }

  void* alloc(size_t bytes) override;
  void release(void* p) override;
  void zero(void* p, size_t bytes) override;
  void copy_to_host(void* host_dst, const void* src, size_t bytes) override;
  void copy_from_host(void* dst, const void* host_src, size_t bytes) override;
  void synchronize() override;
  void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) override;
  void add(float* out, const float* a, const float* b, int64_t n) override;
  void axpy(float* y, float alpha, const float* x, int64_t n) override;
  void add_bias(float* x, const float* bias, int64_t rows, int64_t cols) override;
  void bias_backward(float* dbias, const float* dout, int64_t rows, int64_t cols) override;
  double sum_squares(const float* x, int64_t n) override;
  void scale(float* x, float alpha, int64_t n) override;
  void adamw_update(float* p, const float* grads, float* m, float* v, int64_t n, float grad_scale, float lr, float beta1, float beta2, float eps, float weight_decay, float bc1, float bc2) override;
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
  void swiglu_forward(float* out, const float* h, int64_t rows, int64_t I) override;
  void swiglu_backward(float* dh, const float* dout, const float* h, int64_t rows, int64_t I) override;
  void sigmoid_gate_forward(float* out, const float* logit, const float* y, int64_t rows, int64_t C) override;
  void sigmoid_gate_backward(float* dy, float* dlogit, const float* dout, const float* logit, const float* y, int64_t rows, int64_t C) override;
  void cross_entropy_forward(float* losses, const float* logits, const int32_t* targets, int64_t N, int64_t V) override;
  void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets, const float* dloss, int64_t N, int64_t V) override;
  void router_topk(float* probs, float* lse, int32_t* idx, float* gates, const float* logits, int64_t N, int64_t E, int64_t K, bool renormalize) override;
  void router_backward(float* dlogits, const float* dgates, const float* probs, const float* lse, const int32_t* idx, const float* gates, const float* dprobs_all, float z_coef, int64_t N, int64_t E, int64_t K, bool renormalize) override;
  void route_plan(int32_t* pos, int32_t* expert_offsets, const int32_t* idx, int64_t N, int64_t E, int64_t K) override;
  void dispatch_forward(float* xp, const float* x, const int32_t* pos, int64_t N, int64_t K, int64_t C) override;
  void dispatch_backward(float* dx, const float* dxp, const int32_t* pos, int64_t N, int64_t K, int64_t C) override;
  void combine_forward(float* out, const float* y, const int32_t* pos, const float* gates, int64_t N, int64_t K, int64_t C) override;
  void combine_backward(float* dy, float* dgates, const float* dout, const float* y, const int32_t* pos, const float* gates, int64_t N, int64_t K, int64_t C) override;

 private:
  int threads_;
};

}  // namespace switchyard::core
