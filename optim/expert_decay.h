// optim/expert_decay.h: the dynamic expert weight decay controller (optim.expert_decay). Per MoE
// layer l and routed expert e it keeps load[l][e], an EMA over optimizer steps of the expert's
// share of the layer's routing slots (the step's counts: every micro-batch, every rank), and turns
// it into the multiplier of the expert's decoupled weight decay:
//   share_e = count_e / sum_e' count_e'          (a layer with no slots keeps its loads)
//   load_e  <- ema * load_e + (1 - ema) * share_e
//   m_e     = clip((load_e / mean_load)^alpha, min, max),  mean_load = 1 / n_experts
// Loads start at 1/n_experts (m = 1 before the first step, and on resuming a checkpoint that has
// no loads). Every rank feeds the same summed counts, so every rank holds the same multipliers for
// all experts (the router is replicated; a rank's table holds only its experts). AdamW applies them
// (optim/adamw.h: set_decay_multipliers).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "core/config.h"

namespace switchyard::optim {

class ExpertDecay {
 public:
  ExpertDecay(const core::ExpertDecayConfig& cfg, int64_t n_moe_layers, int64_t n_experts);

  bool dynamic() const { return cfg_.mode == core::ExpertDecayMode::dynamic; }
  // One optimizer step's routing slots [MoE layer * n_experts + expert], summed over the step's
  // micro-batches and all ranks. Call once per optimizer step that updates (never on a skipped one).
  void update(const std::vector<int64_t>& counts);
  // [MoE layer * n_experts + expert]
  const std::vector<double>& loads() const { return loads_; }
  std::vector<double> multipliers() const;
  // Per MoE layer: the smallest and largest multiplier (the metrics record's `expert_decay`).
  std::vector<std::array<double, 2>> multiplier_ranges() const;
  // Restores the loads of a checkpoint; a usage error when their number does not match.
  void set_loads(const std::vector<double>& loads);

  int64_t n_experts() const { return n_experts_; }

 private:
  core::ExpertDecayConfig cfg_;
  int64_t n_layers_, n_experts_;
  std::vector<double> loads_;
};

}  // namespace switchyard::optim
