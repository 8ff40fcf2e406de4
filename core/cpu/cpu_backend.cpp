// core/cpu/cpu_backend.cpp: CPU backend memory, GEMM (oneDNN) and elementwise kernels.
#include "core/cpu/cpu_backend.h"

#include <dnnl.h>
#include <immintrin.h>
#include <omp.h>
#include <xmmintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/error.h"

namespace switchyard::core {

namespace {
// Flush denormals to zero (FTZ) and read them as zero (DAZ) on the calling thread. Denormal
// operands cost the CPU a microcode assist per element: measured 5x on SwiGLU, and GEMMs over
// small gradients suffer alike. Values below 1.2e-38 do not matter to training; GPUs flush them
// in their fast paths too (and PyTorch offers the same switch, torch.set_flush_denormal).
void flush_denormals_on_this_thread() { _mm_setcsr(_mm_getcsr() | 0x8040); }
}  // namespace

CpuBackend::CpuBackend(int threads) : threads_(threads > 0 ? threads : omp_get_max_threads()) {
  omp_set_num_threads(threads_);
  // MXCSR is per thread: set it on this thread and on every thread of the OpenMP pool, which
  // oneDNN's GEMMs run on as well.
  flush_denormals_on_this_thread();
#pragma omp parallel num_threads(threads_)
  flush_denormals_on_this_thread();
}

std::unique_ptr<Backend> make_cpu_backend(int threads) {
  // references cpu_requirements.cpp, so that its start-up check is linked into every program
  SY_CHECK(missing_cpu_feature() == nullptr, "CPU feature {} missing", missing_cpu_feature());
  const int64_t asked = threads > 0 ? threads : omp_get_max_threads();
  if (asked > max_threads())
    throw_usage("{} CPU threads asked for (train.threads, --threads or OMP_NUM_THREADS); at most {} on this "
                "machine of {} cores", asked, max_threads(), omp_get_num_procs());
  return std::make_unique<CpuBackend>(threads);
}

CpuBackend::~CpuBackend() {
  for (float* p : scratch_)
    if (p) release(p);
}

void* CpuBackend::alloc(size_t bytes) {
  size_t rounded = (bytes + 63) / 64 * 64;
  if (rounded == 0) rounded = 64;
  void* p = std::aligned_alloc(64, rounded);
  if (!p) throw_internal("cpu backend: out of host memory allocating {} bytes", bytes);
  std::memset(p, 0, rounded);
  ledger_.add(p, rounded);
  return p;
}
void CpuBackend::release(void* p) {
  if (!p) return;
  ledger_.remove(p, "cpu");
  std::free(p);
}
MemoryStats CpuBackend::memory_stats() const { return ledger_.stats(); }
void CpuBackend::reset_peak_memory() { ledger_.reset_peak(); }
void CpuBackend::zero(void* p, size_t bytes) {
  // Large buffers (the gradient arena, tens of MB) are split across the threads: one thread's
  // memset reaches well under the machine's write bandwidth.
  constexpr size_t kParallelBytes = size_t{1} << 20, kAlign = 4096;
  if (bytes < kParallelBytes || threads_ <= 1 || omp_in_parallel()) {
    std::memset(p, 0, bytes);
    return;
  }
  char* base = static_cast<char*>(p);
#pragma omp parallel num_threads(threads_)
  {
    const size_t nt = static_cast<size_t>(omp_get_num_threads()),
                 id = static_cast<size_t>(omp_get_thread_num());
    const size_t per = (bytes + nt - 1) / nt / kAlign * kAlign + kAlign;
    const size_t b = std::min(bytes, id * per), e = std::min(bytes, b + per);
    if (b < e) std::memset(base + b, 0, e - b);
  }
}
void CpuBackend::copy_to_host(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void CpuBackend::copy_from_host(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void CpuBackend::synchronize() {}

float* CpuBackend::gemm_scratch(int slot, int64_t n) {
  if (n > scratch_floats_[slot]) {
    release(scratch_[slot]);
    scratch_[slot] = nullptr;
    scratch_floats_[slot] = 0;
    scratch_[slot] = static_cast<float*>(alloc(static_cast<size_t>(n) * sizeof(float)));
    scratch_floats_[slot] = n;
  }
  return scratch_[slot];
}

void CpuBackend::gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                      const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                      int64_t ldc, const GemmRounding& rounding) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // C = beta * C
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.f ? 0.f : beta * C[i * ldc + j];
    if (rounding.c != Dtype::f32) round_rows(rounding.c, C, ldc, C, ldc, M, N);
    return;
  }
  if (rounding.operands == Dtype::bf16 && native_bf16()) {
    const int64_t na = M * K, nb = K * N;  // packed bf16 operands, two per float of scratch
    auto* a = reinterpret_cast<uint16_t*>(gemm_scratch(0, (na + 1) / 2));
    auto* b = reinterpret_cast<uint16_t*>(gemm_scratch(1, (nb + 1) / 2));
    bf16_matmul_->run(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, a, b);
    if (rounding.c != Dtype::f32) round_rows(rounding.c, C, ldc, C, ldc, M, N);
    return;
  }
  // An operand that is not stored in the compute dtype is rounded into scratch `slot`; the GEMM
  // then reads the copy (rows x cols as stored, packed).
  auto round_operand = [&](Dtype d, int slot, const float*& X, int64_t& ld, int64_t rows, int64_t cols) {
    if (d == Dtype::f32) return;
    float* x = gemm_scratch(slot, rows * cols);
    round_rows(d, x, cols, X, ld, rows, cols);
    X = x;
    ld = cols;
  };
  // op(A) reads A as [M,K], or [K,M] when transposed; op(B) reads B as [K,N], or [N,K]
  round_operand(rounding.a, 0, A, lda, trans_a ? K : M, trans_a ? M : K);
  round_operand(rounding.b, 1, B, ldb, trans_b ? N : K, trans_b ? K : N);
  dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B,
                                ldb, beta, C, ldc);
  if (st != dnnl_success)
    throw_internal("dnnl_sgemm failed (status {}) for M={} N={} K={} lda={} ldb={} ldc={}",
                   static_cast<int>(st), M, N, K, lda, ldb, ldc);
  if (rounding.c != Dtype::f32) round_rows(rounding.c, C, ldc, C, ldc, M, N);
}

