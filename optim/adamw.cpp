#include "optim/adamw.h"

#include <algorithm>
#include <cmath>

namespace switchyard::optim {

AdamW::AdamW(core::Backend& be, const core::ParamTable& table, const core::OptimConfig& cfg)
    : be_(be), cfg_(cfg), m_(be, table.total()), v_(be, table.total()) {
  for (const auto& p : table.specs()) {
    const bool decays = core::param_decays(p, cfg);
    if (!runs_.empty() && runs_.back().second == decays && runs_.back().first.second == p.offset)
      runs_.back().first.second = p.offset + p.numel;
    else
      runs_.push_back({{p.offset, p.offset + p.numel}, decays});
  }
}

void AdamW::step(float* params, const float* grads, double lr, double grad_scale, float* compute,
                 core::Dtype dtype) {
  ++t_;
  const float bc1 = static_cast<float>(1.0 - std::pow(cfg_.beta1, static_cast<double>(t_)));
  const float bc2 = static_cast<float>(1.0 - std::pow(cfg_.beta2, static_cast<double>(t_)));
  for (const auto& [range, decays] : runs_) {
    const int64_t b = range.first, n = range.second - range.first;
    be_.adamw_update(params + b, grads + b, m_.data() + b, v_.data() + b, n,
                     static_cast<float>(grad_scale), static_cast<float>(lr),
                     static_cast<float>(cfg_.beta1), static_cast<float>(cfg_.beta2),
                     static_cast<float>(cfg_.eps), decays ? static_cast<float>(cfg_.weight_decay) : 0.f,
                     bc1, bc2, compute ? compute + b : nullptr, dtype);
  }
}

void AdamW::set_state(const float* exp_avg_host, const float* exp_avg_sq_host, int64_t steps_taken) {
  const size_t bytes = static_cast<size_t>(m_.numel()) * sizeof(float);
  be_.copy_from_host(m_.data(), exp_avg_host, bytes);
  be_.copy_from_host(v_.data(), exp_avg_sq_host, bytes);
  t_ = steps_taken;
}

void AdamW::state_to_host(float* exp_avg_host, float* exp_avg_sq_host) const {
  const size_t bytes = static_cast<size_t>(m_.numel()) * sizeof(float);
  be_.copy_to_host(exp_avg_host, m_.data(), bytes);
  be_.copy_to_host(exp_avg_sq_host, v_.data(), bytes);
}

double grad_norm(core::Backend& be, const float* grads, int64_t n) {
  return std::sqrt(be.sum_squares(grads, n));
}

double clip_coefficient(double norm, double max_norm) {
  if (max_norm <= 0 || !std::isfinite(norm)) return 1.0;
  return std::min(1.0, max_norm / (norm + 1e-6));
}

}  // namespace switchyard::optim
