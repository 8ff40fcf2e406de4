#include "launch/generate.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "core/backend.h"
#include "core/error.h"
#include "core/rng.h"
#include "launch/model_io.h"
#include "launch/nonfinite.h"

namespace switchyard::launch {

int32_t sample_token(std::span<const float> logits, const SamplingOptions& s, uint64_t step) {
  const int64_t V = static_cast<int64_t>(logits.size());
  SY_CHECK(V > 0, "sample_token: no logits");
  const auto argmax = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  if (s.temperature == 0) return argmax;  // max_element: the first of equal maxima
  // softmax(logits / temperature) in double, from the largest logit
  std::vector<double> p(static_cast<size_t>(V));
  double sum = 0;
  for (int64_t i = 0; i < V; ++i) {
    p[i] = std::exp((static_cast<double>(logits[i]) - logits[argmax]) / s.temperature);
    sum += p[i];
  }
  std::vector<int32_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  // the nucleus: the shortest prefix of `order` whose mass reaches top_p (at least one token)
  double kept = 0;
  size_t n = 0;
  while (n < order.size() && (n == 0 || kept < s.top_p * sum)) kept += p[order[n++]];
  const double u = core::rng_uniform(core::rng_key(s.seed, core::name_key("generate")), step) * kept;
  double acc = 0;
  for (size_t i = 0; i < n; ++i) {
    acc += p[order[i]];
    if (u < acc) return order[i];
  }
  return order[n - 1];  // u rounded onto the upper end
}

Generation generate_tokens(moe::Model& model, std::vector<int32_t> context, int64_t max_new,
                           const SamplingOptions& s) {
  SY_CHECK(!context.empty(), "generate_tokens: empty context");
  core::Backend& be = model.backend();
  const int64_t V = model.config().vocab_size, cap = model.decode_capacity();
  std::vector<float> row(static_cast<size_t>(V));
  Generation g;
  const auto t0 = std::chrono::steady_clock::now();
  model.decode_reset();
  for (int64_t step = 0; step < max_new; ++step) {
    const auto size = static_cast<int64_t>(context.size());
    if (size <= cap) {  // the prompt at the first step, then the newest token
      const int64_t have = model.decode_length();
      model.decode(context.data() + have, size - have);
    } else {  // past the window every position moves: its last cap tokens from position 0 again
      model.decode_reset();
      model.decode(context.data() + size - cap, cap);
    }
    be.copy_to_host(row.data(), model.logits() + (model.logits_rows() - 1) * V, row.size() * sizeof(float));
    const int32_t next = sample_token(row, s, static_cast<uint64_t>(step));
    if (next == 0) {
      g.ended = true;
      break;
    }
    g.tokens.push_back(next);
    context.push_back(next);
  }
  be.synchronize();
  g.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return g;
}

int run_generate(const GenerateOptions& opts) {
  if (opts.prompt.empty()) throw_usage("generate: --prompt is empty (give the text to continue)");
  if (opts.max_new_tokens < 1) throw_usage("generate: --max-new-tokens must be at least 1 (got {})", opts.max_new_tokens);
  if (!(opts.temperature >= 0) || !std::isfinite(opts.temperature))
    throw_usage("generate: --temperature must be a finite value >= 0 (0: greedy), got {}", opts.temperature);
  if (!(opts.top_p > 0 && opts.top_p <= 1)) throw_usage("generate: --top-p must be in (0, 1], got {}", opts.top_p);
  if (opts.threads < 0) throw_usage("generate: --threads must be >= 0 (0: OMP_NUM_THREADS or all cores), got {}", opts.threads);
  ModelSource loaded = load_model_option(opts.init_from, opts.checkpoint, "generate");
  if (loaded.config.vocab_size != 256)
    throw_usage("generate: the model in {} has vocab_size {}; text generation needs a byte-level model "
                "(vocab_size 256, `switchyard prepare`'s tokens)", loaded.from, loaded.config.vocab_size);
  require_finite_weights(loaded.config, loaded.params, loaded.from, opts.allow_nonfinite);
  std::vector<int32_t> context{0};  // 0 ends the previous document: the prompt starts a new one
  for (char c : opts.prompt) context.push_back(static_cast<unsigned char>(c));
  const int64_t T = std::min<int64_t>(loaded.config.max_seq_len,
                                      static_cast<int64_t>(context.size()) + opts.max_new_tokens);
  if (loaded.config.moe.router.capacity_factor > 0) {  // capacity depends on the rows routed together
    fmt::print(stderr, "generate: note: the model was trained with capacity_factor {}; decoding routes every token "
               "to its experts (dropless), as inference engines do\n", loaded.config.moe.router.capacity_factor);
    loaded.config.moe.router.capacity_factor = 0;
  }
  auto backend = core::make_backend(opts.device, opts.threads, 0, "generate --device");
  moe::Model model(*backend, loaded.config, 1, T);
  model.set_params_from_host(loaded.params.data());
  if (!loaded.selection_bias.empty()) model.set_selection_bias(loaded.selection_bias);
  const Generation g = generate_tokens(model, context, opts.max_new_tokens,
                                       {opts.temperature, opts.top_p, opts.seed});
  std::string text = opts.prompt;
  for (int32_t t : g.tokens) text.push_back(static_cast<char>(t));
  fmt::print("{}\n", text);
  std::fflush(stdout);
  const auto n = static_cast<int64_t>(g.tokens.size());
  fmt::print(stderr, "generate: {} new tokens{} in {:.3f} s ({:.1f} tokens/s, {}, KV cache)\n",
             n, g.ended ? " (then end of document)" : "", g.seconds,
             g.seconds > 0 ? static_cast<double>(n + (g.ended ? 1 : 0)) / g.seconds : 0.0,
             opts.temperature == 0 ? std::string("greedy")
                                   : fmt::format("temperature {} top-p {} seed {}", opts.temperature, opts.top_p, opts.seed));
  return 0;
}

}  // namespace switchyard::launch
