// launch/balance_metrics.h: how evenly each MoE layer spread its tokens over its experts in one
// step, from the step's expert counts (routed slots summed over micro-batches and ranks): the
// per-layer values of metrics.jsonl and the balance summary of the progress line. Pure functions
// of the counts.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace switchyard::launch {

// The busiest-experts share counts the ceil(3E/10) busiest of E experts (at least one), so a
// perfectly balanced layer gives busiest_count(E)/E: 0.30 when E is a multiple of 10 (E = 16: 5/16).
int64_t busiest_count(int64_t n_experts);

// One MoE layer. A layer that routed no tokens reports zeros everywhere (never NaN).
struct LayerBalance {
  int64_t tokens = 0;          // routed slots, all experts
  std::vector<double> share;   // [E] each expert's counts / tokens (metrics.jsonl expert_load)
  double busiest30_share = 0;  // share of the busiest_count(E) busiest experts: 1.0 = all on them
  double max_over_mean = 0;    // busiest expert's counts / mean counts: 1 = balanced, E = one expert
  double load_cv = 0;          // population std / mean of the counts: 0 = balanced
  double mean_k = 0;           // routed slots per routed token (top-p: adaptive; else top_k)
  double dropped_fraction = 0; // of the routed slots, dropped over capacity (moe/capacity.h)
};

LayerBalance layer_balance(std::span<const int64_t> counts);
// counts: [layer * n_experts + expert], as StepRecord::expert_counts; one entry per MoE layer.
// dropped: [layer] slots dropped over capacity (empty: none); tokens: the tokens each layer routed
// (0: mean_k stays 0).
std::vector<LayerBalance> layer_balances(std::span<const int64_t> counts, int64_t n_experts,
                                         std::span<const int64_t> dropped = {}, int64_t tokens = 0);

// [min, max] of each run of n values (one per MoE layer): e.g. the selection bias [layer * E + e].
std::vector<std::array<double, 2>> per_layer_range(std::span<const float> values, int64_t n);

// "busiest30 0.41 (worst 0.52) max/mean 1.80 (worst 2.31)": means over the layers that routed
// tokens and their worst layer, then " k 1.62" (mean experts per token, when known) and
// " drop 0.041" (when a layer dropped slots); empty when no layer routed (a dense model).
std::string balance_summary(std::span<const LayerBalance> layers);

}  // namespace switchyard::launch
