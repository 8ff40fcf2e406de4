// optim/adamw.h: AdamW with decoupled weight decay over the parameter arena, and global
// gradient-norm clipping. Which tensors decay is decided by the spec table's kinds and the
// optimizer flags (core::param_decays), never by position. Moments live in two arenas with the
// parameters' layout, so the optimizer step is one kernel call per run of same-decay tensors.
// Dynamic expert decay (optim.expert_decay.mode: dynamic, optim/expert_decay.h) scales the decay
// of routed expert e of MoE layer l by a multiplier: its tensors (apply_to experts|both: one call
// per expert, its three tensors being adjacent) and row e of the layer's router weight (apply_to
// router|both: one call per row, C contiguous floats; decayed whatever optim.decay_router says).
// That is one backend call per expert per layer, two with `both`: 16 experts x 24 layers x 2 = 768
// small calls a step, a kernel launch each on CUDA (microseconds against a step's seconds). Static
// mode keeps the maximal runs, so it computes exactly what it did before dynamic decay existed.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "core/config.h"
#include "core/params.h"

namespace switchyard::optim {

class AdamW {
 public:
  AdamW(core::Backend& be, const core::ParamTable& table, const core::OptimConfig& cfg);

  // One update with learning rate lr on grad_scale * grads (the clipping coefficient, folded in so
  // the gradients are read once); increments the step counter first (t = 1 on the first call).
  // compute (optional): the compute weights of mixed precision, written as round(params) to
  // `dtype` in the same pass (the caller restores any tensor that must stay fp32).
  void step(float* params, const float* grads, double lr, double grad_scale = 1.0,
            float* compute = nullptr, core::Dtype dtype = core::Dtype::f32);
  int64_t steps_taken() const { return t_; }
  const core::Arena& exp_avg() const { return m_; }
  const core::Arena& exp_avg_sq() const { return v_; }
  // Restores a checkpoint: both moments (host arrays of table.total() floats, the table's layout)
  // and the step counter (bias correction continues from steps_taken + 1).
  void set_state(const float* exp_avg_host, const float* exp_avg_sq_host, int64_t steps_taken);
  // The moments as host arrays of table.total() floats (for saving).
  void state_to_host(float* exp_avg_host, float* exp_avg_sq_host) const;
  // Dynamic expert decay: the multipliers [MoE layer * n_experts + expert] of every global expert
  // (MoE layers in table order), used by the following steps; 1 until first set.
  void set_decay_multipliers(const std::vector<double>& multipliers);
  // Backend calls per step (one per segment of the arena with its own weight decay).
  size_t calls_per_step() const { return segments_.size(); }

 private:
  core::Backend& be_;
  core::OptimConfig cfg_;
  core::Arena m_, v_;
  // What a segment's weight decay is: none, optim.weight_decay, or weight_decay * multiplier.
  enum class Decay : uint8_t { none, fixed, scaled };
  struct Segment {
    int64_t begin = 0, end = 0;  // [begin, end) of the arena
    Decay decay = Decay::none;
    int64_t multiplier = -1;     // scaled: index into multipliers_
  };
  void add_segment(int64_t begin, int64_t end, Decay decay, int64_t multiplier);
  // maximal runs of adjacent tensors (or router rows) that share a decay decision
  std::vector<Segment> segments_;
  std::vector<double> multipliers_;
  int64_t t_ = 0;
};

// Global L2 norm of the gradient arena.
double grad_norm(core::Backend& be, const float* grads, int64_t n);
// The factor clipping multiplies the gradients by: min(1, max_norm / (norm + 1e-6)) when
// max_norm > 0, else 1 (torch.nn.utils.clip_grad_norm_ semantics).
double clip_coefficient(double norm, double max_norm);

}  // namespace switchyard::optim
