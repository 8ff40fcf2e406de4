#include "launch/evaluate.h"

#include <algorithm>
#include <vector>

#include "data/sampler.h"

namespace switchyard::launch {

EvalResult evaluate(moe::Model& model, const data::TokenSource& source, int64_t seq_len,
                    int64_t batch, int64_t max_windows, const LogitsCallback& on_logits) {
  data::EvalWindows windows(source, seq_len, model.config().vocab_size);
  int64_t n = windows.count();
  if (max_windows > 0) n = std::min(n, max_windows);
  EvalResult r;
  std::vector<int32_t> tokens(static_cast<size_t>(batch * seq_len)), targets(tokens.size());
  double sum = 0;
  for (int64_t w0 = 0; w0 < n; w0 += batch) {
    const int64_t b = std::min(batch, n - w0);
    for (int64_t i = 0; i < b; ++i)
      windows.read(w0 + i, tokens.data() + i * seq_len, targets.data() + i * seq_len);
    const auto f = model.forward(tokens.data(), targets.data(), b, seq_len);
    if (on_logits) on_logits(model.logits(), b * seq_len);
    sum += f.ce * static_cast<double>(f.tokens);
    r.tokens += f.tokens;
  }
  r.windows = n;
  r.loss = r.tokens ? sum / static_cast<double>(r.tokens) : 0.0;
  return r;
}

}  // namespace switchyard::launch
