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

std::vector<LayerBalance> layer_balances(std::span<const int64_t> counts, int64_t n_experts) {
  std::vector<LayerBalance> out;
  if (n_experts <= 0) return out;
  for (size_t at = 0; at + static_cast<size_t>(n_experts) <= counts.size(); at += static_cast<size_t>(n_experts))
    out.push_back(layer_balance(counts.subspan(at, static_cast<size_t>(n_experts))));
  return out;
}

std::string balance_summary(std::span<const LayerBalance> layers) {
  double busiest_sum = 0, busiest_worst = 0, ratio_sum = 0, ratio_worst = 0;
  int64_t n = 0;
  for (const LayerBalance& b : layers) {
    if (b.tokens == 0) continue;
    ++n;
    busiest_sum += b.busiest30_share;
    ratio_sum += b.max_over_mean;
    busiest_worst = std::max(busiest_worst, b.busiest30_share);
    ratio_worst = std::max(ratio_worst, b.max_over_mean);
  }
  if (n == 0) return {};
  const auto layers_n = static_cast<double>(n);
  return fmt::format("busiest30 {:.2f} (worst {:.2f}) max/mean {:.2f} (worst {:.2f})", busiest_sum / layers_n,
                     busiest_worst, ratio_sum / layers_n, ratio_worst);
}

}  // namespace switchyard::launch
