// moe/token_dispatcher.h: how the token rows of one MoE layer reach the experts this rank computes
// and come back. One interface, two implementations, chosen once when the layer is built:
//   LocalDispatcher           every expert is on this rank: a permutation of the routing slots into
//                             expert-sorted order (core::Backend dispatch/combine over the plan)
//   ExpertParallelDispatcher  the experts are spread over the expert group: slots sorted by owner
//                             rank, parallel::TokenExchange (flat | hierarchical | auto), then the
//                             received rows in local-expert order
// Each direction is a local pre-step, the communication (expert parallel only) and a local
// post-step (Megatron-Core's token_dispatcher.py). The MoE layer reads
//   forward:  plan -> dispatch_forward -> experts -> combine_forward
//   backward: combine_backward -> experts -> dispatch_backward
// and never asks which dispatcher it holds. Rows ("expert rows", R of them) are the routed token
// copies this rank's experts compute, grouped by local expert (expert_offsets()).
// Every tensor is in the backend's memory; outputs are written (=), as core/backend.h says. What
// crosses between host and backend memory is said where it happens (moe/token_dispatcher.cpp).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "core/activations.h"
#include "core/backend.h"
#include "core/config.h"
#include "parallel/token_exchange.h"

namespace switchyard::moe {

// Expert parallelism: the experts of the layer are spread over the `size` ranks of an expert
// group; this rank holds core::local_experts(cfg, rank, size). Tokens reach their experts and
// come back through `exchange` (flat, hierarchical or auto; parallel/token_exchange.h). A null
// exchange means every expert is local (size 1).
struct ExpertParallel {
  parallel::TokenExchange* exchange = nullptr;
  int rank = 0;
  int size = 1;
};

// The routing plan of the last forward: the layer's buffers, kept under every checkpointing
// policy. idx [N,K], pos [N*K], gates [N,K] in the backend's memory; expert_offsets_host [E+1]:
// the host copy of the plan's expert offsets (the layer reads the counts from it); idx_host: a host
// copy of idx [N,K] when the layer already holds one (capacity's kept experts), else null.
struct RoutingPlan {
  int64_t N = 0;
  const int32_t* idx = nullptr;
  const int32_t* pos = nullptr;
  const float* gates = nullptr;
  const int32_t* expert_offsets_host = nullptr;
  const int32_t* idx_host = nullptr;
};

// The buffers of the expert-parallel dispatcher, bound by the layer's activation store: per row
// (R rows each) the received rows' place in local-expert order and the exchanged rows in received
// order; per routed slot the dgates combine backward gets back in the exchange's slot order.
struct DispatchBuffers {
  int32_t* local_pos = nullptr;                                        // [R]
  float *xr = nullptr, *yr = nullptr, *dyr = nullptr, *dxr = nullptr;  // [R, C]
  float* dgate_slots = nullptr;                                        // [N*K]
};

// How the dispatched rows xp [R, C] are kept: exchanged tokens are expensive to rebuild, a local
// gather of x is cheap.
inline core::Keep dispatched_rows_keep(bool expert_parallel) {
  return expert_parallel ? core::Keep::expensive : core::Keep::cheap;
}

// f(name, slot, width, keep) for each per-row buffer of the dispatcher (none for the local one),
// in registration order. The layer registers them through its own list, after its expert rows,
// so `switchyard plan` counts them (moe/moe_layer.cpp, add_buffers).
template <class F>
void for_each_dispatch_buffer(DispatchBuffers& b, bool expert_parallel, int64_t C, F&& f) {
  if (!expert_parallel) return;
  using core::Keep;
  f("moe.xr", &b.xr, C, Keep::scratch);
  f("moe.yr", &b.yr, C, Keep::expensive);
  f("moe.dyr", &b.dyr, C, Keep::scratch);
  f("moe.dxr", &b.dxr, C, Keep::scratch);
  f("moe.local_pos", &b.local_pos, 1, Keep::always);
}
// f(name, slot, count, keep) for each per-slot buffer ([N*K], NK = max tokens * slots per token) of the
// dispatcher (none for the local one).
template <class F>
void for_each_dispatch_slot_buffer(DispatchBuffers& b, bool expert_parallel, int64_t NK, F&& f) {
  if (!expert_parallel) return;
  f("moe.dgate_slots", &b.dgate_slots, NK, core::Keep::scratch);
}

class TokenDispatcher {
 public:
  virtual ~TokenDispatcher() = default;

  // Forward, once per micro-batch, after the routing plan: this dispatcher's plan (collective over
  // the expert group under expert parallelism), kept for backward and recomputation (never
  // re-made). grow(R) is called with the rows this rank computes before any row buffer is
  // written. Traffic of making the plan is added to `traffic`.
  virtual void plan(const RoutingPlan& routing, const std::function<void(int64_t)>& grow,
                    parallel::ExchangeStats& traffic) = 0;
  virtual int64_t rows() const = 0;                   // R of the last plan
  virtual const int32_t* expert_offsets() const = 0;  // host [local experts + 1], rows per expert
  virtual std::string describe() const = 0;           // the exchange the plan runs ("" if none)

  // xp [R, C] (=) from x [N, C]: the row of each slot, in local-expert order.
  virtual void dispatch_forward(float* xp, const float* x, parallel::ExchangeStats& traffic) = 0;
  // out [N, C] (=) = sum over a token's slots of gate * ye[row of the slot].
  virtual void combine_forward(float* out, const float* ye, parallel::ExchangeStats& traffic) = 0;
  // dye [R, C] (=) = gate * dout[token of the row]; dgates [N, K] (=) = dot(dout[token], ye[row]).
  virtual void combine_backward(float* dye, float* dgates, const float* dout, const float* ye,
                                parallel::ExchangeStats& traffic) = 0;
  // dx [N, C] (=) = sum over a token's slots of dxp[row of the slot].
  virtual void dispatch_backward(float* dx, const float* dxp, parallel::ExchangeStats& traffic) = 0;

  // Under activation checkpointing, before backward, replaying the saved plan. recompute_dispatch:
  // xp again from x where the store did not keep it (dispatched_rows_keep: a local gather under
  // selective and full; the exchange again under full). recompute_combine: after the experts were
  // recomputed, what combine_backward reads and the store did not keep.
  virtual void recompute_dispatch(float* xp, const float* x, parallel::ExchangeStats& traffic) = 0;
  virtual void recompute_combine(const float* ye) = 0;
};

// The dispatcher of one layer: expert parallel when ep.exchange is set, else local. `buffers`
// are the layer's (bound and rebound by `acts`), read at each call; max_tokens sizes host state.
std::unique_ptr<TokenDispatcher> make_token_dispatcher(core::Backend& be, const core::ModelConfig& cfg,
                                                       const ExpertParallel& ep, int64_t max_tokens,
                                                       const core::ActivationStore& acts,
                                                       const DispatchBuffers& buffers);

}  // namespace switchyard::moe
