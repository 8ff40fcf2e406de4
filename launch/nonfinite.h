// launch/nonfinite.h: where inf/NaN came from, for the message that stops a run that overflows at
// the loss scaler's minimum (or diverges in fp32/bf16).
#pragma once

#include <string>

#include "moe/model.h"

namespace switchyard::launch {

// Collective over MPI_COMM_WORLD; every rank returns the same text. After a step whose loss or
// gradients were non-finite: if some rank's loss was non-finite, the first block whose forward
// output held inf/NaN on it; else the gradient tensor that backward produced non-finite first
// (backward order: LM head, final norm, layers from the last, embedding), over every rank.
std::string locate_nonfinite(const moe::Model& model, bool local_loss_nonfinite);

}  // namespace switchyard::launch
