// core/cuda/kernels.h: the CUDA kernels of the backend, as plain host functions that launch them on
// a stream (asynchronous; no error check: the caller, CudaBackend, checks each launch). Defined in
// the .cu files by family; the semantics of each are those of the Backend method of the same name
// (core/backend.h). Sizes may be 0 (nothing is launched). Only this header and the .cu files see
// device code, so the rest of the backend compiles with the host compiler. No Switchyard header is
// included: nvcc does not compile the fmt headers that core/choices.h pulls in (fmt 9), so the
// dtype of a rounding is the Half enum below (CudaBackend converts from core::Dtype).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace switchyard::core::cuda_kernels {

// The dtype a value is rounded to: fp32 (none), bf16, fp16.
enum class Half : uint8_t { none, bf16, f16 };

// ---- elementwise.cu: elementwise, rounding, reductions, AdamW ----
void add(float* out, const float* a, const float* b, int64_t n, cudaStream_t s);
void axpy(float* y, float alpha, const float* x, int64_t n, cudaStream_t s);
void scale(float* x, float alpha, int64_t n, cudaStream_t s);
// C[r*ldc + c] = beta * C (0 when beta == 0, whatever C held) for r < rows, c < cols
void scale_rows(float* C, int64_t ldc, int64_t rows, int64_t cols, float beta, cudaStream_t s);
void add_bias(float* x, const float* bias, int64_t rows, int64_t cols, cudaStream_t s);
void bias_backward(float* dbias, const float* dout, int64_t rows, int64_t cols, cudaStream_t s);
// dst[r*ldd + c] = round_d(src[r*lds + c]) (fp32 values); dst may equal src with ldd == lds.
void round_rows(Half d, float* dst, int64_t ldd, const float* src, int64_t lds, int64_t rows,
                int64_t cols, cudaStream_t s);
// dst[r*cols + c] = the 16-bit pattern of src[r*lds + c] in dtype d (bf16 or f16), packed.
void pack_half(Half d, uint16_t* dst, const float* src, int64_t lds, int64_t rows, int64_t cols,
               cudaStream_t s);
// dst[r*ldd + c] = the fp32 value of the 16-bit pattern src[r*cols + c] in dtype d (packed rows,
// as pack_half writes them): exact.
void unpack_half(Half d, float* dst, int64_t ldd, const uint16_t* src, int64_t rows, int64_t cols,
                 cudaStream_t s);
// dst[0..bytes) = host[0..bytes), in stream order, carried in kernel parameters (one launch per
// 2 KiB): the host buffer may be reused on return and the host never waits (for small tables such
// as grouped GEMM pointer arrays; cudaMemcpyAsync from pageable memory guarantees neither).
void upload_small(void* dst, const void* host, size_t bytes, cudaStream_t s);
// partial: scratch of sum_squares_partials() doubles; result: one double (device).
int64_t sum_squares_partials();
void sum_squares(double* result, double* partial, const float* x, int64_t n, cudaStream_t s);
void adamw_update(float* p, const float* grads, float* m, float* v, int64_t n, float grad_scale,
                  float decay, float step, float beta1, float beta2, float eps,
                  float inv_sqrt_bc2, float* p_compute, Half compute, cudaStream_t s);

// ---- dense.cu: embedding, RMSNorm, RoPE, cross-entropy ----
void embedding_forward(float* out, const int32_t* tokens, const float* wte, int64_t N, int64_t C,
                       cudaStream_t s);
void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int64_t N,
                        int64_t C, cudaStream_t s);
// sum == nullptr: plain RMSNorm of a; else sum = a + b first, normalised.
void rmsnorm_forward(float* sum, float* out, float* rstd, const float* a, const float* b,
                     const float* w, int64_t N, int64_t C, float eps, cudaStream_t s);
void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                      const float* rstd, int64_t N, int64_t C, bool accumulate, cudaStream_t s);
// sign +1: rotate by +angle (forward), -1: the inverse (backward). doc_start [B*T] or null
// (AttentionShape::doc_start); pos0: AttentionShape::pos0.
void rope(float* qkv, const int32_t* doc_start, int64_t pos0, int64_t B, int64_t T, int64_t NH,
          int64_t NKV, int64_t HD, float theta, float sign, cudaStream_t s);
