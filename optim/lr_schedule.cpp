#include "optim/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace switchyard::optim {

double lr_at(const core::OptimConfig& cfg, int64_t step, int64_t total) {
  if (step < cfg.warmup_steps)
    return cfg.lr * static_cast<double>(step + 1) / static_cast<double>(cfg.warmup_steps);
  const double progress = static_cast<double>(step - cfg.warmup_steps) /
                          static_cast<double>(std::max<int64_t>(1, total - cfg.warmup_steps));
  return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + std::cos(std::numbers::pi * std::min(1.0, progress)));
}

}  // namespace switchyard::optim