bool CpuBackend::native_bf16() {
  if (native_bf16_ >= 0) return native_bf16_ == 1;
  const char* env = std::getenv("SWITCHYARD_CPU_BF16_GEMM");
  const std::string mode = env ? env : "auto";
  if (mode != "auto" && mode != "native" && mode != "emulated")
    throw_usage("SWITCHYARD_CPU_BF16_GEMM={}: must be native, emulated or auto", mode);
  const std::string& unavailable = native_bf16_unavailable();
  if (mode == "native" && !unavailable.empty())
    throw_usage("SWITCHYARD_CPU_BF16_GEMM=native: {}; unset it or set it to emulated", unavailable);
  if (mode != "auto") {
    set_native_bf16(mode == "native", "set by SWITCHYARD_CPU_BF16_GEMM");
    return native_bf16_ == 1;
  }
  if (!unavailable.empty()) {
    set_native_bf16(false, unavailable);
    return false;
  }
  // Decided once per process, so that every backend of the process computes alike (a timing
  // flipped by load must not make two models of one process round differently).
  static int decided = -1;
  static std::string why;
  if (decided < 0) {
    // A training-sized product (tokens x width): best of 3 each way after a warm-up; native must
    // win clearly (by 20%) so that noise does not pick it.
    constexpr int64_t M = 1024, N = 1024, K = 256;
    std::vector<float> a(M * K, 0.5f), b(N * K, 0.25f), c(M * N);
    auto time = [&](bool native) {
      set_native_bf16(native, "");
      const GemmRounding r{Dtype::bf16, Dtype::bf16, Dtype::f32, Dtype::bf16};
      double best = 1e30;
      for (int i = 0; i < 4; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        gemm(false, true, M, N, K, 1.f, a.data(), K, b.data(), K, 0.f, c.data(), N, r);
        if (i > 0) best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      return best;
    };
    const double native = time(true), emulated = time(false);
    decided = native < 0.8 * emulated ? 1 : 0;
    why = fmt::format("oneDNN's bf16 matmul measured {:.2f}x the emulated path's speed on {}; kept if >= 1.25x",
                      emulated / native, onednn_cpu_isa());
  }
  set_native_bf16(decided == 1, why);
  return native_bf16_ == 1;
}

void CpuBackend::set_native_bf16(bool native, std::string why) {
  if (native && !bf16_matmul_) bf16_matmul_ = std::make_unique<Bf16Matmul>();  // throws if unavailable
  native_bf16_ = native ? 1 : 0;
  bf16_gemm_why_ = std::move(why);
}

std::optional<Backend::GemmPath> CpuBackend::gemm_path(Dtype operands) {
  if (operands != Dtype::bf16) return std::nullopt;
  return GemmPath{bf16_gemm_path(), bf16_gemm_why(), native_bf16()};
}

void CpuBackend::use_reference_gemm(Dtype operands, const std::string& why) {
  if (operands == Dtype::bf16) set_native_bf16(false, why);
}

void CpuBackend::add(float* out, const float* a, const float* b, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void CpuBackend::axpy(float* y, float alpha, const float* x, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

void CpuBackend::scale(float* x, float alpha, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] *= alpha;
}

void CpuBackend::add_bias(float* x, const float* bias, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) row[c] += bias[c];
  }
}