void cross_entropy_forward(float* losses, const float* logits, const int32_t* targets, int64_t N,
                           int64_t V, cudaStream_t s);
void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                            const float* dloss, int64_t N, int64_t V, cudaStream_t s);

// ---- attention.cu: causal grouped-query attention (fp32, flash style); doc_start [B*T] or null:
// the block-diagonal causal mask of packed rows (AttentionShape::doc_start) ----
// The largest head dim the kernels take, and the dynamic shared memory (bytes) the largest of
// them needs for head dim HD (CudaBackend checks both against the device before launching).
int64_t attention_max_head_dim();
size_t attention_smem_bytes(int64_t HD);
void attention_forward(float* out, float* lse, const float* qkv, const int32_t* doc_start,
                       int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t HD, cudaStream_t s);
// D: scratch of B*NH*T floats (rowsum(dout*out), computed first).
void attention_backward(float* dqkv, float* D, const float* dout, const float* out,
                        const float* lse, const float* qkv, const int32_t* doc_start, int64_t B,
                        int64_t T, int64_t NH, int64_t NKV, int64_t HD, cudaStream_t s);

// p: scratch of NH*T floats (the scores). AttentionShape::B is 1, no doc_start.
void attention_decode(float* out, float* p, const float* qkv, int64_t T, int64_t NH, int64_t NKV, int64_t HD,
                      cudaStream_t s);

// ---- moe.cu: SwiGLU, sigmoid gate, router, routing plan, dispatch/combine ----
void swiglu_forward(float* out, const float* h, int64_t rows, int64_t I, cudaStream_t s);
void swiglu_backward(float* dh, const float* dout, const float* h, int64_t rows, int64_t I,
                     cudaStream_t s);
void sigmoid_gate_forward(float* out, const float* logit, const float* y, int64_t rows, int64_t C,
                          cudaStream_t s);
void sigmoid_gate_backward(float* dy, float* dlogit, const float* dout, const float* logit,
                           const float* y, int64_t rows, int64_t C, cudaStream_t s);
void router_topk(float* probs, float* lse, int32_t* idx, float* gates, const float* logits,
                 int64_t N, int64_t E, int64_t K, bool sigmoid_scoring, bool renormalize,
                 const float* bias, float top_p, cudaStream_t s);
void router_backward(float* dlogits, const float* dgates, const float* logits, const float* probs,
                     const float* lse, const int32_t* idx, const float* gates,
                     const float* dprobs_all, float z_coef, int64_t N, int64_t E, int64_t K,
                     bool sigmoid_scoring, bool renormalize, cudaStream_t s);
void route_plan(int32_t* pos, int32_t* expert_offsets, const int32_t* idx, int64_t N, int64_t E,
                int64_t K, cudaStream_t s);
void dispatch_forward(float* xp, const float* x, const int32_t* pos, int64_t N, int64_t K,
                      int64_t C, cudaStream_t s);
// out[t] = sum_k (gates[t*K+k] *) rows[pos[t*K+k]]: dispatch backward (gates null), combine forward
void sum_slot_rows(float* out, const float* rows, const int32_t* pos, const float* gates,
                   int64_t N, int64_t K, int64_t C, cudaStream_t s);
void combine_backward(float* dy, float* dgates, const float* dout, const float* y,
                      const int32_t* pos, const float* gates, int64_t N, int64_t K, int64_t C,
                      cudaStream_t s);

// ---- exchange.cu: the token exchange's pack and sum steps ----
void gather_rows(void* dst, const void* src, const int64_t* index, int64_t n, int64_t row_bytes, cudaStream_t s);
void scatter_rows(void* dst, const void* src, const int64_t* index, int64_t n, int64_t row_bytes, cudaStream_t s);
void scatter_add_rows(float* dst, const int64_t* dst_index, const float* src, const int64_t* src_index,
                      const float* w, const uint8_t* first, int64_t n, int64_t C, cudaStream_t s);
void gate_dot_scale(float* dy, float* dgate, const float* y, const float* gate, int64_t rows, int64_t C,
                    cudaStream_t s);

}  // namespace switchyard::core::cuda_kernels
