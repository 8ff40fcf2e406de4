// core/cuda/attention.cu: causal grouped-query attention (fp32), flash style: scores and
// probabilities are never stored; the softmax is online (running max and sum) in the forward and
// recomputed from the saved lse in the backward. Nothing is rounded (as core/cpu/attention.cpp).
//
// Layout common to the three tiled kernels: a block of kWarps warps; each warp owns kRowsPerWarp
// "own" rows (query rows in forward and dq, key rows in dk/dv) whose HD-wide accumulators it keeps
// in registers, lane l holding columns l, l+32, ... (NC = ceil(HD/32) of them, a template
// parameter). The "other" side (keys in forward and dq, queries in dk/dv) goes through shared
// memory in tiles of 32 rows, one per lane: lane l computes the score of its own row against tile
// row l, and the HD-wide update sums over the 32 lanes in lane order (shuffles), so every result
// is computed in a fixed order: deterministic, no atomics.
//
//   forward:    block = (query tile, q head, batch): o = softmax(scale q K^T) V, lse
//   backward:   D = rowsum(dO * O)                                     (one warp per row)
//               dq  per (query tile, q head, batch):  dq = scale sum_j dS_ij k_j
//               dkv per (key tile, kv head, batch), over the group's q heads and the query tiles
//                   at or after the key tile:  dv += P^T dO, dk += scale dS^T Q
//   with P = exp(scale q.k - lse), dS = P * (dO.v - D).
// Packed rows (doc_start, AttentionShape): query t sees keys doc_start[t] <= j <= t. doc_start is
// non-decreasing along a row, so a query tile's earliest visible key is its first row's doc_start:
// forward and dq start at the key tile holding it, dkv stops at the first query tile whose first
// doc_start lies past its key rows. Without doc_start every bound is the causal one.
#include <cfloat>

#include "core/cuda/common.cuh"
#include "core/cuda/kernels.h"

