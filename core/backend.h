// core/backend.h: the backend interface. Every kernel a layer needs is one method here; the CPU
// backend (core/cpu/) is the reference and must be fast, the CUDA backend implements the same table.
//
// Conventions for every method:
//  - All tensors are row-major, contiguous unless a leading dimension (ld*) says otherwise.
//  - Pointers are in the backend's memory space (host for CPU, device for CUDA).
//  - Dimension letters: N tokens (B*T), C model width, V vocab, E experts, K experts per token,
//    NH query heads, NKV key/value heads, HD head dim, I expert (ffn) width.
//  - Backward kernels WRITE activation gradients (=) and ACCUMULATE parameter gradients (+=),
//    unless the comment says otherwise.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "core/choices.h"

namespace switchyard::core {

// Packed attention input: one row per token of width (NH + 2*NKV) * HD, holding q | k | v.
// doc_start (optional, device memory, [B*T]): rows packed with several documents. For position t of
// row b, doc_start[b*T+t] is the position in the row where its document begins: 0 <= value <= t,
// and either t (a document begins at t) or the value at t-1 (documents are contiguous). RoPE then
// rotates by t - doc_start[b*T+t] and attention lets query t see keys doc_start[b*T+t] <= j <= t
// (a block-diagonal causal mask). Null: plain causal rows from position 0 (bitwise as before).
// The kernels do not check the values (the model validates them on the host).
// pos0 (RoPE only, >= 0): the rows are positions pos0.. of longer sequences (incremental decoding
// with a KV cache): RoPE rotates row t by pos0 + t (less its document start); attention ignores it.
struct AttentionShape {
  int64_t B = 0, T = 0, NH = 0, NKV = 0, HD = 0;
  const int32_t* doc_start = nullptr;
  int64_t pos0 = 0;
  int64_t qkv_width() const { return (NH + 2 * NKV) * HD; }
  int64_t q_width() const { return NH * HD; }
};

// Compute dtypes (core/choices.h) by their config names: "fp32", "bf16", "fp16".
inline const char* dtype_name(Dtype d) { return name_of(d).data(); }

// Where a GEMM rounds: operands a and b are read as if rounded to their dtype, the fp32-accumulated
// product (alpha*op(A)op(B) + beta*C) is rounded to c's dtype when written. Rounding is to nearest,
// ties to even; fp16 overflow (|x| >= 65520) gives +-inf as on a GPU, NaN stays NaN. f32: as is.
// `operands`: the dtype both operands hold after that rounding (operands already stored in it need
// no rounding); a backend may then run the product with a native kernel of that dtype (fp32
// accumulation either way). The inputs in memory are never modified.
struct GemmRounding {
  Dtype a = Dtype::f32, b = Dtype::f32, c = Dtype::f32;
  Dtype operands = Dtype::f32;
  bool any() const {
    return a != Dtype::f32 || b != Dtype::f32 || c != Dtype::f32 || operands != Dtype::f32;
  }
};

// One problem of Backend::grouped_gemm: C[M,N] = alpha * op(A) * op(B) + beta * C with its own
// sizes, pointers and leading dimensions, in gemm()'s conventions.
struct GemmProblem {
  int64_t M = 0, N = 0, K = 0;
  const float* A = nullptr;
  int64_t lda = 0;
  const float* B = nullptr;
  int64_t ldb = 0;
  float* C = nullptr;
  int64_t ldc = 0;
};

// Bytes the backend holds (live) and the most it held at once since reset_peak_memory().
// How router_topk/router_backward score and select (moe/router.h has the semantics in full).
//   softmax: probs = softmax(logits); select top-k of probs (+ bias); gates = selected probs.
//   sigmoid: scores s = sigmoid(logits); probs = s / sum_e s (the aux loss's affinities);
//            select top-k of s (+ bias); gates = selected s.
// Gates are divided by their sum when renormalize. bias [E] (backend memory, may be null) steers
// the selection only, never a gate value.
struct RouterOptions {
  RouterScoring scoring = RouterScoring::softmax;
  bool renormalize = true;
  const float* bias = nullptr;
  // top_p > 0: adaptive experts per token. Of the K selected slots (descending selection score),
  // a token keeps the shortest prefix whose probs (the softmax probabilities; sigmoid scoring:
  // the affinities s_e / sum s) add up to >= top_p, at least one; the other slots get idx -1,
  // gate 0 (dropped). renormalize then runs over the kept slots only. 0: all K slots kept.
  float top_p = 0.f;
};

struct MemoryStats {
  int64_t live_bytes = 0;
  int64_t peak_bytes = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // ---- memory ----
  virtual void* alloc(size_t bytes) = 0;  // zero-filled, 64-byte aligned
  virtual void release(void* p) = 0;
  virtual void zero(void* p, size_t bytes) = 0;
  virtual void copy_to_host(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void copy_from_host(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;  // within the backend's memory
  virtual void synchronize() = 0;
  virtual MemoryStats memory_stats() const = 0;
  virtual void reset_peak_memory() = 0;  // peak = live

  // ---- placement ----
  // Whether the backend's memory is host memory that host code may read and write (CPU: true;
  // CUDA: false, device memory). Code that hands buffers to a communicator compares it with the
  // communicator's memory space (parallel::make_token_exchange).
  virtual bool host_memory() const { return true; }
  // The GPU this backend computes on (-1: the host) and the stream its work is ordered on (a
  // cudaStream_t; null on the host): what a device communicator (NCCL) joins and orders against.
  virtual int device() const { return -1; }
  virtual void* stream() const { return nullptr; }
  // Bytes of memory the device holds in all; 0 for the host (whose memory launch/ measures).
  virtual int64_t memory_capacity() const { return 0; }
  // Seconds per run of `work` (backend calls), enqueued `repeats` times after one warm-up run and
  // timed on the backend's own clock: events on its stream (CUDA), else the host's steady clock
  // between two synchronize() calls. For benchmarks. (Inline, as every virtual here that is not
  // pure: a backend defined in another library then needs no key function from core's.)
  virtual double seconds_per_run(const std::function<void()>& work, int repeats) {
    work();
    synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < repeats; ++r) work();
    synchronize();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / std::max(repeats, 1);
  }

  // ---- GEMM ----
  // C[M,N] = alpha * op(A) * op(B) + beta * C, row-major; op(X) = X^T when trans_x.
  // A is [M,K] (or [K,M] transposed), B is [K,N] (or [N,K] transposed).
  virtual void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                    const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                    int64_t ldc, const GemmRounding& rounding = {}) = 0;
  // Independent GEMMs that share the transposes, alpha, beta and rounding (the experts' GEMMs of
  // one role): each problem's C as gemm() computes it. M or N == 0: nothing; K == 0: C = beta * C
  // (rounded to rounding.c), as gemm(). The C regions must not overlap each other nor any problem's
  // A or B: a backend may run the problems concurrently, in any order. `problems` is host memory,
  // its pointers are in the backend's memory. Default: gemm() for each problem, in order.
  virtual void grouped_gemm(bool trans_a, bool trans_b, std::span<const GemmProblem> problems,
                            float alpha, float beta, const GemmRounding& rounding = {}) {
    for (const GemmProblem& p : problems)
      gemm(trans_a, trans_b, p.M, p.N, p.K, alpha, p.A, p.lda, p.B, p.ldb, beta, p.C, p.ldc,
           rounding);
  }
  // x[i] = round(x[i]) to dtype d in place, same rounding as GemmRounding (d == f32: no-op).
  virtual void round_to(Dtype d, float* x, int64_t n) = 0;
  // Where a backend has two kernels for the GEMMs of `operands` dtype (the CPU's bf16: oneDNN's
  // native bf16 matmul, or the emulated path through the fp32 kernel), the one in use ("native" /
  // "emulated") and why, deciding it if needed; nullopt where it has one. use_reference_gemm
  // switches to the reference path (`fast` false), so that ranks that must compute alike agree.
  struct GemmPath {
    std::string name, why;
    bool fast = false;
  };
  virtual std::optional<GemmPath> gemm_path(Dtype) { return std::nullopt; }
  virtual void use_reference_gemm(Dtype, const std::string& /*why*/) {}

