// core/cuda/cuda_backend.cpp: the device query and factory of core/cuda/cuda.h, CudaBackend's
// memory (cudaMalloc with live/peak accounting) and its kernel table: each method checks what the
// host can check, launches the kernel of core/cuda/kernels.h on the backend's stream and checks
// the launch.
#include "core/cuda/cuda_backend.h"

#include <algorithm>
#include <cmath>

#include "core/cuda/cuda.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/kernels.h"
#include "core/error.h"

namespace switchyard::core {

namespace k = cuda_kernels;

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver or no device: clear the error, report none
    return 0;
  }
  return n;
}

std::unique_ptr<Backend> make_cuda_backend(int device) {
  const int count = cuda_device_count();
  if (count == 0)
    throw_usage("device cuda:{} asked for, but no CUDA GPU is usable here (no driver or no device); "
                "use the cpu device or run on a GPU machine", device);
  if (device < 0 || device >= count)
    throw_usage("device cuda:{} asked for, but this machine has {} GPU(s): 0..{}", device, count,
                count - 1);
  return std::make_unique<CudaBackend>(device);
}

CudaBackend::CudaBackend(int device) : device_(device) {
  use_device();
  SY_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  SY_CUBLAS_CHECK(cublasCreate(&cublas_));
  SY_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
}

CudaBackend::~CudaBackend() {
  // No throwing from a destructor: errors here are ignored (the context may already be gone).
  cudaSetDevice(device_);
  cudaStreamSynchronize(stream_);
  for (void*& p : scratch_)
    if (p) cudaFree(p);
  if (cublas_) cublasDestroy(cublas_);
  if (stream_) cudaStreamDestroy(stream_);
}

void CudaBackend::use_device() const { SY_CUDA_CHECK(cudaSetDevice(device_)); }

// ---------------------------------------------------------------- memory

void* CudaBackend::alloc(size_t bytes) {
  use_device();
  size_t rounded = (bytes + 63) / 64 * 64;
  if (rounded == 0) rounded = 64;
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, rounded);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    throw_internal("cuda backend: cudaMalloc of {} bytes on device {} failed: {} ({}); {} bytes live",
                   bytes, device_, cudaGetErrorName(err), cudaGetErrorString(err),
                   memory_stats().live_bytes);
  }
  SY_CUDA_CHECK(cudaMemsetAsync(p, 0, rounded, stream_));
  ledger_.add(p, rounded);
  return p;
}

void CudaBackend::release(void* p) {
  if (!p) return;
  ledger_.remove(p, "cuda");
  use_device();
  SY_CUDA_CHECK(cudaFree(p));
}

MemoryStats CudaBackend::memory_stats() const { return ledger_.stats(); }

int64_t CudaBackend::memory_capacity() const {
  use_device();
  size_t free_bytes = 0, total = 0;
  SY_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
  return static_cast<int64_t>(total);
}

void CudaBackend::reset_peak_memory() { ledger_.reset_peak(); }

double CudaBackend::seconds_per_run(const std::function<void()>& work, int repeats) {
  use_device();
  work();  // warm-up: cuBLAS heuristics, scratch growth
  cudaEvent_t start = nullptr, stop = nullptr;
  SY_CUDA_CHECK(cudaEventCreate(&start));
  SY_CUDA_CHECK(cudaEventCreate(&stop));
  SY_CUDA_CHECK(cudaEventRecord(start, stream_));
  for (int r = 0; r < repeats; ++r) work();
  SY_CUDA_CHECK(cudaEventRecord(stop, stream_));
  SY_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  SY_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return static_cast<double>(ms) * 1e-3 / std::max(repeats, 1);
}

void* CudaBackend::scratch(int slot, size_t bytes) {
  if (bytes > scratch_bytes_[slot]) {
    if (scratch_[slot]) synchronize();  // kernels may still read the old buffer
    release(scratch_[slot]);
    scratch_[slot] = nullptr;
    scratch_bytes_[slot] = 0;
    scratch_[slot] = alloc(bytes);
    scratch_bytes_[slot] = bytes;
  }
  return scratch_[slot];
}

