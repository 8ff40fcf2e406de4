// optim/loss_scaler.h: dynamic loss scaling for fp16 training (the rules of core::LossScalerConfig).
// The trainer multiplies the loss by scale() for the whole accumulation window, reduces the
// gradients, asks every rank whether any gradient is inf/NaN (one global decision), and calls
// update() once per optimizer step:
//   overflow: the step is skipped; the growth counter restarts; the hysteresis budget drops by
//             one and, once it is spent, scale *= backoff_factor (not below min_scale) on this
//             and every further overflow until a growth refills it (Megatron-LM's rule);
//   clean:    the step is taken; after growth_interval clean steps in a row scale *= growth_factor
//             and the hysteresis budget is refilled;
//   an overflow while the scale already sits at min_scale counts; max_overflows_at_min of them in
//   a row return Outcome::stop (the trainer ends with a diagnostic instead of skipping forever).
// A disabled scaler (fp32, bf16) keeps scale 1; any overflow there stops training.
#pragma once

#include <cstdint>

#include "core/config.h"

namespace switchyard::optim {

struct LossScalerState {
  double scale = 1.0;
  int64_t clean_steps = 0;       // clean steps in a row since the last growth or overflow
  int64_t hysteresis_left = 1;   // overflows still tolerated before the next backoff
  int64_t overflows_at_min = 0;  // overflows in a row while at min_scale
  int64_t skipped_steps = 0;     // total, for reports
};

class LossScaler {
 public:
  enum class Outcome { step, skip, stop };

  LossScaler(const core::LossScalerConfig& cfg, bool enabled);
  bool enabled() const { return enabled_; }
  double scale() const { return s_.scale; }
  Outcome update(bool overflow);
  const LossScalerState& state() const { return s_; }
  void set_state(const LossScalerState& s) { s_ = s; }

 private:
  core::LossScalerConfig cfg_;
  bool enabled_;
  LossScalerState s_;
};

}  // namespace switchyard::optim
