#include "launch/peak.h"

#include <vector>

namespace switchyard::launch {

int64_t measured_gemm_size(const core::Backend& be) { return be.device() >= 0 ? 8192 : 2048; }

double measured_gemm_peak(core::Backend& be, const core::GemmRounding& rounding) {
  const int64_t n = measured_gemm_size(be);
  const size_t bytes = static_cast<size_t>(n * n) * sizeof(float);
  std::vector<float> host(static_cast<size_t>(n * n));
  for (size_t i = 0; i < host.size(); ++i) host[i] = 0.01f * static_cast<float>(static_cast<int>(i % 201) - 100) / 100.f;
  auto* a = static_cast<float*>(be.alloc(bytes));
  auto* b = static_cast<float*>(be.alloc(bytes));
  auto* c = static_cast<float*>(be.alloc(bytes));
  be.copy_from_host(a, host.data(), bytes);
  be.copy_from_host(b, host.data(), bytes);
  const double s = be.seconds_per_run([&] { be.gemm(false, true, n, n, n, 1.f, a, n, b, n, 0.f, c, n, rounding); }, 2);
  be.release(a);
  be.release(b);
  be.release(c);
  return s > 0 ? 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) / s : 0.0;
}

double model_flops_utilisation(double tokens_per_s, double flops_per_token, double peak_flops, int ranks) {
  if (!(tokens_per_s > 0) || !(flops_per_token > 0) || !(peak_flops > 0) || ranks < 1) return 0.0;
  return tokens_per_s * flops_per_token / (peak_flops * ranks);
}

}  // namespace switchyard::launch