void CudaBackend::zero(void* p, size_t bytes) {
  use_device();
  if (bytes) SY_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
}
void CudaBackend::copy_to_host(void* host_dst, const void* src, size_t bytes) {
  use_device();
  if (bytes) SY_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  SY_CUDA_CHECK(cudaStreamSynchronize(stream_));
}
void CudaBackend::copy_from_host(void* dst, const void* host_src, size_t bytes) {
  use_device();
  if (bytes) SY_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_));
  SY_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the host buffer may be reused on return
}
void CudaBackend::copy(void* dst, const void* src, size_t bytes) {
  use_device();
  if (bytes) SY_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
}
void CudaBackend::synchronize() {
  use_device();
  SY_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

// ---------------------------------------------------------------- elementwise, reductions

// Launches a kernel of core/cuda/kernels.h on this backend's device and stream, then checks it.
#define SY_LAUNCH(kernel, ...)               \
  do {                                       \
    use_device();                            \
    k::kernel(__VA_ARGS__, stream_);         \
    SY_CUDA_CHECK_LAUNCH();                  \
  } while (0)

void CudaBackend::round_to(Dtype d, float* x, int64_t n) {
  if (d == Dtype::f32 || n <= 0) return;
  SY_LAUNCH(round_rows, half_of(d), x, n, x, n, 1, n);
}
void CudaBackend::add(float* out, const float* a, const float* b, int64_t n) { SY_LAUNCH(add, out, a, b, n); }
void CudaBackend::axpy(float* y, float alpha, const float* x, int64_t n) { SY_LAUNCH(axpy, y, alpha, x, n); }
void CudaBackend::scale(float* x, float alpha, int64_t n) { SY_LAUNCH(scale, x, alpha, n); }
void CudaBackend::add_bias(float* x, const float* bias, int64_t rows, int64_t cols) {
  SY_LAUNCH(add_bias, x, bias, rows, cols);
}
void CudaBackend::bias_backward(float* dbias, const float* dout, int64_t rows, int64_t cols) {
  SY_LAUNCH(bias_backward, dbias, dout, rows, cols);
}

double CudaBackend::sum_squares(const float* x, int64_t n) {
  if (n <= 0) return 0.0;
  const int64_t parts = k::sum_squares_partials();
  auto* buf = static_cast<double*>(scratch(2, static_cast<size_t>(parts + 1) * sizeof(double)));
  SY_LAUNCH(sum_squares, buf + parts, buf, x, n);
  double result = 0;
  SY_CUDA_CHECK(cudaMemcpyAsync(&result, buf + parts, sizeof(double), cudaMemcpyDeviceToHost, stream_));
  SY_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return result;
}

void CudaBackend::adamw_update(float* p, const float* grads, float* m, float* v, int64_t n,
                               float grad_scale, float lr, float beta1, float beta2, float eps,
                               float weight_decay, float bc1, float bc2, float* p_compute,
                               Dtype compute) {
  const AdamwConstants k = AdamwConstants::of(lr, weight_decay, bc1, bc2);
  SY_LAUNCH(adamw_update, p, grads, m, v, n, grad_scale, k.decay, k.step, beta1, beta2, eps,
            k.inv_sqrt_bc2, p_compute, half_of(compute));
}

// ---------------------------------------------------------------- dense layers

void CudaBackend::embedding_forward(float* out, const int32_t* tokens, const float* wte, int64_t N,
                                    int64_t C) {
  SY_LAUNCH(embedding_forward, out, tokens, wte, N, C);
}
void CudaBackend::embedding_backward(float* dwte, const float* dout, const int32_t* tokens,
                                     int64_t N, int64_t C) {
  SY_LAUNCH(embedding_backward, dwte, dout, tokens, N, C);
}
void CudaBackend::rmsnorm_forward(float* out, float* rstd, const float* x, const float* w,
                                  int64_t N, int64_t C, float eps) {
  SY_LAUNCH(rmsnorm_forward, nullptr, out, rstd, x, nullptr, w, N, C, eps);
}
void CudaBackend::add_rmsnorm_forward(float* sum, float* out, float* rstd, const float* a,
                                      const float* b, const float* w, int64_t N, int64_t C,
                                      float eps) {
  SY_LAUNCH(rmsnorm_forward, sum, out, rstd, a, b, w, N, C, eps);
}
void CudaBackend::rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x,
                                   const float* w, const float* rstd, int64_t N, int64_t C) {
  SY_LAUNCH(rmsnorm_backward, dx, dw, dout, x, w, rstd, N, C, false);
}
void CudaBackend::rmsnorm_backward_accumulate(float* dx, float* dw, const float* dout,
                                              const float* x, const float* w, const float* rstd,
                                              int64_t N, int64_t C) {
  SY_LAUNCH(rmsnorm_backward, dx, dw, dout, x, w, rstd, N, C, true);
}
void CudaBackend::rope_forward(float* qkv, const AttentionShape& s, float theta) {
  SY_CHECK(s.HD % 2 == 0, "rope needs an even head dim, got {}", s.HD);
  SY_LAUNCH(rope, qkv, s.doc_start, s.pos0, s.B, s.T, s.NH, s.NKV, s.HD, theta, 1.0f);
}
void CudaBackend::rope_backward(float* dqkv, const AttentionShape& s, float theta) {
  SY_CHECK(s.HD % 2 == 0, "rope needs an even head dim, got {}", s.HD);
  SY_LAUNCH(rope, dqkv, s.doc_start, s.pos0, s.B, s.T, s.NH, s.NKV, s.HD, theta, -1.0f);
}
// The shapes the attention kernels take: a usage error for a bad shape, an internal one for a
// head dim or grid beyond the kernels' or the device's limits.
void CudaBackend::check_attention(const AttentionShape& s) const {
  SY_CHECK(s.B >= 0 && s.T >= 0 && s.HD > 0 && s.NKV > 0 && s.NH > 0 && s.NH % s.NKV == 0,
           "bad attention shape B={} T={} NH={} NKV={} HD={}", s.B, s.T, s.NH, s.NKV, s.HD);
  if (s.HD > k::attention_max_head_dim())
    throw_internal("cuda backend: attention supports head dims up to {}, got {}",
                   k::attention_max_head_dim(), s.HD);
  if (s.B > 65535 || s.NH > 65535)
    throw_internal("cuda backend: attention grid too large (B={}, NH={}; at most 65535 each)", s.B,
                   s.NH);
  int optin = 0;
  SY_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device_));
  const size_t need = k::attention_smem_bytes(s.HD);
  if (need > static_cast<size_t>(optin))
    throw_internal("cuda backend: attention with head dim {} needs {} bytes of shared memory per "
                   "block, device {} allows {}",
                   s.HD, need, device_, optin);
}
void CudaBackend::attention_forward(float* out, float* lse, const float* qkv,
                                    const AttentionShape& s) {
  use_device();
  check_attention(s);
  SY_LAUNCH(attention_forward, out, lse, qkv, s.doc_start, s.B, s.T, s.NH, s.NKV, s.HD);
}
void CudaBackend::attention_decode(float* out, const float* qkv, const AttentionShape& s) {
  use_device();
  check_attention(s);
  SY_CHECK(s.B == 1 && !s.doc_start, "attention_decode: one sequence without doc_start (got B {})", s.B);
  if (s.T == 0) return;
  auto* p = static_cast<float*>(scratch(3, static_cast<size_t>(s.NH * s.T) * sizeof(float)));
  SY_LAUNCH(attention_decode, out, p, qkv, s.T, s.NH, s.NKV, s.HD);
}
void CudaBackend::attention_backward(float* dqkv, const float* dout, const float* out,
                                     const float* lse, const float* qkv, const AttentionShape& s) {
  use_device();
  check_attention(s);
  if (s.B == 0 || s.T == 0) return;
  auto* D = static_cast<float*>(scratch(3, static_cast<size_t>(s.B * s.NH * s.T) * sizeof(float)));
  SY_LAUNCH(attention_backward, dqkv, D, dout, out, lse, qkv, s.doc_start, s.B, s.T, s.NH, s.NKV, s.HD);
}
// Targets are in device memory, so the CPU's range check is not made here: a target >= V gives a
// NaN loss (and NaN gradients), which the trainer's non-finite check reports.
void CudaBackend::cross_entropy_forward(float* losses, const float* logits, const int32_t* targets,
                                        int64_t N, int64_t V) {
  SY_LAUNCH(cross_entropy_forward, losses, logits, targets, N, V);
}
void CudaBackend::cross_entropy_backward(float* dlogits, const float* logits,
                                         const int32_t* targets, const float* dloss, int64_t N,
                                         int64_t V) {
  SY_LAUNCH(cross_entropy_backward, dlogits, logits, targets, dloss, N, V);
}

