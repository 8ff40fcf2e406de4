// optim/lr_schedule.h: learning rate per optimizer step: linear warmup, then cosine decay.
#pragma once

#include <cstdint>

#include "core/config.h"

namespace switchyard::optim {

// step is 0-based (the step about to be taken), total = train.steps.
//   step < warmup:  lr * (step + 1) / warmup
//   otherwise:      min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2,
//                   progress = (step - warmup) / max(1, total - warmup)
double lr_at(const core::OptimConfig& cfg, int64_t step, int64_t total);

}  // namespace switchyard::optim
