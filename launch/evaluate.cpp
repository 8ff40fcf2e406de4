#include "launch/evaluate.h"

#include <algorithm>
#include <array>
#include <vector>

#include "data/sampler.h"

namespace switchyard::launch {

EvalResult evaluate(moe::Model& model, const data::TokenSource& source, int64_t seq_len,
                    int64_t batch, int64_t max_windows, const LogitsCallback& on_logits,
                    parallel::Communicator* world) {
  data::EvalWindows windows(source, seq_len, model.config().vocab_size);
  int64_t n = windows.count();
  if (max_windows > 0) n = std::min(n, max_windows);
  const int64_t ranks = world ? world->size() : 1, rank = world ? world->rank() : 0;
  const int64_t batches = (n + batch - 1) / batch, rounds = (batches + ranks - 1) / ranks;
  EvalResult r;
  std::vector<int32_t> tokens(static_cast<size_t>(batch * seq_len)), targets(tokens.size());
  std::array<double, 2> sum{0, 0};  // cross-entropy summed over tokens, tokens
  for (int64_t round = 0; round < rounds; ++round) {
    const int64_t mine = round * ranks + rank;
    const bool counts = mine < batches;  // else a stand-in forward for the collective ones
    const int64_t w0 = counts ? mine * batch : 0, b = counts ? std::min(batch, n - w0) : 1;
    for (int64_t i = 0; i < b; ++i)
      windows.read(w0 + i, tokens.data() + i * seq_len, targets.data() + i * seq_len);
    const auto f = model.forward(tokens.data(), targets.data(), b, seq_len);
    if (!counts) continue;
    if (on_logits) on_logits(model.logits(), b * seq_len);
    sum[0] += f.ce * static_cast<double>(f.tokens);
    sum[1] += static_cast<double>(f.tokens);
  }
  if (world) world->allreduce_sum(sum.data(), 2);
  r.windows = n;
  r.tokens = static_cast<int64_t>(sum[1]);
  r.loss = r.tokens ? sum[0] / sum[1] : 0.0;
  return r;
}

}  // namespace switchyard::launch