namespace switchyard::core::cuda_kernels {

namespace {

constexpr int kWarps = 4;                           // warps per block
constexpr int kRowsPerWarp = 4;                     // own rows per warp
constexpr int kOwnRows = kWarps * kRowsPerWarp;     // own rows per block (16)
constexpr int kTile = 32;                           // rows of a shared-memory tile: one per lane
constexpr int kAttnThreads = kWarps * 32;

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// dst[r*ldd + c] = src[(r0 + r)*lds + c] for r < rows (rows past `limit` zero), c < HD: a tile
// copied into shared memory by the whole block.
__device__ __forceinline__ void load_tile(float* dst, int ldd, const float* src, int64_t lds,
                                          int64_t r0, int rows, int64_t limit, int HD) {
  for (int e = threadIdx.x; e < rows * HD; e += blockDim.x) {
    const int r = e / HD, c = e % HD;
    dst[r * ldd + c] = r0 + r < limit ? src[(r0 + r) * lds + c] : 0.0f;
  }
}

// sum_c a[c] * b[c] over c < HD (shared memory, fixed order).
__device__ __forceinline__ float dot(const float* a, const float* b, int HD) {
  float acc = 0.0f;
  for (int c = 0; c < HD; ++c) acc += a[c] * b[c];
  return acc;
}

// dst[c] = mul * acc[i] for c = lane + 32*i < HD: a warp's register row written out.
template <int NC>
__device__ __forceinline__ void store_row(float* dst, const float (&acc)[NC], float mul, int HD) {
  const int lane = threadIdx.x & 31;
  for (int i = 0; i < NC; ++i)
    if (lane + 32 * i < HD) dst[lane + 32 * i] = mul * acc[i];
}

// The packed qkv geometry of one call.
struct Geo {
  int64_t T, NH, NKV, HD, W, QW, group;  // W: qkv row width, QW: q (and out) row width
  float scale;
  const int32_t* doc_start;  // [B*T] or null
};

// Where the document of row t of batch b begins (0 without packed rows).
__device__ __forceinline__ int64_t doc_of(const Geo& g, int64_t b, int64_t t) {
  return g.doc_start ? g.doc_start[b * g.T + t] : 0;
}

// The first key tile (a multiple of kTile) holding a key visible to query rows q0.. of batch b.
__device__ __forceinline__ int64_t first_key_tile(const Geo& g, int64_t b, int64_t q0) {
  return doc_of(g, b, q0) / kTile * kTile;
}

// ---------------------------------------------------------------- forward

// Shared memory: Q [kOwnRows][HD], K [kTile][HD+1], V [kTile][HD].
template <int NC>
__global__ void __launch_bounds__(kAttnThreads)
attention_forward_kernel(float* out, float* lse, const float* qkv, Geo g) {
  extern __shared__ float sm[];
  const int HD = static_cast<int>(g.HD), ldk = HD + 1;
  float* Qs = sm;
  float* Ks = Qs + kOwnRows * HD;
  float* Vs = Ks + kTile * ldk;
  const int64_t q0 = int64_t{blockIdx.x} * kOwnRows, h = blockIdx.y, b = blockIdx.z;
  const int64_t kvh = h / g.group, T = g.T;
  const float* rows = qkv + b * T * g.W;  // row t of this batch: rows + t*W
  const float* qp = rows + h * HD;
  const float* kp = rows + g.QW + kvh * HD;
  const float* vp = rows + g.QW + (g.NKV + kvh) * HD;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  load_tile(Qs, HD, qp, g.W, q0, kOwnRows, T, HD);
  float o[kRowsPerWarp][NC], m[kRowsPerWarp], l[kRowsPerWarp];
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
    for (int i = 0; i < NC; ++i) o[r][i] = 0.0f;
  }
  int64_t lo[kRowsPerWarp];  // each own row's first visible key
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t qi = q0 + warp * kRowsPerWarp + r;
    lo[r] = qi < T ? doc_of(g, b, qi) : 0;
  }
  const int64_t q_end = q0 + kOwnRows < T ? q0 + kOwnRows : T;  // keys < q_end are visible
  for (int64_t k0 = first_key_tile(g, b, q0); k0 < q_end; k0 += kTile) {
    __syncthreads();  // the previous tile is no longer read
    load_tile(Ks, ldk, kp, g.W, k0, kTile, T, HD);
    load_tile(Vs, HD, vp, g.W, k0, kTile, T, HD);
    __syncthreads();
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = warp * kRowsPerWarp + r;
      const int64_t qi = q0 + row;
      // warp-uniform: no visible key in this tile
      if (qi >= T || k0 > qi || k0 + kTile <= lo[r]) continue;
      const int64_t j = k0 + lane;
      const bool seen = j <= qi && j >= lo[r];
      const float s = seen ? g.scale * dot(Qs + row * HD, Ks + lane * ldk, HD) : -INFINITY;
      const float m_new = fmaxf(m[r], warp_max(s));  // finite: a key of the tile is visible
      const float p = seen ? expf(s - m_new) : 0.0f;
      const float alpha = expf(m[r] - m_new);      // 0 on the first tile (m = -inf)
      l[r] = l[r] * alpha + warp_sum(p);
      m[r] = m_new;
      for (int i = 0; i < NC; ++i) o[r][i] *= alpha;
      for (int jj = 0; jj < kTile; ++jj) {
        const float pj = __shfl_sync(0xffffffffu, p, jj);
        for (int i = 0; i < NC; ++i) {
          const int c = lane + 32 * i;
          if (c < HD) o[r][i] += pj * Vs[jj * HD + c];
        }
      }
    }
  }
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t qi = q0 + warp * kRowsPerWarp + r;
    if (qi >= T) continue;
    store_row(out + (b * T + qi) * g.QW + h * HD, o[r], 1.0f / l[r], HD);
    if (lane == 0) lse[(b * g.NH + h) * T + qi] = m[r] + logf(l[r]);
  }
}

// ---------------------------------------------------------------- backward

// D[(b*NH + h)*T + t] = dot(dout, out) of that row and head: one warp per (b, t, h).
__global__ void attention_rowdot_kernel(float* D, const float* dout, const float* out, int64_t B,
                                        Geo g) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x >> 5);
  const int64_t n = B * g.T * g.NH;
  for (int64_t w = int64_t{blockIdx.x} * (blockDim.x >> 5) + (threadIdx.x >> 5); w < n; w += warps) {
    const int64_t h = w % g.NH, bt = w / g.NH, b = bt / g.T, t = bt % g.T;
    const float* x = dout + bt * g.QW + h * g.HD;
    const float* y = out + bt * g.QW + h * g.HD;
    float acc = 0.0f;
    for (int64_t c = lane; c < g.HD; c += 32) acc += x[c] * y[c];
    acc = warp_sum(acc);
    if (lane == 0) D[(b * g.NH + h) * g.T + t] = acc;
  }
}

