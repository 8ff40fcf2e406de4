#include "launch/bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/backend.h"

namespace switchyard::launch {

int run_bench_gemm(int threads, int repeats) {
  auto be = core::make_cpu_backend(threads);
  struct Shape { int64_t M, N, K; };
  // shapes of a training step (tokens x width): projections, experts, a square reference
  const std::vector<Shape> shapes = {{2048, 512, 256}, {2048, 1024, 256}, {512, 1024, 256},
                                     {1024, 1024, 1024}, {2048, 2048, 2048}};
  double peak = 0;
  for (const auto& s : shapes) {
    std::vector<float> a(static_cast<size_t>(s.M * s.K), 0.5f), b(static_cast<size_t>(s.K * s.N), 0.25f),
        c(static_cast<size_t>(s.M * s.N));
    be->gemm(false, true, s.M, s.N, s.K, 1.f, a.data(), s.K, b.data(), s.K, 0.f, c.data(), s.N);
    double best = 1e30;
    for (int r = 0; r < repeats; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      be->gemm(false, true, s.M, s.N, s.K, 1.f, a.data(), s.K, b.data(), s.K, 0.f, c.data(), s.N);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    const double gflops = 2.0 * static_cast<double>(s.M * s.N * s.K) / best / 1e9;
    peak = std::max(peak, gflops);
    fmt::print("{}\n", nlohmann::json{{"M", s.M}, {"N", s.N}, {"K", s.K}, {"gflops", gflops}}.dump());
  }
  fmt::print("{}\n", nlohmann::json{{"peak_gflops", peak}, {"threads", threads}}.dump());
  return 0;
}

}  // namespace switchyard::launch
