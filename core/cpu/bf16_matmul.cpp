// core/cpu/bf16_matmul.cpp: native bf16 GEMMs through oneDNN's matmul (see bf16_matmul.h).
#include "core/cpu/bf16_matmul.h"

#include <immintrin.h>
#include <omp.h>

#include <oneapi/dnnl/dnnl.hpp>

#include <fmt/format.h>

#include "core/error.h"
#include "core/half.h"

namespace switchyard::core {

void pack_bf16(uint16_t* dst, const float* src, int64_t lds, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= (1 << 15) && !omp_in_parallel())
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = src + r * lds;
    uint16_t* d = dst + r * cols;
    int64_t c = 0;
#if defined(__AVX2__)
    const __m256i bias = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1),
                  quiet = _mm256_set1_epi32(0x0040);
    auto round8 = [&](__m256i x) {  // the 16-bit bf16 pattern in each 32-bit lane
      const __m256i r = _mm256_srli_epi32(
          _mm256_add_epi32(_mm256_add_epi32(x, bias), _mm256_and_si256(_mm256_srli_epi32(x, 16), one)), 16);
      const __m256i nan = _mm256_castps_si256(
          _mm256_cmp_ps(_mm256_castsi256_ps(x), _mm256_castsi256_ps(x), _CMP_UNORD_Q));
      return _mm256_blendv_epi8(r, _mm256_or_si256(_mm256_srli_epi32(x, 16), quiet), nan);
    };
    for (; c + 16 <= cols; c += 16) {
      const __m256i lo = round8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + c)));
      const __m256i hi = round8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + c + 8)));
      // packus interleaves the 128-bit lanes: [lo0-3 hi0-3 lo4-7 hi4-7] -> reorder the quadwords
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xD8);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + c), packed);
    }
#endif
    for (; c < cols; ++c) d[c] = f32_to_bf16(s[c]);
  }
}

std::string onednn_cpu_isa() {
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::sse41: return "sse41";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    case dnnl::cpu_isa::avx512_mic: return "avx512_mic";
    case dnnl::cpu_isa::avx512_mic_4ops: return "avx512_mic_4ops";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    default: return "unknown";
  }
}

const std::string& native_bf16_unavailable() {
  static const std::string reason = [] {
    using dnnl::memory;
    try {
      const dnnl::engine eng(dnnl::engine::kind::cpu, 0);
      const memory::desc a({16, 16}, memory::data_type::bf16, memory::format_tag::ab);
      const memory::desc c({16, 16}, memory::data_type::f32, memory::format_tag::ab);
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, a, c), eng);
      return std::string();
    } catch (const dnnl::error&) {
      return fmt::format("oneDNN has no bf16 matmul on this CPU (its instruction set here is {}; "
                         "native bf16 needs avx512_core or newer)",
                         onednn_cpu_isa());
    }
  }();
  return reason;
}

struct Bf16Matmul::Impl {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{eng};
  using Key = std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t, float, float>;
  struct Entry {
    dnnl::matmul::primitive_desc pd;
    dnnl::matmul prim;
  };
  std::map<Key, Entry> cache;  // primitives by shape (bounded below)

  Entry& primitive(bool ta, bool tb, int64_t M, int64_t N, int64_t K, int64_t ldc, float alpha,
                          float beta) {
    const Key key{ta, tb, M, N, K, ldc, alpha, beta};
    if (auto it = cache.find(key); it != cache.end()) return it->second;
    if (cache.size() >= 1024) cache.clear();  // expert row counts vary: keep the map bounded
    using dnnl::memory;
    // packed operands keep the caller's orientation: op(A) [M,K] is A [M,K] or A^T with A [K,M]
    const memory::desc src({M, K}, memory::data_type::bf16, ta ? memory::dims{1, M} : memory::dims{K, 1});
    const memory::desc wei({K, N}, memory::data_type::bf16, tb ? memory::dims{1, K} : memory::dims{N, 1});
    const memory::desc dst({M, N}, memory::data_type::f32, memory::dims{ldc, 1});
    dnnl::primitive_attr attr;
    if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
    if (beta != 0.0f) {
      dnnl::post_ops ops;
      ops.append_sum(beta);
      attr.set_post_ops(ops);
    }
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, wei, dst), attr, eng);
    return cache.emplace(key, Entry{pd, dnnl::matmul(pd)}).first->second;
  }
};

Bf16Matmul::Bf16Matmul() {
  if (!native_bf16_unavailable().empty()) throw_usage("native bf16 GEMMs: {}", native_bf16_unavailable());
  impl_ = std::make_unique<Impl>();
}
Bf16Matmul::~Bf16Matmul() = default;

void Bf16Matmul::run(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                     const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                     int64_t ldc, uint16_t* a_scratch, uint16_t* b_scratch) {
  Impl& m = *impl_;
  const int64_t ar = trans_a ? K : M, ac = trans_a ? M : K, br = trans_b ? N : K, bc = trans_b ? K : N;
  pack_bf16(a_scratch, A, lda, ar, ac);
  pack_bf16(b_scratch, B, ldb, br, bc);
  Impl::Entry& e = m.primitive(trans_a, trans_b, M, N, K, ldc, alpha, beta);
  using dnnl::memory;
  memory src(e.pd.src_desc(), m.eng, a_scratch), wei(e.pd.weights_desc(), m.eng, b_scratch),
      dst(e.pd.dst_desc(), m.eng, C);
  e.prim.execute(m.stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}});
  m.stream.wait();
}

}  // namespace switchyard::core