// dq rows of one query tile and q head, written (=) into dqkv's q columns.
// Shared memory: Q, dO [kOwnRows][HD]; K, V [kTile][HD+1].
template <int NC>
__global__ void __launch_bounds__(kAttnThreads)
attention_dq_kernel(float* dqkv, const float* dout, const float* lse, const float* D,
                    const float* qkv, Geo g) {
  extern __shared__ float sm[];
  const int HD = static_cast<int>(g.HD), ldk = HD + 1;
  float* Qs = sm;
  float* dOs = Qs + kOwnRows * HD;
  float* Ks = dOs + kOwnRows * HD;
  float* Vs = Ks + kTile * ldk;
  const int64_t q0 = int64_t{blockIdx.x} * kOwnRows, h = blockIdx.y, b = blockIdx.z;
  const int64_t kvh = h / g.group, T = g.T;
  const float* rows = qkv + b * T * g.W;
  const float* kp = rows + g.QW + kvh * HD;
  const float* vp = rows + g.QW + (g.NKV + kvh) * HD;
  const float* lse_h = lse + (b * g.NH + h) * T;
  const float* D_h = D + (b * g.NH + h) * T;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  load_tile(Qs, HD, rows + h * HD, g.W, q0, kOwnRows, T, HD);
  load_tile(dOs, HD, dout + b * T * g.QW + h * HD, g.QW, q0, kOwnRows, T, HD);
  float dq[kRowsPerWarp][NC];
  for (int r = 0; r < kRowsPerWarp; ++r)
    for (int i = 0; i < NC; ++i) dq[r][i] = 0.0f;
  int64_t lo[kRowsPerWarp];  // each own row's first visible key
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t qi = q0 + warp * kRowsPerWarp + r;
    lo[r] = qi < T ? doc_of(g, b, qi) : 0;
  }
  const int64_t q_end = q0 + kOwnRows < T ? q0 + kOwnRows : T;
  for (int64_t k0 = first_key_tile(g, b, q0); k0 < q_end; k0 += kTile) {
    __syncthreads();
    load_tile(Ks, ldk, kp, g.W, k0, kTile, T, HD);
    load_tile(Vs, ldk, vp, g.W, k0, kTile, T, HD);
    __syncthreads();
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = warp * kRowsPerWarp + r;
      const int64_t qi = q0 + row;
      if (qi >= T || k0 > qi || k0 + kTile <= lo[r]) continue;  // warp-uniform
      const int64_t j = k0 + lane;
      float ds = 0.0f;
      if (j <= qi && j >= lo[r]) {
        const float p = expf(g.scale * dot(Qs + row * HD, Ks + lane * ldk, HD) - lse_h[qi]);
        ds = p * (dot(dOs + row * HD, Vs + lane * ldk, HD) - D_h[qi]);
      }
      for (int jj = 0; jj < kTile; ++jj) {
        const float dsj = __shfl_sync(0xffffffffu, ds, jj);
        for (int i = 0; i < NC; ++i) {
          const int c = lane + 32 * i;
          if (c < HD) dq[r][i] += dsj * Ks[jj * ldk + c];
        }
      }
    }
  }
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t qi = q0 + warp * kRowsPerWarp + r;
    if (qi >= T) continue;
    store_row(dqkv + (b * T + qi) * g.W + h * HD, dq[r], g.scale, HD);
  }
}

