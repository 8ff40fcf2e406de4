// launch/train_step.h: one optimizer step (DESIGN decision 7): the micro-batches of the
// accumulation window run forward and backward (gradients accumulate; on the last one each
// finished layer starts its gradient reduction), then the reduction completes, the loss scaler
// decides on the global gradient norm, and AdamW steps with the scheduled learning rate.
#pragma once

#include <cstdint>

#include "launch/metrics.h"
#include "launch/train_context.h"

namespace switchyard::launch {

// Collective. Runs step `step` + 1 of the run (`step` steps are done). Throws switchyard::Error
// when the loss scaler stops the run (inf/NaN it cannot skip), naming where it appeared.
StepRecord train_step(TrainContext& ctx, int64_t step);

}  // namespace switchyard::launch
