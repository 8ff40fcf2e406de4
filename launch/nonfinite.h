// launch/nonfinite.h: where inf/NaN came from, for the message that stops a run that overflows at
// the loss scaler's minimum (or diverges in fp32/bf16).
#pragma once

#include <string>
#include <vector>

#include "moe/model.h"
#include "parallel/communicator.h"

namespace switchyard::launch {

// Collective over `world`; every rank returns the same text. After a step whose loss or
// gradients were non-finite: if some rank's loss was non-finite, the first block whose forward
// output held inf/NaN on it; else the gradient tensor that backward produced non-finite first
// (backward order: LM head, final norm, layers from the last, embedding), over every rank.
std::string locate_nonfinite(const moe::Model& model, bool local_loss_nonfinite, parallel::Communicator& world);

// Collective over `world`, before a checkpoint of `step` is saved: throws a usage Error on
// every rank, naming the first parameter tensor (table order, lowest rank) that holds inf/NaN, so
// that a diverged state is never saved (the previous checkpoint stays `latest`).
void require_finite_params(const moe::Model& model, int64_t step, parallel::Communicator& world);

// For eval and export: a usage Error naming `source` and the first tensor of `params` (laid out as
// make_param_table(cfg)) that holds inf/NaN, unless `allow` (--allow-nonfinite).
void require_finite_weights(const core::ModelConfig& cfg, const std::vector<float>& params,
                            const std::string& source, bool allow);

}  // namespace switchyard::launch