// dk, dv rows of one key tile and kv head, written (=) into dqkv's k and v columns: sums over the
// group's q heads in order, and for each over the query tiles that can see the key tile.
// Shared memory: K, V [kOwnRows][HD]; Q, dO [kTile][HD+1]; lse, D [kTile].
template <int NC>
__global__ void __launch_bounds__(kAttnThreads)
attention_dkv_kernel(float* dqkv, const float* dout, const float* lse, const float* D,
                     const float* qkv, Geo g) {
  extern __shared__ float sm[];
  const int HD = static_cast<int>(g.HD), ldq = HD + 1;
  float* Ks = sm;
  float* Vs = Ks + kOwnRows * HD;
  float* Qs = Vs + kOwnRows * HD;
  float* dOs = Qs + kTile * ldq;
  float* lse_s = dOs + kTile * ldq;
  float* D_s = lse_s + kTile;
  const int64_t k0 = int64_t{blockIdx.x} * kOwnRows, kvh = blockIdx.y, b = blockIdx.z;
  const int64_t T = g.T;
  const float* rows = qkv + b * T * g.W;
  const int64_t kcol = g.QW + kvh * HD, vcol = g.QW + (g.NKV + kvh) * HD;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  load_tile(Ks, HD, rows + kcol, g.W, k0, kOwnRows, T, HD);
  load_tile(Vs, HD, rows + vcol, g.W, k0, kOwnRows, T, HD);
  float dk[kRowsPerWarp][NC], dv[kRowsPerWarp][NC];
  for (int r = 0; r < kRowsPerWarp; ++r)
    for (int i = 0; i < NC; ++i) dk[r][i] = dv[r][i] = 0.0f;
  for (int64_t h = kvh * g.group; h < (kvh + 1) * g.group; ++h) {
    const float* lse_h = lse + (b * g.NH + h) * T;
    const float* D_h = D + (b * g.NH + h) * T;
    for (int64_t q0 = k0 / kTile * kTile; q0 < T; q0 += kTile) {  // queries >= k0 see the tile
      // block-uniform: this query tile's and every later one's documents begin after the key rows
      const int64_t q0_doc = doc_of(g, b, q0);
      if (q0_doc >= k0 + kOwnRows) break;
      __syncthreads();
      load_tile(Qs, ldq, rows + h * HD, g.W, q0, kTile, T, HD);
      load_tile(dOs, ldq, dout + b * T * g.QW + h * HD, g.QW, q0, kTile, T, HD);
      if (threadIdx.x < kTile) {
        const int64_t t = q0 + threadIdx.x;
        lse_s[threadIdx.x] = t < T ? lse_h[t] : 0.0f;
        D_s[threadIdx.x] = t < T ? D_h[t] : 0.0f;
      }
      __syncthreads();
      const int64_t lane_doc = q0 + lane < T ? doc_of(g, b, q0 + lane) : 0;  // lane's query
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const int row = warp * kRowsPerWarp + r;
        const int64_t kj = k0 + row;
        // warp-uniform: no query of the tile sees key kj
        if (kj >= T || q0 + kTile - 1 < kj || q0_doc > kj) continue;
        const int64_t qi = q0 + lane;
        float p = 0.0f, ds = 0.0f;
        if (qi < T && qi >= kj && lane_doc <= kj) {
          p = expf(g.scale * dot(Qs + lane * ldq, Ks + row * HD, HD) - lse_s[lane]);
          ds = p * (dot(dOs + lane * ldq, Vs + row * HD, HD) - D_s[lane]);
        }
        for (int ii = 0; ii < kTile; ++ii) {
          const float pi = __shfl_sync(0xffffffffu, p, ii);
          const float dsi = __shfl_sync(0xffffffffu, ds, ii);
          for (int i = 0; i < NC; ++i) {
            const int c = lane + 32 * i;
            if (c < HD) {
              dv[r][i] += pi * dOs[ii * ldq + c];
              dk[r][i] += dsi * Qs[ii * ldq + c];
            }
          }
        }
      }
    }
  }
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t kj = k0 + warp * kRowsPerWarp + r;
    if (kj >= T) continue;
    float* drow = dqkv + (b * T + kj) * g.W;
    store_row(drow + kcol, dk[r], g.scale, HD);
    store_row(drow + vcol, dv[r], 1.0f, HD);
  }
}

Geo geo(int64_t T, int64_t NH, int64_t NKV, int64_t HD, const int32_t* doc_start) {
  return Geo{T,          NH, NKV, HD, (NH + 2 * NKV) * HD, NH * HD, NH / NKV,
             1.0f / sqrtf(static_cast<float>(HD)), doc_start};
}

size_t forward_smem(int64_t HD) {
  return static_cast<size_t>(kOwnRows * HD + kTile * (HD + 1) + kTile * HD) * sizeof(float);
}
size_t dq_smem(int64_t HD) {
  return static_cast<size_t>(2 * kOwnRows * HD + 2 * kTile * (HD + 1)) * sizeof(float);
}
size_t dkv_smem(int64_t HD) {
  return static_cast<size_t>(2 * kOwnRows * HD + 2 * kTile * (HD + 1) + 2 * kTile) * sizeof(float);
}

