// optim/expert_decay.cpp: see expert_decay.h.
#include "optim/expert_decay.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace switchyard::optim {

ExpertDecay::ExpertDecay(const core::ExpertDecayConfig& cfg, int64_t n_moe_layers, int64_t n_experts)
    : cfg_(cfg), n_layers_(n_moe_layers), n_experts_(n_experts),
      loads_(static_cast<size_t>(n_moe_layers * n_experts), n_experts > 0 ? 1.0 / static_cast<double>(n_experts) : 0.0) {}

void ExpertDecay::update(const std::vector<int64_t>& counts) {
  SY_CHECK(counts.size() == loads_.size(), "expert decay: {} counts for {} MoE layers x {} experts", counts.size(),
           n_layers_, n_experts_);
  for (int64_t l = 0; l < n_layers_; ++l) {
    int64_t total = 0;
    for (int64_t e = 0; e < n_experts_; ++e) total += counts[static_cast<size_t>(l * n_experts_ + e)];
    if (total <= 0) continue;
    for (int64_t e = 0; e < n_experts_; ++e) {
      const size_t i = static_cast<size_t>(l * n_experts_ + e);
      const double share = static_cast<double>(counts[i]) / static_cast<double>(total);
      loads_[i] = cfg_.ema * loads_[i] + (1.0 - cfg_.ema) * share;
    }
  }
}

std::vector<double> ExpertDecay::multipliers() const {
  std::vector<double> m(loads_.size());
  const double E = static_cast<double>(n_experts_);
  for (size_t i = 0; i < m.size(); ++i)
    m[i] = std::clamp(std::pow(loads_[i] * E, cfg_.alpha), cfg_.min, cfg_.max);
  return m;
}

std::vector<std::array<double, 2>> ExpertDecay::multiplier_ranges() const {
  const std::vector<double> m = multipliers();
  std::vector<std::array<double, 2>> out;
  for (int64_t l = 0; l < n_layers_; ++l) {
    const auto first = m.begin() + l * n_experts_, last = first + n_experts_;
    out.push_back({*std::min_element(first, last), *std::max_element(first, last)});
  }
  return out;
}

void ExpertDecay::set_loads(const std::vector<double>& loads) {
  if (loads.size() != loads_.size())
    throw_usage("the checkpoint's expert decay state has {} loads, this model needs {} ({} MoE layers x {} experts)",
                loads.size(), loads_.size(), n_layers_, n_experts_);
  loads_ = loads;
}

}  // namespace switchyard::optim
