// optim/loss_scaler.cpp: dynamic loss scaling (see optim/loss_scaler.h).
#include "optim/loss_scaler.h"

#include <algorithm>

namespace switchyard::optim {

LossScaler::LossScaler(const core::LossScalerConfig& cfg, bool enabled) : cfg_(cfg), enabled_(enabled) {
  if (enabled_) {
    s_.scale = cfg.initial_scale;
    s_.hysteresis_left = cfg.hysteresis;
  }
}

LossScaler::Outcome LossScaler::update(bool overflow) {
  if (!enabled_) return overflow ? Outcome::stop : Outcome::step;
  if (!overflow) {
    s_.overflows_at_min = 0;
    if (++s_.clean_steps >= cfg_.growth_interval) {
      s_.clean_steps = 0;
      s_.hysteresis_left = cfg_.hysteresis;
      s_.scale *= cfg_.growth_factor;
    }
    return Outcome::step;
  }
  ++s_.skipped_steps;
  s_.clean_steps = 0;
  if (s_.scale <= cfg_.min_scale) {
    if (++s_.overflows_at_min >= cfg_.max_overflows_at_min) return Outcome::stop;
  } else {
    s_.overflows_at_min = 0;
  }
  // Megatron-LM's rule: once the budget is spent every overflow backs off, until a growth
  // refills it
  if (--s_.hysteresis_left <= 0) {
    s_.hysteresis_left = 0;
    s_.scale = std::max(s_.scale * cfg_.backoff_factor, cfg_.min_scale);
  }
  return Outcome::skip;
}

}  // namespace switchyard::optim