// Launches kernel<NC> for the smallest NC (columns per lane) that covers HD (HD <= 256: checked by
// the caller), with `smem` bytes of dynamic shared memory (opted in beyond 48 KiB).
template <template <int> class K, class... Args>
void launch_nc(int64_t HD, dim3 grid, size_t smem, cudaStream_t s, Args... args) {
  auto go = [&](auto kernel) {
    if (smem > 48 * 1024)
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem));
    kernel<<<grid, kAttnThreads, smem, s>>>(args...);
  };
  if (HD <= 32) go(K<1>::fn);
  else if (HD <= 64) go(K<2>::fn);
  else if (HD <= 128) go(K<4>::fn);
  else go(K<8>::fn);
}
template <int NC> struct Forward { static constexpr auto fn = attention_forward_kernel<NC>; };
template <int NC> struct Dq { static constexpr auto fn = attention_dq_kernel<NC>; };
template <int NC> struct Dkv { static constexpr auto fn = attention_dkv_kernel<NC>; };

dim3 tiles_grid(int64_t T, int64_t heads, int64_t B) {
  return dim3(static_cast<unsigned>((T + kOwnRows - 1) / kOwnRows), static_cast<unsigned>(heads),
              static_cast<unsigned>(B));
}

}  // namespace

int64_t attention_max_head_dim() { return 32 * 8; }

size_t attention_smem_bytes(int64_t HD) {
  const size_t f = forward_smem(HD), q = dq_smem(HD), kv = dkv_smem(HD);
  return f > q ? (f > kv ? f : kv) : (q > kv ? q : kv);
}

void attention_forward(float* out, float* lse, const float* qkv, const int32_t* doc_start,
                       int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t HD, cudaStream_t s) {
  if (B == 0 || T == 0) return;
  launch_nc<Forward>(HD, tiles_grid(T, NH, B), forward_smem(HD), s, out, lse, qkv,
                     geo(T, NH, NKV, HD, doc_start));
}

void attention_backward(float* dqkv, float* D, const float* dout, const float* out,
                        const float* lse, const float* qkv, const int32_t* doc_start, int64_t B,
                        int64_t T, int64_t NH, int64_t NKV, int64_t HD, cudaStream_t s) {
  if (B == 0 || T == 0) return;
  const Geo g = geo(T, NH, NKV, HD, doc_start);
  attention_rowdot_kernel<<<blocks_for(B * T * NH * 32), kThreads, 0, s>>>(D, dout, out, B, g);
  launch_nc<Dq>(HD, tiles_grid(T, NH, B), dq_smem(HD), s, dqkv, dout, lse,
                static_cast<const float*>(D), qkv, g);
  launch_nc<Dkv>(HD, tiles_grid(T, NKV, B), dkv_smem(HD), s, dqkv, dout, lse,
                 static_cast<const float*>(D), qkv, g);
}

// One block per q head: thread-strided scores of row T-1 against every key into p [NH, T], the
// block's max and sum, then each thread owns output columns and sums over the keys in order.
__global__ void attention_decode_kernel(float* out, float* p, const float* qkv, int64_t T, int64_t NH,
                                        int64_t NKV, int64_t HD, float scale) {
  __shared__ float red[32];
  __shared__ double redd[32];
  const int64_t h = blockIdx.x, kvh = h / (NH / NKV), W = (NH + 2 * NKV) * HD, QW = NH * HD;
  const float* q = qkv + (T - 1) * W + h * HD;
  float* ph = p + h * T;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < T; j += blockDim.x) {
    const float* k = qkv + j * W + QW + kvh * HD;
    float d = 0.0f;
    for (int64_t i = 0; i < HD; ++i) d += q[i] * k[i];
    ph[j] = scale * d;
    mx = fmaxf(mx, ph[j]);
  }
  mx = block_max(mx, red);
  double sum = 0;
  for (int64_t j = threadIdx.x; j < T; j += blockDim.x) sum += ph[j] = expf(ph[j] - mx);
  sum = block_sum(sum, redd);  // its barriers also make every ph[j] visible to the block
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = threadIdx.x; i < HD; i += blockDim.x) {
    float o = 0.0f;
    for (int64_t j = 0; j < T; ++j) o += ph[j] * qkv[j * W + QW + (NKV + kvh) * HD + i];
    out[h * HD + i] = o * inv;
  }
}

void attention_decode(float* out, float* p, const float* qkv, int64_t T, int64_t NH, int64_t NKV, int64_t HD,
                      cudaStream_t s) {
  if (T == 0 || NH == 0) return;
  attention_decode_kernel<<<static_cast<unsigned>(NH), 128, 0, s>>>(out, p, qkv, T, NH, NKV, HD,
                                                                     1.0f / sqrtf(static_cast<float>(HD)));
}

}  // namespace switchyard::core::cuda_kernels
