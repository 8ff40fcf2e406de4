#include "optim/adamw.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "core/error.h"

namespace switchyard::optim {

AdamW::AdamW(core::Backend& be, const core::ParamTable& table, const core::OptimConfig& cfg)
    : be_(be), cfg_(cfg), m_(be, table.total()), v_(be, table.total()) {
  using core::ExpertDecayTarget;
  const auto& xd = cfg.expert_decay;
  const bool dynamic = xd.mode == core::ExpertDecayMode::dynamic;
  const bool experts = dynamic && xd.apply_to != ExpertDecayTarget::router;
  const bool router = dynamic && xd.apply_to != ExpertDecayTarget::experts;
  std::map<int32_t, int64_t> moe_index;  // transformer layer -> MoE layer (routers in table order)
  int64_t n_experts = 0;
  for (const auto& p : table.specs()) {
    if (p.kind == core::ParamKind::router) {
      moe_index.emplace(p.layer, static_cast<int64_t>(moe_index.size()));
      n_experts = p.shape[0];
    }
    const Decay plain = core::param_decays(p, cfg) ? Decay::fixed : Decay::none;
    if (experts && p.kind == core::ParamKind::expert) {
      add_segment(p.offset, p.offset + p.numel, Decay::scaled, moe_index.at(p.layer) * n_experts + p.expert);
    } else if (router && p.kind == core::ParamKind::router) {
      const int64_t C = p.shape[1];
      for (int64_t e = 0; e < n_experts; ++e)
        add_segment(p.offset + e * C, p.offset + (e + 1) * C, Decay::scaled, moe_index.at(p.layer) * n_experts + e);
    } else {
      add_segment(p.offset, p.offset + p.numel, plain, -1);
    }
  }
  multipliers_.assign(static_cast<size_t>(static_cast<int64_t>(moe_index.size()) * n_experts), 1.0);
}

void AdamW::add_segment(int64_t begin, int64_t end, Decay decay, int64_t multiplier) {
  if (!segments_.empty() && segments_.back().end == begin && segments_.back().decay == decay &&
      segments_.back().multiplier == multiplier)
    segments_.back().end = end;
  else
    segments_.push_back({begin, end, decay, multiplier});
}

void AdamW::set_decay_multipliers(const std::vector<double>& multipliers) {
  SY_CHECK(multipliers.size() == multipliers_.size(), "AdamW: {} decay multipliers for {} experts of all MoE layers",
           multipliers.size(), multipliers_.size());
  multipliers_ = multipliers;
}

void AdamW::step(float* params, const float* grads, double lr, double grad_scale, float* compute,
                 core::Dtype dtype) {
  ++t_;
  const float bc1 = static_cast<float>(1.0 - std::pow(cfg_.beta1, static_cast<double>(t_)));
  const float bc2 = static_cast<float>(1.0 - std::pow(cfg_.beta2, static_cast<double>(t_)));
  for (const Segment& s : segments_) {
    const int64_t b = s.begin, n = s.end - s.begin;
    const float wd = s.decay == Decay::none    ? 0.f
                     : s.decay == Decay::fixed ? static_cast<float>(cfg_.weight_decay)
                                               : static_cast<float>(cfg_.weight_decay *
                                                                    multipliers_[static_cast<size_t>(s.multiplier)]);
    be_.adamw_update(params + b, grads + b, m_.data() + b, v_.data() + b, n,
                     static_cast<float>(grad_scale), static_cast<float>(lr),
                     static_cast<float>(cfg_.beta1), static_cast<float>(cfg_.beta2),
                     static_cast<float>(cfg_.eps), wd, bc1, bc2, compute ? compute + b : nullptr, dtype);
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
