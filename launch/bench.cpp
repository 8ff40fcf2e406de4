#include "launch/bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <oneapi/dnnl/dnnl.hpp>
#include <vector>

#include "core/backend.h"
#include "core/cpu/bf16_matmul.h"

namespace switchyard::launch {

namespace {
template <class F>
double best_seconds(int repeats, F&& f) {
  f();  // warm-up (JIT, first touch)
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

// oneDNN's own bf16 matmul (bf16 operands, fp32 output): what the CPU does natively in bf16
// (AMX where the CPU exposes it, AVX512-BF16 otherwise). For comparison with the fp32 rate and
// with the backend's rounding GEMM (bf16-rounded operands through the fp32 kernel).
double native_bf16_seconds(int64_t M, int64_t N, int64_t K, int repeats) {
  using namespace dnnl;
  engine eng(engine::kind::cpu, 0);
  stream st(eng);
  const memory::desc a({M, K}, memory::data_type::bf16, memory::format_tag::ab);
  const memory::desc b({K, N}, memory::data_type::bf16, memory::format_tag::ba);  // [N,K] row-major
  const memory::desc c({M, N}, memory::data_type::f32, memory::format_tag::ab);
  const matmul prim(matmul::primitive_desc(matmul::desc(a, b, c), eng));
  memory A(a, eng), B(b, eng), C(c, eng);
  std::fill_n(static_cast<uint16_t*>(A.get_data_handle()), M * K, uint16_t{0x3f00});  // 0.5
  std::fill_n(static_cast<uint16_t*>(B.get_data_handle()), K * N, uint16_t{0x3e80});  // 0.25
  return best_seconds(repeats, [&] {
    prim.execute(st, {{DNNL_ARG_SRC, A}, {DNNL_ARG_WEIGHTS, B}, {DNNL_ARG_DST, C}});
    st.wait();
  });
}
}  // namespace

int run_bench_gemm(int threads, int repeats) {
  auto be = core::make_cpu_backend(threads);
  struct Shape { int64_t M, N, K; };
  // shapes of a training step (tokens x width): projections, experts, a square reference
  const std::vector<Shape> shapes = {{2048, 512, 256}, {2048, 1024, 256}, {512, 1024, 256},
                                     {1024, 1024, 1024}, {2048, 2048, 2048}};
  double peak = 0, peak_native_bf16 = 0;
  const bool native_bf16 = core::native_bf16_unavailable().empty();
  for (const auto& s : shapes) {
    std::vector<float> a(static_cast<size_t>(s.M * s.K), 0.5f), b(static_cast<size_t>(s.K * s.N), 0.25f),
        c(static_cast<size_t>(s.M * s.N));
    const auto rate = [&](double sec) { return 2.0 * static_cast<double>(s.M * s.N * s.K) / sec / 1e9; };
    const double gflops = rate(best_seconds(repeats, [&] {
      be->gemm(false, true, s.M, s.N, s.K, 1.f, a.data(), s.K, b.data(), s.K, 0.f, c.data(), s.N);
    }));
    // the bf16 training path: activation operand and output rounded, weights pre-rounded
    const core::GemmRounding bf16{core::Dtype::bf16, core::Dtype::f32, core::Dtype::bf16};
    const double rounded = rate(best_seconds(repeats, [&] {
      be->gemm(false, true, s.M, s.N, s.K, 1.f, a.data(), s.K, b.data(), s.K, 0.f, c.data(), s.N, bf16);
    }));
    nlohmann::json row{{"M", s.M}, {"N", s.N}, {"K", s.K}, {"gflops", gflops}, {"bf16_rounded_gflops", rounded}};
    if (native_bf16) {
      const double native = rate(native_bf16_seconds(s.M, s.N, s.K, repeats));
      peak_native_bf16 = std::max(peak_native_bf16, native);
      row["bf16_native_gflops"] = native;
    }
    peak = std::max(peak, gflops);
    fmt::print("{}\n", row.dump());
  }
  nlohmann::json summary{{"peak_gflops", peak}, {"threads", threads}, {"onednn_isa", core::onednn_cpu_isa()}};
  if (native_bf16) summary["peak_bf16_native_gflops"] = peak_native_bf16;
  else summary["bf16_native"] = core::native_bf16_unavailable();  // why there is no native column
  fmt::print("{}\n", summary.dump());
  return 0;
}

}  // namespace switchyard::launch
