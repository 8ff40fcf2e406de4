// moe/moe_layer.h: the MoE feed-forward sublayer of one transformer block.
//   route:    logits = x Wr^T -> softmax | sigmoid (fp32) -> top-k (+ selection bias) -> gates
//             (optionally renormalised; moe/router.h); over capacity, assignments dropped by
//             position or importance (moe/capacity.h)
//   dispatch: the routed token copies to the experts, in expert-sorted order (routing plan; a
//             moe::TokenDispatcher: local, or through parallel::TokenExchange)
//   experts:  one SwiGLU FFN per expert over its contiguous rows (grouped GEMMs, core/ffn.h)
//   combine:  out[t] = sum_k gate[t,k] * expert_out[slot]; + sigmoid(x Wsg^T) * shared(x)
// x is the normalised input [N, C], stored in the compute dtype (PrecisionPolicy::store); out
// [N, C] is written (=) and stored. The layer keeps its routing plan
// and activations for backward in buffers it owns (sized for max_tokens). Backward writes dx (=)
// and accumulates parameter grads (+=).
//
// Balancing losses of one layer (per micro-batch, N tokens):
//   aux = E * sum_e (count_e / N) * P_e,   count_e = routing slots that chose e, P_e = mean_t p[t,e]
//         (p: softmax probabilities, or the normalised sigmoid affinities; moe/router.h)
//   z   = mean_t logsumexp(logits[t,:])^2
//   aux_scope global (set_aux_counts): count_e and N are those of the whole optimizer step over
//         every rank, P_e the micro-batch's prob sums over the step's mean micro-batch size, so
//         the mean of the step's micro-batch values is the step's global aux loss.
// The model weights them (coef / number of MoE layers); backward receives those weights.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/activations.h"
#include "core/backend.h"
#include "core/config.h"
#include "core/params.h"
#include "core/precision.h"
#include "moe/token_dispatcher.h"  // ExpertParallel
#include "parallel/token_exchange.h"

namespace switchyard::moe {

struct MoeStats {
  // [E] routing slots per expert in the last forward: the router's choice, before any capacity
  // drop (what the balancing losses, the selection bias and the expert decay follow)
  std::vector<int64_t> expert_counts;
  int64_t routed = 0;    // slots the router chose (the sum of expert_counts)
  int64_t dropped = 0;   // of those, dropped over capacity (moe/capacity.h)
  int64_t capacity = 0;  // per expert (0: dropless)
  std::vector<int32_t> kept;  // capacity on: [N*K] each slot's expert after the drops (-1: none)
  double aux_loss = 0;
  double z_loss = 0;
  // expert parallelism: traffic and time of the token exchange (plan, dispatch and combine) of
  // the last forward and backward; expert_seconds: the grouped expert GEMMs
  parallel::ExchangeStats exchange;
  double expert_seconds = 0;
  std::string exchange_plan;  // the algorithm the last forward's plan ran, with auto's estimates
};

class MoeLayer {
 public:
  // A layer that owns its buffers (everything kept, fp32): for tests and tools.
  MoeLayer(core::Backend& be, const core::ModelConfig& cfg, const core::ParamTable& table,
           int layer, int64_t max_tokens, const ExpertParallel& ep = {});
  // A layer of a model: buffers registered with the model's store (allocated by the model),
  // GEMM dtypes from `prec`, `params` are the compute weights.
  MoeLayer(core::Backend& be, const core::ModelConfig& cfg, const core::ParamTable& table,
           int layer, int64_t max_tokens, const ExpertParallel& ep, core::ActivationStore& acts,
           const core::PrecisionPolicy& prec);
  ~MoeLayer();
  MoeLayer(const MoeLayer&) = delete;
  MoeLayer& operator=(const MoeLayer&) = delete;

  // Registers the activation buffers of layer `layer` (max_tokens tokens) with a layout store
  // (core/activations.h), building no layer: launch/plan counts them so. The constructors register
  // the same list with expert_rows = max_tokens x slots per token (balanced routing; under expert
  // parallelism the buffers grow when a plan delivers more, up to ep.size times that).
  static void register_activations(core::ActivationStore& layout, const core::ModelConfig& cfg, int layer,
                                   int64_t max_tokens, int64_t expert_rows, bool expert_parallel);

  void forward(float* out, const float* x, const float* params, int64_t N);
  // Before backward under activation checkpointing: rebuilds what the store did not keep from x
  // (the same normalised input) by replaying the saved routing plan: never re-routes, never
  // counts expert load again (stats() keeps the forward's counts and losses). Under full
  // checkpointing with expert parallelism the dispatch exchange runs again (same plan).
  void recompute(const float* x, const float* params, int64_t N);
  // d_aux, d_z: dL/d(aux) and dL/d(z) of this layer (coefficient / #MoE layers, times any loss
  // scale). Uses the routing plan saved by the last forward: never re-routes.
  void backward(float* dx, const float* dout, const float* x, const float* params, float* grads,
                int64_t N, float d_aux, float d_z);

  const MoeStats& stats() const { return stats_; }

  // model.moe.balance.aux_scope global (launch/train_step.cpp): counts [E], the routing slots of
  // every micro-batch of the optimizer step on every rank; tokens, the tokens routed there;
  // micro_batches, how many micro-batches (all ranks) the trainer averages. Until cleared (counts
  // null) forward and backward use aux = E * sum_e (counts_e / tokens) * (sum_{t in micro-batch}
  // p[t,e]) / (tokens / micro_batches). Also recomputes stats().aux_loss of the last forward
  // (its backward then uses the new counts too).
  void set_aux_counts(const int64_t* counts, int64_t tokens, int64_t micro_batches);

  // The aux-loss-free selection bias [E] (moe/router.h): empty when model.moe.balance.bias_rate
  // is 0. set_ copies E values in (a resume); update_ takes one step from load [E], the routing
  // slots of a whole optimizer step summed over every rank. Both do nothing when it is off.
  const std::vector<float>& selection_bias() const;
  void set_selection_bias(const float* host);
  void update_selection_bias(const int64_t* load, double rate);

 private:
  struct Impl;  // buffers, routing plan and dispatcher (moe_layer.cpp)
  std::unique_ptr<core::ActivationStore> own_acts_;  // standalone layers only
  std::unique_ptr<Impl> impl_;
  MoeStats stats_;
};

}  // namespace switchyard::moe
