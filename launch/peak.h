// launch/peak.h: model FLOPs utilisation (MFU) of a training step: the model's training FLOPs per
// token (launch/plan.h: 3 x forward, recompute not counted) times tokens/s, over the peak of every
// rank's device. The peak is observe.peak_tflops, or else one square GEMM in the compute dtype
// measured on the backend at start (the best of a few runs).
#pragma once

#include "core/backend.h"

namespace switchyard::launch {

// The backend's measured GEMM rate, FLOP/s, of a square GEMM with `rounding` (operands in the
// compute dtype): 2048 on a CPU, 8192 on a GPU (smaller ones fall well short of the peak).
double measured_gemm_peak(core::Backend& be, const core::GemmRounding& rounding);
// The side of that square GEMM on `be`.
int64_t measured_gemm_size(const core::Backend& be);

// tokens_per_s (all ranks) x flops_per_token / (peak_flops x ranks); 0 when a factor is unknown.
double model_flops_utilisation(double tokens_per_s, double flops_per_token, double peak_flops, int ranks);

}  // namespace switchyard::launch
