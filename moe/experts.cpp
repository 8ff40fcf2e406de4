// moe/experts.cpp: the experts as one grouped SwiGLU FFN over their contiguous row segments.
#include "moe/experts.h"

#include <fmt/format.h>

#include "core/error.h"
#include "core/ffn.h"

namespace switchyard::moe {

Experts::Experts(const core::ParamTable& table, const std::string& prefix, bool qwen_names,
                 int64_t E, int64_t C, int64_t I, int64_t first_expert,
                 const core::PrecisionPolicy& prec)
    : E_(E), C_(C), I_(I), prec_(prec) {
  off_gate_up_.resize(static_cast<size_t>(E));
  off_down_.resize(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) {
    const std::string x = fmt::format("{}experts.{}.", prefix, first_expert + e);
    const auto& g = table.at(x + (qwen_names ? "gate_proj.weight" : "w1.weight"));
    const auto& u = table.at(x + (qwen_names ? "up_proj.weight" : "w3.weight"));
    const auto& d = table.at(x + (qwen_names ? "down_proj.weight" : "w2.weight"));
    SY_CHECK(g.numel == I * C && u.numel == I * C && d.numel == C * I,
             "expert {} weights have unexpected sizes ({}, {}, {}) for I={} C={}", x, g.numel,
             u.numel, d.numel, I, C);
    SY_CHECK(u.offset == g.offset + I * C,
             "expert {}: gate and up weights must be adjacent in the arena", x);
    off_gate_up_[static_cast<size_t>(e)] = g.offset;
    off_down_[static_cast<size_t>(e)] = d.offset;
  }
}

std::vector<core::FfnSegment> Experts::segments(const int32_t* offsets, const float* params,
                                                float* grads) const {
  std::vector<core::FfnSegment> segs;
  segs.reserve(static_cast<size_t>(E_));
  for (int64_t e = 0; e < E_; ++e) {
    const int64_t r0 = offsets[e], n = offsets[e + 1] - r0;
    if (n == 0) continue;
    const size_t ue = static_cast<size_t>(e);
    segs.push_back({r0, n, params + off_gate_up_[ue], params + off_down_[ue],
                    grads ? grads + off_gate_up_[ue] : nullptr,
                    grads ? grads + off_down_[ue] : nullptr});
  }
  return segs;
}

void Experts::forward(core::Backend& be, float* y, float* h, float* a, const float* xp,
                      const int32_t* offsets, const float* params) const {
  core::ffn_forward_grouped(be, y, h, a, xp, segments(offsets, params, nullptr), C_, I_, prec_);
}

void Experts::backward(core::Backend& be, float* dxp, float* grads, const float* dy,
                       const float* xp, const float* h, const float* a, const int32_t* offsets,
                       const float* params, float* scratch_dh, float* scratch_da) const {
  core::ffn_backward_grouped(be, dxp, /*accumulate_dx=*/false, dy, xp, h, a,
                             segments(offsets, params, grads), C_, I_, scratch_dh, scratch_da,
                             prec_, /*dy_stored=*/true);
}

}  // namespace switchyard::moe