  // ---- elementwise and reductions ----
  virtual void add(float* out, const float* a, const float* b, int64_t n) = 0;  // out = a + b
  virtual void axpy(float* y, float alpha, const float* x, int64_t n) = 0;      // y += alpha*x
  // x[r, c] += bias[c] for r < rows
  virtual void add_bias(float* x, const float* bias, int64_t rows, int64_t cols) = 0;
  // dbias[c] += sum_r dout[r, c]
  virtual void bias_backward(float* dbias, const float* dout, int64_t rows, int64_t cols) = 0;
  // sum of squares of x[0..n) in double, returned to the host (gradient-norm clipping)
  virtual double sum_squares(const float* x, int64_t n) = 0;
  virtual void scale(float* x, float alpha, int64_t n) = 0;  // x *= alpha

  // ---- optimizer: one AdamW step over n elements (decoupled decay, bias-corrected moments) ----
  // g = grad_scale * grads (clipping and unscaling folded in); p -= lr*wd*p;
  // m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
  // p -= lr * (m / bc1) / (sqrt(v / bc2) + eps)   with bc1 = 1-b1^t, bc2 = 1-b2^t.
  // p_compute (optional): also writes round(p) to dtype `compute` there, in the same pass (the
  // compute weights of mixed precision).
  // The per-step constants every backend's AdamW kernel uses, computed once on the host in fp32
  // (so backends round them alike): p = decay * p - step * m / (sqrt(v) * inv_sqrt_bc2 + eps).
  struct AdamwConstants {
    float decay, step, inv_sqrt_bc2;
    static AdamwConstants of(float lr, float weight_decay, float bc1, float bc2) {
      return {1.0f - lr * weight_decay, lr / bc1, 1.0f / std::sqrt(bc2)};
    }
  };
  virtual void adamw_update(float* p, const float* grads, float* m, float* v, int64_t n,
                            float grad_scale, float lr, float beta1, float beta2, float eps,
                            float weight_decay, float bc1, float bc2, float* p_compute = nullptr,
                            Dtype compute = Dtype::f32) = 0;