void CpuBackend::bias_backward(float* dbias, const float* dout, int64_t rows, int64_t cols) {
  // Columns split across threads; each thread sums its columns over all rows in double.
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < cols; ++c) {
    double s = 0;
    for (int64_t r = 0; r < rows; ++r) s += dout[r * cols + c];
    dbias[c] += static_cast<float>(s);
  }
}

double CpuBackend::sum_squares(const float* x, int64_t n) {
  // Blocks of 1024 summed in 16 float lanes (vectorised), each block's total added in double:
  // accurate for arenas of hundreds of millions of elements, and memory-bound.
  constexpr int64_t kBlock = 1024, kLanes = 16;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  double s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const float* xb = x + b * kBlock;
    const int64_t len = std::min(kBlock, n - b * kBlock);
    float acc[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= len; i += kLanes)
      for (int64_t l = 0; l < kLanes; ++l) acc[l] += xb[i + l] * xb[i + l];
    double t = 0;
    for (; i < len; ++i) t += static_cast<double>(xb[i]) * xb[i];
    for (int64_t l = 0; l < kLanes; ++l) t += acc[l];
    s += t;
  }
  return s;
}

namespace {
// One AdamW step over a contiguous span. Explicit AVX2 (the build's baseline ISA): GCC does not
// vectorise std::sqrt here (the errno path of sqrtf blocks it), and the scalar loop is 2x slower
// than the memory traffic. The vector body rounds every product and sum separately (no FMA);
// the scalar tail may be contracted to FMAs by the compiler: they differ in the last bit at most.
void adamw_span(float* __restrict p, const float* __restrict grads, float* __restrict m,
                float* __restrict v, int64_t n, float grad_scale, float decay, float step,
                float beta1, float beta2, float eps, float inv_sqrt_bc2) {
  int64_t i = 0;
#ifdef __AVX2__
  const __m256 vgs = _mm256_set1_ps(grad_scale), vb1 = _mm256_set1_ps(beta1),
               vb2 = _mm256_set1_ps(beta2), v1b1 = _mm256_set1_ps(1.0f - beta1),
               v1b2 = _mm256_set1_ps(1.0f - beta2), vdecay = _mm256_set1_ps(decay),
               vstep = _mm256_set1_ps(step), veps = _mm256_set1_ps(eps),
               vibc2 = _mm256_set1_ps(inv_sqrt_bc2);
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_mul_ps(_mm256_loadu_ps(grads + i), vgs);
    const __m256 mi = _mm256_add_ps(_mm256_mul_ps(vb1, _mm256_loadu_ps(m + i)),
                                    _mm256_mul_ps(v1b1, g));
    const __m256 vi = _mm256_add_ps(_mm256_mul_ps(vb2, _mm256_loadu_ps(v + i)),
                                    _mm256_mul_ps(_mm256_mul_ps(v1b2, g), g));
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
    const __m256 den = _mm256_add_ps(_mm256_mul_ps(_mm256_sqrt_ps(vi), vibc2), veps);
    const __m256 upd = _mm256_div_ps(_mm256_mul_ps(vstep, mi), den);
    _mm256_storeu_ps(p + i, _mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(p + i), vdecay), upd));
  }
#endif
  for (; i < n; ++i) {
    const float g = grads[i] * grad_scale;
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - step * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
  }
}
}  // namespace

void CpuBackend::adamw_update(float* p, const float* grads, float* m, float* v, int64_t n,
                              float grad_scale, float lr, float beta1, float beta2, float eps,
                              float weight_decay, float bc1, float bc2, float* p_compute,
                              Dtype compute) {
  const AdamwConstants k = AdamwConstants::of(lr, weight_decay, bc1, bc2);
  constexpr int64_t kChunk = 1 << 14;  // contiguous spans per thread, vectorised inside
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t b = c * kChunk, len = std::min(kChunk, n - b);
    adamw_span(p + b, grads + b, m + b, v + b, len, grad_scale, k.decay, k.step, beta1, beta2, eps,
               k.inv_sqrt_bc2);
    // the chunk is still in cache: the compute weights cost one write, not another pass
    if (p_compute) round_rows(compute, p_compute + b, len, p + b, len, 1, len);
  }
}

}  // namespace switchyard::core
