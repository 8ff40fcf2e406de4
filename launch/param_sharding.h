// launch/param_sharding.h: what the parallel layout means for the parameter arena.
//   GradientReducer     dense tensors are replicated on every rank: their gradients are summed
//                       over the data group (all ranks); a routed expert lives on one rank of each
//                       expert group: its gradients are summed over the expert-data group (the
//                       ranks holding the same experts). One call per run of adjacent tensors.
//   gather_full_params  the whole model on rank 0 (dense tensors from rank 0, each expert from the
//                       rank of the first expert group that holds it), in the order of the full
//                       parameter table; for the final save and export.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "core/config.h"
#include "core/params.h"
#include "moe/model.h"
#include "parallel/process_groups.h"

namespace switchyard::launch {

// Buckets: one per transformer layer (its dense and its expert runs) and one for the tensors
// outside the layers (embedding, final norm, LM head). start_bucket() launches non-blocking
// allreduces as soon as backward has finished a layer's gradients (last micro-batch of the window
// only), so communication overlaps the backward of the layers below; finish() completes them
// before the optimizer step.
class GradientReducer {
 public:
  GradientReducer(const core::ParamTable& table, parallel::ProcessGroups& groups, int n_layers);
  // Sums (in place) the gradient arena over the right group for every tensor (blocking).
  void reduce(float* grads) const;
  // Non-blocking: bucket `layer` (0..n_layers-1), or the outside-layer tensors when layer < 0.
  void start_bucket(float* grads, int layer);
  // Starts the buckets not started yet, then waits for all of them.
  void finish(float* grads);
  // The L2 norm of the whole model's gradient after reduce(): the dense part (the same on every
  // rank) plus the experts of every rank of the expert group.
  double global_norm(core::Backend& be, const float* grads) const;

 private:
  struct Run {
    int64_t begin, end;
    bool expert;
    int layer;
  };
  std::vector<Run> runs_;
  parallel::ProcessGroups& groups_;
  int n_layers_;
  std::vector<bool> started_;                   // [n_layers + 1], the last: outside the layers
  std::vector<std::pair<parallel::Communicator*, parallel::Request>> pending_;
};

// Collective over the world. Returns the full parameters on rank 0 (empty elsewhere).
std::vector<float> gather_full_params(const moe::Model& model, parallel::ProcessGroups& groups,
                                      const core::ModelConfig& cfg);

}  // namespace switchyard::launch
