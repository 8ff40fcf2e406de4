#include "launch/commands.h"

#include <fmt/format.h>
#include <omp.h>

#include <nlohmann/json.hpp>

#include "core/backend.h"
#include "core/error.h"
#include "data/prepare.h"
#include "data/token_source.h"
#include "launch/evaluate.h"
#include "launch/model_io.h"
#include "moe/model.h"

namespace switchyard::launch {

int run_eval(const EvalOptions& opts) {
  if (opts.init_from.empty() == opts.checkpoint.empty())
    throw_usage("eval: give exactly one of --init-from DIR (Hugging Face folder) or --checkpoint DIR (run folder)");
  if (opts.batch < 1) throw_usage("eval: --batch must be at least 1 (got {})", opts.batch);
  const std::string dir = opts.init_from.empty() ? resolve_model_dir(opts.checkpoint) : opts.init_from;
  LoadedModel loaded = load_hf_model(dir);
  const int64_t T = opts.seq_len > 0 ? opts.seq_len : loaded.config.max_seq_len;
  if (T > loaded.config.max_seq_len)
    throw_usage("eval: --seq-len {} exceeds the model's max_seq_len {} ({}/config.json)", T,
                loaded.config.max_seq_len, dir);
  auto source = data::open_token_source(opts.data, opts.split);
  auto backend = core::make_cpu_backend(opts.threads);
  moe::Model model(*backend, loaded.config, opts.batch, T);
  model.set_params_from_host(loaded.params.data());
  const EvalResult r = evaluate(model, *source, T, opts.batch, opts.max_windows);
  fmt::print("{}\n", nlohmann::json{{"loss", r.loss}, {"tokens", r.tokens}}.dump());
  return 0;
}

int run_prepare(const PrepareCommandOptions& opts) {
  data::PrepareOptions po;
  int64_t reported = 0;
  po.on_skip = [&](const std::string& path, const std::string& reason) {
    if (reason != "binary" && reason != "empty" && reported++ < 5)
      fmt::print(stderr, "prepare: skipped {} ({})\n", path, reason);
  };
  const auto stats = data::prepare_corpus(opts.inputs, opts.output, opts.valid_fraction, po);
  fmt::print("{}\n", stats.summary(opts.output));
  return 0;
}

}  // namespace switchyard::launch