  // ---- embedding ----
  virtual void embedding_forward(float* out, const int32_t* tokens, const float* wte, int64_t N,
                                 int64_t C) = 0;
  virtual void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int64_t N,
                                  int64_t C) = 0;  // dwte +=

  // ---- RMSNorm: out = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps) per row ----
  virtual void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int64_t N,
                               int64_t C, float eps) = 0;
  virtual void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x,
                                const float* w, const float* rstd, int64_t N, int64_t C) = 0;
  // Residual add fused with the RMSNorm that follows it (one pass instead of two):
  // sum = a + b (written, [N,C]), then out/rstd = rmsnorm_forward(sum, w). Same results as add()
  // followed by rmsnorm_forward(). sum may alias a or b; out must not alias a, b or sum.
  virtual void add_rmsnorm_forward(float* sum, float* out, float* rstd, const float* a,
                                   const float* b, const float* w, int64_t N, int64_t C,
                                   float eps) = 0;
  // rmsnorm_backward with dx ACCUMULATED (dx += the input gradient; the residual stream's
  // gradient) instead of written; dw += as in rmsnorm_backward. Same results as
  // rmsnorm_backward into a scratch buffer followed by axpy(dx, 1, scratch).
  virtual void rmsnorm_backward_accumulate(float* dx, float* dw, const float* dout,
                                           const float* x, const float* w, const float* rstd,
                                           int64_t N, int64_t C) = 0;

  // ---- rotary embedding (rotate-half convention) on the q and k parts of a packed qkv buffer, in
  // place; position of row b*T+t is s.pos0 + t (less s.doc_start[b*T+t] with packed rows). backward applies
  // the inverse rotation to dqkv in place. ----
  virtual void rope_forward(float* qkv, const AttentionShape& s, float theta) = 0;
  virtual void rope_backward(float* dqkv, const AttentionShape& s, float theta) = 0;

  // ---- causal grouped-query attention, scale 1/sqrt(HD); block-diagonal causal with s.doc_start ----
  // qkv [B*T, qkv_width] packed q|k|v; out [B*T, NH*HD]; lse [B, NH, T] (log-sum-exp of the scaled
  // scores, saved for backward). Query head h uses kv head h / (NH/NKV).
  virtual void attention_forward(float* out, float* lse, const float* qkv,
                                 const AttentionShape& s) = 0;
  // dqkv [B*T, qkv_width] is written (=) in full.
  virtual void attention_backward(float* dqkv, const float* dout, const float* out,
                                  const float* lse, const float* qkv, const AttentionShape& s) = 0;
  // One query row against a KV cache (incremental decoding): qkv [T, qkv_width] holds one
  // sequence's rows after RoPE (s.B == 1, no doc_start); only row T-1's q part and every row's k|v
  // are read. out [NH*HD] = attention_forward's row T-1 (no lse).
  virtual void attention_decode(float* out, const float* qkv, const AttentionShape& s) = 0;

  // ---- SwiGLU: h [rows, 2*I] holds gate | up; out [rows, I] = silu(gate) * up ----
  virtual void swiglu_forward(float* out, const float* h, int64_t rows, int64_t I) = 0;
  virtual void swiglu_backward(float* dh, const float* dout, const float* h, int64_t rows,
                               int64_t I) = 0;  // dh =
  // ---- sigmoid gate (shared expert): out[r,:] += sigmoid(logit[r]) * y[r,:] ----
  virtual void sigmoid_gate_forward(float* out, const float* logit, const float* y, int64_t rows,
                                    int64_t C) = 0;
  // dy = sigmoid(logit) * dout (=); dlogit = sigmoid'(logit) * dot(dout[r], y[r]) (=)
  virtual void sigmoid_gate_backward(float* dy, float* dlogit, const float* dout,
                                     const float* logit, const float* y, int64_t rows,
                                     int64_t C) = 0;

  // ---- cross-entropy over rows of logits [N,V]; targets < 0 are ignored (loss 0) ----
  virtual void cross_entropy_forward(float* losses, const float* logits, const int32_t* targets,
                                     int64_t N, int64_t V) = 0;
  // dlogits[i,:] = (softmax(logits[i,:]) - onehot(target_i)) * dloss[i]  (written in place over
  // the logits buffer when dlogits == logits)
  virtual void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                                      const float* dloss, int64_t N, int64_t V) = 0;

  // ---- MoE routing (router scores in fp32, top-k; RouterOptions above) ----
  // logits [N,E] -> probs [N,E], lse [N] (logsumexp of the logits, for the z loss), idx [N,K]
  // (top-k experts, descending selection score, ties to the lower index; top_p > 0: slots past
  // the cut are -1), gates [N,K] (0 for a -1 slot).
  virtual void router_topk(float* probs, float* lse, int32_t* idx, float* gates,
                           const float* logits, int64_t N, int64_t E, int64_t K,
                           const RouterOptions& opt) = 0;
  // dlogits [N,E] (=) from: dgates [N,K] through the renormalisation and the scoring;
  // dprobs_all[e] added to dL/dprobs[t,e] for every token (the aux-loss term, may be null);
  // z_coef: adds z_coef * 2*lse[t] * softmax(logits)[t,e] (gradient of z_coef * lse[t]^2).
  // logits: read by sigmoid scoring only (may be null for softmax).
  virtual void router_backward(float* dlogits, const float* dgates, const float* logits,
                               const float* probs, const float* lse, const int32_t* idx,
                               const float* gates, const float* dprobs_all, float z_coef,
                               int64_t N, int64_t E, int64_t K, const RouterOptions& opt) = 0;

  // ---- routing plan: expert-sorted order of the routing slots ----
  // idx [N,K] -> expert_offsets [E+1] (rows of expert e are [offsets[e], offsets[e+1])) and
  // pos [N*K] (row of slot s = t*K+k in expert-sorted order; slots of one expert keep token order).
  // Slots whose idx is < 0 are dropped: pos = -1.
  virtual void route_plan(int32_t* pos, int32_t* expert_offsets, const int32_t* idx, int64_t N,
                          int64_t E, int64_t K) = 0;

  // ---- token permutation (local dispatch / combine) ----
  // A routing slot s = t*K + k. pos[s] is the row of slot s in expert-sorted order, or -1 if the
  // slot was dropped. dispatch: xp[pos[s]] = x[s / K].
  virtual void dispatch_forward(float* xp, const float* x, const int32_t* pos, int64_t N,
                                int64_t K, int64_t C) = 0;
  // dx[t] = sum_k dxp[pos[t*K+k]]  (=)
  virtual void dispatch_backward(float* dx, const float* dxp, const int32_t* pos, int64_t N,
                                 int64_t K, int64_t C) = 0;
  // out[t] = sum_k gates[t*K+k] * y[pos[t*K+k]]  (=)
  virtual void combine_forward(float* out, const float* y, const int32_t* pos, const float* gates,
                               int64_t N, int64_t K, int64_t C) = 0;
  // dy[pos[s]] = gates[s] * dout[s/K]  (=, every row of dy that a slot maps to);
  // dgates[s] = dot(dout[s/K], y[pos[s]])  (=, 0 for dropped slots)
  virtual void combine_backward(float* dy, float* dgates, const float* dout, const float* y,
                                const int32_t* pos, const float* gates, int64_t N, int64_t K,
                                int64_t C) = 0;

  // ---- token exchange: the pack and sum steps of parallel::TokenExchange (rows of token data;
  // the index arrays are the exchange plan's, in the backend's memory like the rows) ----
  // dst row i = src row index[i] for i < n, rows of row_bytes bytes; index[i] < 0: row i untouched.
  virtual void gather_rows(void* dst, const void* src, const int64_t* index, int64_t n,
                           int64_t row_bytes) = 0;
  // dst row index[i] = src row i for i < n, rows of row_bytes bytes (no index repeats).
  virtual void scatter_rows(void* dst, const void* src, const int64_t* index, int64_t n,
                            int64_t row_bytes) = 0;
  // For i = 0..n-1 in this order: dst[dst_index[i]] += w[i] * src[src_index[i]] (rows of C
  // floats), written (=) instead where first[i] (first null: always added); w null: weight 1 with
  // the product skipped. Every element sums its terms in index order, whatever the parallelism:
  // the one summation of the exchange, so flat and hierarchical round alike.
  virtual void scatter_add_rows(float* dst, const int64_t* dst_index, const float* src,
                                const int64_t* src_index, const float* w, const uint8_t* first,
                                int64_t n, int64_t C) = 0;
  // Combine backward where the expert outputs live, in place over dy [rows, C] (dout's rows):
  // dgate[r] = dot(dy[r], y[r]) accumulated in double (=), then dy[r] *= gate[r].
  virtual void gate_dot_scale(float* dy, float* dgate, const float* y, const float* gate,
                              int64_t rows, int64_t C) = 0;
};

// The CPU backend (oneDNN GEMMs, OpenMP loops). threads <= 0 keeps OpenMP's default.
std::unique_ptr<Backend> make_cpu_backend(int threads = 0);
// The backend the commands run on, chosen in this one place (core/backend.cpp): the CPU backend
// with `threads` threads (<= 0 keeps OpenMP's default), or the CUDA backend on GPU
// local_rank % (GPUs visible): a usage error naming `key` where this build or machine has none.
std::unique_ptr<Backend> make_backend(Device device, int threads = 0, int local_rank = 0,
                                      std::string_view key = "train.device");

}  // namespace switchyard::core