// ---------------------------------------------------------------- MoE

void CudaBackend::swiglu_forward(float* out, const float* h, int64_t rows, int64_t I) {
  SY_LAUNCH(swiglu_forward, out, h, rows, I);
}
void CudaBackend::swiglu_backward(float* dh, const float* dout, const float* h, int64_t rows,
                                  int64_t I) {
  SY_LAUNCH(swiglu_backward, dh, dout, h, rows, I);
}
void CudaBackend::sigmoid_gate_forward(float* out, const float* logit, const float* y,
                                       int64_t rows, int64_t C) {
  SY_LAUNCH(sigmoid_gate_forward, out, logit, y, rows, C);
}
void CudaBackend::sigmoid_gate_backward(float* dy, float* dlogit, const float* dout,
                                        const float* logit, const float* y, int64_t rows,
                                        int64_t C) {
  SY_LAUNCH(sigmoid_gate_backward, dy, dlogit, dout, logit, y, rows, C);
}
void CudaBackend::router_topk(float* probs, float* lse, int32_t* idx, float* gates,
                              const float* logits, int64_t N, int64_t E, int64_t K,
                              const RouterOptions& opt) {
  SY_CHECK(K >= 1 && K <= E, "router_topk: K={} must be in [1, E={}]", K, E);
  SY_LAUNCH(router_topk, probs, lse, idx, gates, logits, N, E, K,
            opt.scoring == RouterScoring::sigmoid, opt.renormalize, opt.bias, opt.top_p);
}
void CudaBackend::router_backward(float* dlogits, const float* dgates, const float* logits,
                                  const float* probs, const float* lse, const int32_t* idx,
                                  const float* gates, const float* dprobs_all, float z_coef,
                                  int64_t N, int64_t E, int64_t K, const RouterOptions& opt) {
  const bool sig = opt.scoring == RouterScoring::sigmoid;
  SY_CHECK(!sig || logits, "router_backward: sigmoid scoring needs the logits");
  SY_LAUNCH(router_backward, dlogits, dgates, logits, probs, lse, idx, gates, dprobs_all, z_coef,
            N, E, K, sig, opt.renormalize);
}
// Expert ids are in device memory: an id >= E is not reported as the CPU does, its slot is
// dropped (pos -1) like a negative one.
void CudaBackend::route_plan(int32_t* pos, int32_t* expert_offsets, const int32_t* idx, int64_t N,
                             int64_t E, int64_t K) {
  SY_CHECK(N * K <= INT32_MAX, "route_plan: {} slots overflow int32", N * K);
  SY_LAUNCH(route_plan, pos, expert_offsets, idx, N, E, K);
}
void CudaBackend::dispatch_forward(float* xp, const float* x, const int32_t* pos, int64_t N,
                                   int64_t K, int64_t C) {
  SY_LAUNCH(dispatch_forward, xp, x, pos, N, K, C);
}
void CudaBackend::dispatch_backward(float* dx, const float* dxp, const int32_t* pos, int64_t N,
                                    int64_t K, int64_t C) {
  SY_LAUNCH(sum_slot_rows, dx, dxp, pos, nullptr, N, K, C);
}
void CudaBackend::combine_forward(float* out, const float* y, const int32_t* pos,
                                  const float* gates, int64_t N, int64_t K, int64_t C) {
  SY_LAUNCH(sum_slot_rows, out, y, pos, gates, N, K, C);
}
void CudaBackend::combine_backward(float* dy, float* dgates, const float* dout, const float* y,
                                   const int32_t* pos, const float* gates, int64_t N, int64_t K,
                                   int64_t C) {
  SY_LAUNCH(combine_backward, dy, dgates, dout, y, pos, gates, N, K, C);
}

void CudaBackend::gather_rows(void* dst, const void* src, const int64_t* index, int64_t n, int64_t row_bytes) {
  SY_LAUNCH(gather_rows, dst, src, index, n, row_bytes);
}
void CudaBackend::scatter_rows(void* dst, const void* src, const int64_t* index, int64_t n, int64_t row_bytes) {
  SY_LAUNCH(scatter_rows, dst, src, index, n, row_bytes);
}
void CudaBackend::scatter_add_rows(float* dst, const int64_t* dst_index, const float* src, const int64_t* src_index,
                                   const float* w, const uint8_t* first, int64_t n, int64_t C) {
  SY_LAUNCH(scatter_add_rows, dst, dst_index, src, src_index, w, first, n, C);
}
void CudaBackend::gate_dot_scale(float* dy, float* dgate, const float* y, const float* gate, int64_t rows,
                                 int64_t C) {
  SY_LAUNCH(gate_dot_scale, dy, dgate, y, gate, rows, C);
}

}  // namespace switchyard::core
