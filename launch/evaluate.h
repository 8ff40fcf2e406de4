// launch/evaluate.h: mean token loss over consecutive non-overlapping windows of a token source.
#pragma once

#include <cstdint>
#include <functional>

#include "data/token_source.h"
#include "moe/model.h"
#include "parallel/communicator.h"

namespace switchyard::launch {

struct EvalResult {
  double loss = 0;     // mean cross-entropy per predicted token
  int64_t tokens = 0;  // predicted tokens
  int64_t windows = 0;
};

// Windows w = 0, 1, ... of seq_len+1 tokens in file order ([w*(T+1), (w+1)*(T+1))), evaluated in
// batches of up to `batch` windows; max_windows <= 0 means all of them. Only the cross-entropy
// counts (balancing losses are a training signal, not part of the evaluation loss).
// on_logits (optional) gets the logits of each batch (backend memory, [rows, vocab]) in window order.
// world (optional, collective over it): the batches are split over its ranks (batch i on rank
// i % size) and the result summed over them, so each window is evaluated once, and under expert
// parallelism with capacity the expert group holds distinct windows as in training. Every rank
// runs the same number of forwards (they are collective under expert parallelism): one without a
// batch in the last round evaluates the first window again and does not count it.
using LogitsCallback = std::function<void(const float* logits, int64_t rows)>;
EvalResult evaluate(moe::Model& model, const data::TokenSource& source, int64_t seq_len,
                    int64_t batch, int64_t max_windows, const LogitsCallback& on_logits = {},
                    parallel::Communicator* world = nullptr);

}  // namespace switchyard::launch
