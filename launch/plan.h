// launch/plan.h: what a config costs per rank before it runs (`switchyard plan`), and the
// activation-checkpointing policy `auto` picks.
//   parameters: total, this rank's share (dense + its experts), active per token (dense + top_k
//     experts + shared expert, embedding excluded; under top-p routing k_max experts, the most a
//     token takes);
//   FLOPs per token: forward 2 x active linear parameters (LM head included) + causal attention
//     2 x seq_len x q_width per layer; training = 3 x forward, plus one more forward of the
//     blocks under full checkpointing;
//   memory per rank: fp32 parameters, gradients, two AdamW moments, compute weights (mixed
//     precision), and activations of one micro-batch under none / full / selective. Activations
//     are not listed here: the layers' own registrations (moe::Model::register_activations) are
//     counted by a layout store (core/activations.h), so the plan is what the model allocates:
//     what a policy keeps per layer, plus one copy of what it shares. This backend stores
//     activations in fp32 whatever the compute dtype. Expert rows assume balanced routing
//     (micro_batch x seq_len x top_k per rank; top-p: k_max); under expert parallelism they grow with
//     imbalance (activation_bytes_worst: x expert_parallel).
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "core/activations.h"
#include "core/config.h"

namespace switchyard::launch {

struct PlanEstimate {
  int64_t params_total = 0, params_rank = 0, params_active = 0;
  double flops_per_token_forward = 0;
  int64_t param_bytes = 0, grad_bytes = 0, optimizer_bytes = 0, compute_weight_bytes = 0;
  std::array<int64_t, core::kResolvedRecomputes> activation_bytes{};  // indexed by core::Recompute
  // the same if every token of the expert group were routed to this rank (expert parallelism)
  std::array<int64_t, core::kResolvedRecomputes> activation_bytes_worst{};
  std::array<double, core::kResolvedRecomputes> flops_per_token_train{};
  core::Recompute chosen = core::Recompute::none;  // train.activation_checkpointing resolved
  std::string why;                                  // how auto decided (empty otherwise)
};

// This machine's physical memory, bytes.
double host_memory_bytes();
// A usage error when `bytes` (what `what` needs, e.g. "the model of runs/x/model/config.json") is
// more than `available` bytes (default: this machine's memory); `fix` says what to change.
void require_host_memory(double bytes, const std::string& what, const std::string& fix, double available = 0);

// Throws a usage error naming train.activation_memory_mb when auto finds no policy that fits.
PlanEstimate plan(const core::ExperimentConfig& cfg);
std::string format_plan(const core::ExperimentConfig& cfg, const PlanEstimate& p, int world);

struct PlanOptions {
  std::string config_path;
  std::vector<std::string> overrides;
  int ranks = 0;  // 0: parallel.expert_parallel
};
int run_plan(const PlanOptions& opts);

}  // namespace switchyard::launch
