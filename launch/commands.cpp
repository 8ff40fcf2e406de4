#include "launch/commands.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <omp.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/backend.h"
#include "core/error.h"
#include "data/hdf5_tokens.h"
#include "data/megatron_dataset.h"
#include "data/prepare.h"
#include "data/token_source.h"
#include "launch/evaluate.h"
#include "launch/model_io.h"
#include "launch/nonfinite.h"
#include "moe/model.h"

namespace switchyard::launch {

int run_eval(const EvalOptions& opts) {
  if (opts.batch < 1) throw_usage("eval: --batch must be at least 1 (got {})", opts.batch);
  if (opts.seq_len < 0) throw_usage("eval: --seq-len must be positive (or 0: the model's max_seq_len), got {}", opts.seq_len);
  if (opts.max_windows < 0) throw_usage("eval: --max-windows must be >= 0 (0: all), got {}", opts.max_windows);
  if (opts.threads < 0) throw_usage("eval: --threads must be >= 0 (0: OMP_NUM_THREADS or all cores), got {}", opts.threads);
  std::string split = opts.split;
  const auto data_format = data::detect_token_file_format(opts.data);
  if (data_format == data::TokenFileFormat::llmc || data_format == data::TokenFileFormat::megatron) {
    if (!split.empty())
      throw_usage("eval --split {}: {} is {}, which has no splits (it is evaluated whole); drop --split", split,
                  opts.data, data_format == data::TokenFileFormat::llmc ? "an llm.c shard" : "a Megatron dataset");
    split = "train";  // the whole shard
  } else if (split.empty()) {
    split = "valid";
  }
  ModelSource loaded = load_model_option(opts.init_from, opts.checkpoint, "eval");
  const std::string& dir = loaded.from;
  require_finite_weights(loaded.config, loaded.params, dir, opts.allow_nonfinite);
  const int64_t T = opts.seq_len > 0 ? opts.seq_len : loaded.config.max_seq_len;
  if (T > loaded.config.max_seq_len)
    throw_usage("eval: --seq-len {} exceeds the model's max_seq_len {} (the model in {})", T,
                loaded.config.max_seq_len, dir);
  auto source = data::open_token_source(opts.data, split);
  auto backend = core::make_backend(opts.device, opts.threads, 0, "eval --device");
  moe::Model model(*backend, loaded.config, opts.batch, T);
  model.set_params_from_host(loaded.params.data());
  if (!loaded.selection_bias.empty()) model.set_selection_bias(loaded.selection_bias);
  std::FILE* dump = nullptr;
  if (!opts.dump_logits.empty() && !(dump = std::fopen(opts.dump_logits.c_str(), "wbx")))  // x: never over a file
    throw_usage("eval --dump-logits {}: cannot create it: {}{}", opts.dump_logits, std::strerror(errno),
                errno == EEXIST ? " (choose a new file name)" : "");
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> closer(dump, [](std::FILE* f) { return f ? std::fclose(f) : 0; });
  std::vector<float> host;
  const auto on_logits = [&](const float* logits, int64_t rows) {
    host.resize(static_cast<size_t>(rows * loaded.config.vocab_size));
    backend->copy_to_host(host.data(), logits, host.size() * sizeof(float));
    if (std::fwrite(host.data(), sizeof(float), host.size(), dump) != host.size())
      throw_usage("eval --dump-logits {}: write failed (disk full?)", opts.dump_logits);
  };
  const EvalResult r = evaluate(model, *source, T, opts.batch, opts.max_windows,
                                dump ? LogitsCallback(on_logits) : LogitsCallback());
  if (dump && std::fclose(closer.release()) != 0)
    throw_usage("eval --dump-logits {}: write failed (disk full?)", opts.dump_logits);
  fmt::print("{}\n", nlohmann::json{{"loss", r.loss}, {"tokens", r.tokens}}.dump());
  return 0;
}

namespace {

// Whether `file`, one of the files prepare would write, is recognisably a token file of `format`:
// an HDF5 token file with our attributes, or one file of a valid Megatron .bin/.idx pair.
bool written_by_prepare(const std::string& file, data::PrepareFormat format) {
  try {
    if (!std::filesystem::is_regular_file(file)) return false;
    if (format == data::PrepareFormat::megatron) {
      data::MegatronDataset{file};  // the pair checks out (a lone .bin or .idx does not)
      return true;
    }
    return data::detect_token_file_format(file) == data::TokenFileFormat::hdf5 &&
           !data::hdf5_token_splits(file).empty();
  } catch (const Error&) {
    return false;
  }
}

}  // namespace

int run_prepare(const PrepareCommandOptions& opts) {
  const auto format = opts.format == "megatron" ? data::PrepareFormat::megatron : data::PrepareFormat::hdf5;
  if (opts.format != "hdf5" && opts.format != "megatron")
    throw_usage("prepare --format {}: unknown; use hdf5 or megatron", opts.format);
  const auto files = data::prepare_output_files(opts.output, format, opts.valid_fraction);
  // never replace what `prepare` did not write: an existing output file only with --overwrite, and
  // only when it is a Switchyard token file (megatron: part of a valid .bin/.idx pair)
  for (const std::string& file : files) {
    std::error_code ec;
    if (!std::filesystem::exists(std::filesystem::symlink_status(file, ec))) continue;
    if (!opts.overwrite)
      throw_usage("prepare --output {}: {} exists; pass --overwrite to replace it, or choose another --output",
                  opts.output, file);
    if (!written_by_prepare(file, format))
      throw_usage("prepare --output {}: {} exists and is not a {} written by `switchyard prepare`; not "
                  "replacing it: choose another --output", opts.output, file,
                  format == data::PrepareFormat::megatron ? "valid Megatron .bin/.idx pair" : "token file");
  }
  data::PrepareOptions po;
  int64_t reported = 0;
  po.on_skip = [&](const std::string& path, const std::string& reason) {
    if (reason != "binary" && reason != "empty" && reported++ < 5)
      fmt::print(stderr, "prepare: skipped {} ({})\n", path, reason);
  };
  po.format = format;
  const auto stats = data::prepare_corpus(opts.inputs, opts.output, opts.valid_fraction, po);
  fmt::print("{}\n", stats.summary(fmt::format("{}", fmt::join(files, " + "))));
  return 0;
}

}  // namespace switchyard::launch
