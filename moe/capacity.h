// moe/capacity.h: expert capacity and which routed assignments an over-full expert drops
// (model.moe.router.capacity_factor, min_capacity, drop_policy, importance).
//
// Capacity. Per micro-batch an expert computes at most
//   cap = max(min_capacity, ceil(capacity_factor * T * K / E))
// assignments, T the tokens of the micro-batch over the whole expert group (one process: its N;
// under expert parallelism the sum over the group's ranks, as the expert's own rank sees them
// after the exchange), K the routing slots per token, E the experts. capacity_factor 0: dropless,
// nothing here runs and the routing is bit for bit that of no capacity.
//
// Which assignments stay. Over the group's micro-batch in canonical order (group rank, then
// token, then slot: the order of one process holding the ranks' batches one after another),
// expert e keeps
//   position:   its first cap assignments in that order;
//   importance: its cap most important ones (batch-prioritised routing), ties in that order;
// so the kept set is the same under flat or hierarchical exchange and any expert-parallel size
// whose group holds the same tokens. Importance of slot (t, k) routed to expert e:
//   gate:    probs[t, e]: the softmax probability (the normalised affinity under sigmoid scoring;
//            moe/router.h), whatever bias steered the selection;
//   margin:  probs of token t sorted in descending order, the first minus the (K+1)-th (0 when
//            K = E): how decided the token is; the same for each of its assignments.
// A dropped assignment contributes nothing: its slot's expert becomes -1 for dispatch and
// combine (core/backend.h route_plan), its gate stays as routed (no renormalisation over what is
// kept) and its gate gradient is 0; a token that loses every assignment passes through the
// residual path only. The router's backward and the balancing statistics see the routed choice.
//
// Expert parallelism: every rank of the expert group allgathers the group's routed slots
// (expert and importance, 8 bytes a slot, on the group's host side) and applies the rule to all
// of them, keeping its own slice: dropped assignments never travel. Host work: O(S log S) for
// S = the group's slots (importance), O(S) (position).
#pragma once

#include <cstdint>
#include <vector>

#include "core/config.h"
#include "parallel/communicator.h"

namespace switchyard::moe {

struct CapacityRule {
  double factor = 0;  // 0: dropless
  int64_t min = 0;
  core::DropPolicy policy = core::DropPolicy::position;
  core::ImportanceScore importance = core::ImportanceScore::gate;
  bool enabled() const { return factor > 0; }
};
CapacityRule capacity_rule(const core::MoeConfig& moe);

// max(rule.min, ceil(rule.factor * tokens * K / E)).
int64_t expert_capacity(const CapacityRule& rule, int64_t tokens, int64_t K, int64_t E);

// out [N*K] (=): the importance of each slot (idx [N*K], probs [N,E], host memory).
void slot_importance(float* out, const float* probs, const int32_t* idx, int64_t N, int64_t E,
                     int64_t K, core::ImportanceScore score);

// Drops, in place, the assignments over capacity `cap` among the S slots idx [S] (canonical
// order; slots already -1 are not routed) by `policy`: dropped slots become -1. Returns how many.
int64_t drop_over_capacity(int32_t* idx, const float* importance, int64_t S, int64_t E, int64_t cap,
                           core::DropPolicy policy);

struct CapacityResult {
  int64_t capacity = 0;  // per expert, this micro-batch
  int64_t dropped = 0;   // this rank's dropped slots
};
// The whole rule on this rank's routed slots: idx [N*K] (host, in place: dropped -> -1), probs
// [N,E] (host). group: the expert group (its host side; collective over it), or null alone.
CapacityResult apply_capacity(const CapacityRule& rule, int32_t* idx, const float* probs, int64_t N,
                              int64_t E, int64_t K, parallel::Communicator* group);

}  // namespace switchyard::moe
