// moe/experts.h: the routed experts of one MoE layer as a grouped SwiGLU FFN.
// The dispatched activations are in expert-sorted order: the rows of expert e are
// [offsets[e], offsets[e+1]) (host copy of the routing plan's expert_offsets). The experts run as
// one grouped FFN (core::ffn_forward_grouped/backward_grouped), one segment per expert: each GEMM
// role is one Backend::grouped_gemm over the experts that received rows, SwiGLU one call over all
// rows; experts that received no rows are skipped (their gradients are left untouched).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/ffn.h"
#include "core/params.h"
#include "core/precision.h"

namespace switchyard::moe {

class Experts {
 public:
  // prefix: the layer's MoE prefix, e.g. "model.layers.3.block_sparse_moe." (mixtral: w1/w3/w2)
  // or "model.layers.3.mlp." (qwen: gate_proj/up_proj/down_proj). E experts with global ids
  // first_expert .. first_expert+E-1 (expert parallelism: this rank's share); local index e of
  // offsets[] is global expert first_expert + e.
  Experts(const core::ParamTable& table, const std::string& prefix, bool qwen_names, int64_t E,
          int64_t C, int64_t I, int64_t first_expert = 0, const core::PrecisionPolicy& prec = {});

  int64_t experts() const { return E_; }
  int64_t width() const { return I_; }

  // xp [rows, C] -> h [rows, 2I], a [rows, I] (saved), y [rows, C]; rows = offsets[E].
  void forward(core::Backend& be, float* y, float* h, float* a, const float* xp,
               const int32_t* offsets, const float* params) const;
  // dy [rows, C] -> dxp [rows, C] (=); expert weight grads +=. scratch_dh [rows, 2I],
  // scratch_da [rows, I]. xp and dy are stored in the compute dtype (PrecisionPolicy::store).
  void backward(core::Backend& be, float* dxp, float* grads, const float* dy, const float* xp,
                const float* h, const float* a, const int32_t* offsets, const float* params,
                float* scratch_dh, float* scratch_da) const;

 private:
  // The grouped FFN's segments: the experts with rows, their weights (and gradients when grads).
  std::vector<core::FfnSegment> segments(const int32_t* offsets, const float* params,
                                         float* grads) const;
  int64_t E_, C_, I_;
  core::PrecisionPolicy prec_;
  std::vector<int64_t> off_gate_up_;  // [2I, C]: gate rows then up rows (adjacent in the arena)
  std::vector<int64_t> off_down_;     // [C, I]
};

}  // namespace switchyard::moe
