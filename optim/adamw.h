// optim/adamw.h: AdamW with decoupled weight decay over the parameter arena, and global
// gradient-norm clipping. Which tensors decay is decided by the spec table's kinds and the
// optimizer flags (core::param_decays), never by position. Moments live in two arenas with the
// parameters' layout, so the optimizer step is one kernel call per run of same-decay tensors.
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

 private:
  core::Backend& be_;
  core::OptimConfig cfg_;
  core::Arena m_, v_;
  // maximal runs [begin, end) of adjacent tensors that share a decay decision
  std::vector<std::pair<std::pair<int64_t, int64_t>, bool>> runs_;
  int64_t t_ = 0;
};

// Global L2 norm of the gradient arena.
double grad_norm(core::Backend& be, const float* grads, int64_t n);
// The factor clipping multiplies the gradients by: min(1, max_norm / (norm + 1e-6)) when
// max_norm > 0, else 1 (torch.nn.utils.clip_grad_norm_ semantics).
double clip_coefficient(double norm, double max_norm);

}  // namespace switchyard::optim
