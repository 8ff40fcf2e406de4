// core/ffn.h: a SwiGLU feed-forward network over rows, y = down(silu(gate(x)) * up(x)).
// Used by the dense MLP layers, the shared expert and every routed expert (moe/experts).
// Weights: w_gate_up [2I, C] = gate rows then up rows (adjacent in the arena), w_down [C, I].
// Backward writes dx (or adds to it when accumulate_dx) and accumulates dw_gate_up, dw_down (+=).
// The grouped form runs several FFNs with their own weights over consecutive row segments of the
// same buffers (the routed experts): each GEMM is one Backend::grouped_gemm over the non-empty
// segments, SwiGLU and the stored roundings one call over all their rows; per segment, the same
// calls with the same arguments as the single FFN.
#pragma once

#include <cstdint>
#include <span>

#include "core/backend.h"
#include "core/precision.h"

namespace switchyard::core {

// h [n, 2I] (saved: gate|up pre-activations), a [n, I] (saved: silu(gate)*up), y [n, C] (=).
// prec: GEMM dtypes (core/precision.h); the weights are compute weights, x is stored in the
// compute dtype, and so is a (forward stores it). dy_stored: dy is stored too (else fp32, rounded
// on the fly by the GEMMs).
void ffn_forward(Backend& be, float* y, float* h, float* a, const float* x, int64_t n, int64_t C,
                 int64_t I, const float* w_gate_up, const float* w_down,
                 const PrecisionPolicy& prec = {});

// scratch_dh [n, 2I], scratch_da [n, I].
void ffn_backward(Backend& be, float* dx, bool accumulate_dx, float* dw_gate_up, float* dw_down,
                  const float* dy, const float* x, const float* h, const float* a, int64_t n,
                  int64_t C, int64_t I, const float* w_gate_up, const float* w_down,
                  float* scratch_dh, float* scratch_da, const PrecisionPolicy& prec = {},
                  bool dy_stored = false);

// One FFN of a grouped call: rows [row0, row0 + n) of the row buffers, its weights and (backward)
// its weight gradients. The segments of a call follow each other: each row0 is the previous
// segment's end (empty segments, n == 0, are skipped and leave their gradients untouched).
struct FfnSegment {
  int64_t row0 = 0, n = 0;
  const float* w_gate_up = nullptr;
  const float* w_down = nullptr;
  float* dw_gate_up = nullptr;
  float* dw_down = nullptr;
};

// ffn_forward for every segment; y, h, a, x point at row 0 of the row buffers.
void ffn_forward_grouped(Backend& be, float* y, float* h, float* a, const float* x,
                         std::span<const FfnSegment> segments, int64_t C, int64_t I,
                         const PrecisionPolicy& prec = {});

// ffn_backward for every segment; dx, dy, x, h, a and the scratch point at row 0.
void ffn_backward_grouped(Backend& be, float* dx, bool accumulate_dx, const float* dy,
                          const float* x, const float* h, const float* a,
                          std::span<const FfnSegment> segments, int64_t C, int64_t I,
                          float* scratch_dh, float* scratch_da, const PrecisionPolicy& prec = {},
                          bool dy_stored = false);

}  // namespace switchyard::core
