#include "launch/balance_metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>

namespace switchyard::launch {

int64_t busiest_count(int64_t n_experts) { return std::max<int64_t>(1, (3 * n_experts + 9) / 10); }

LayerBalance layer_balance(std::span<const int64_t> counts) {
  LayerBalance b;
  const auto E = static_cast<int64_t>(counts.size());
  for (const int64_t c : counts) b.tokens += c;
  b.share.assign(counts.size(), 0.0);
  if (b.tokens == 0 || E == 0) return b;
  const auto total = static_cast<double>(b.tokens);
  for (size_t e = 0; e < counts.size(); ++e) b.share[e] = static_cast<double>(counts[e]) / total;

  std::vector<int64_t> sorted(counts.begin(), counts.end());
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  int64_t busiest = 0;
  for (int64_t i = 0; i < busiest_count(E); ++i) busiest += sorted[static_cast<size_t>(i)];
  b.busiest30_share = static_cast<double>(busiest) / total;

  const double mean = total / static_cast<double>(E);
  b.max_over_mean = static_cast<double>(sorted.front()) / mean;
  double sq = 0;
  for (const int64_t c : counts) sq += (static_cast<double>(c) - mean) * (static_cast<double>(c) - mean);
  b.load_cv = std::sqrt(sq / static_cast<double>(E)) / mean;
  return b;
}

std::vector<LayerBalance> layer_balances(std::span<const int64_t> counts, int64_t n_experts,
                                         std::span<const int64_t> dropped, int64_t tokens) {
  std::vector<LayerBalance> out;
  if (n_experts <= 0) return out;
  for (size_t at = 0; at + static_cast<size_t>(n_experts) <= counts.size(); at += static_cast<size_t>(n_experts)) {
    LayerBalance b = layer_balance(counts.subspan(at, static_cast<size_t>(n_experts)));
    const size_t l = out.size();
    if (tokens > 0) b.mean_k = static_cast<double>(b.tokens) / static_cast<double>(tokens);
    if (l < dropped.size() && b.tokens > 0)
      b.dropped_fraction = static_cast<double>(dropped[l]) / static_cast<double>(b.tokens);
    out.push_back(std::move(b));
  }
  return out;
}

std::vector<std::array<double, 2>> per_layer_range(std::span<const float> values, int64_t n) {
  std::vector<std::array<double, 2>> out;
  for (size_t at = 0; n > 0 && at + static_cast<size_t>(n) <= values.size(); at += static_cast<size_t>(n)) {
    const auto [lo, hi] = std::minmax_element(values.begin() + static_cast<std::ptrdiff_t>(at),
                                              values.begin() + static_cast<std::ptrdiff_t>(at) + n);
    out.push_back({*lo, *hi});
  }
  return out;
}

std::string balance_summary(std::span<const LayerBalance> layers) {
  double busiest_sum = 0, busiest_worst = 0, ratio_sum = 0, ratio_worst = 0, k_sum = 0, drop_sum = 0;
  int64_t n = 0;
  for (const LayerBalance& b : layers) {
    if (b.tokens == 0) continue;
    ++n;
    busiest_sum += b.busiest30_share;
    ratio_sum += b.max_over_mean;
    k_sum += b.mean_k;
    drop_sum += b.dropped_fraction;
    busiest_worst = std::max(busiest_worst, b.busiest30_share);
    ratio_worst = std::max(ratio_worst, b.max_over_mean);
  }
  if (n == 0) return {};
  const auto layers_n = static_cast<double>(n);
  std::string s = fmt::format("busiest30 {:.2f} (worst {:.2f}) max/mean {:.2f} (worst {:.2f})",
                              busiest_sum / layers_n, busiest_worst, ratio_sum / layers_n, ratio_worst);
  if (k_sum > 0) s += fmt::format(" k {:.2f}", k_sum / layers_n);
  if (drop_sum > 0) s += fmt::format(" drop {:.3f}", drop_sum / layers_n);
  return s;
}

}  // namespace switchyard::launch
