// launch/bench_runs.cpp: the suite's scenarios that run the trainer's own code in-process on a
// config of the configs folder (launch/train_context.h): one optimizer step of each config, the
// evaluation forward, checkpoint save and load, export. Training and eval are model FLOP/s
// (launch/plan.h's FLOPs per token) against the GEMM peak; the file scenarios are bytes/s against
// a plain write+fsync (save, export) or a plain read (load) of the same bytes in the same folder.
//
// Sizes on the CPU. A config whose step is more than a budget of FLOPs (3e11, --quick 6e10: some
// seconds on a few cores) runs scaled down: one layer, one sequence of at most 256 tokens, every
// width, expert count and the vocabulary kept (its GEMM shapes); still over: skipped with the
// reason. configs/gpu_1b.yaml (1.3B parameters) is scaled down by the default run and skipped by
// --quick. On a GPU every config runs as it is. eval, checkpoint and export use configs/tiny.yaml
// (--quick: two layers, 64-token windows).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <memory>

#include "launch/bench_suite.h"
#include "launch/checkpoint.h"
#include "launch/evaluate.h"
#include "launch/export.h"
#include "launch/plan.h"
#include "launch/train_context.h"
#include "launch/train_step.h"

namespace switchyard::launch {

namespace fs = std::filesystem;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// A training context of `config` for `scenario` (its start-up lines silenced).
std::unique_ptr<TrainContext> context(BenchSuite& s, const std::string& config, const std::string& scenario,
                                      const std::vector<std::string>& extra) {
  TrainOptions o;
  o.config_path = s.config_path(config);
  o.overrides = s.run_overrides(scenario);
  o.overrides.insert(o.overrides.end(), extra.begin(), extra.end());
  o.overwrite = true;
  const QuietStdout quiet;
  return std::make_unique<TrainContext>(o, s.mpi);
}

// The tiny config for eval, checkpoint and export; smaller under --quick.
std::vector<std::string> tiny_overrides(const BenchSuite& s) {
  if (!s.quick()) return {};
  return {"model.n_layers=2", "train.seq_len=64", "model.max_seq_len=64"};
}

bool need_tiny(BenchSuite& s, const std::string& scenario) {
  if (!s.config_path("tiny").empty()) return true;
  s.skip(scenario, fmt::format("no {}/tiny.yaml: run from the repository root or pass --configs", s.opts.configs));
  return false;
}

double flops_per_token_train(const core::ExperimentConfig& cfg) {
  const PlanEstimate p = plan(cfg);
  return p.flops_per_token_train[static_cast<size_t>(p.chosen)];
}

}  // namespace

void bench_train_config(BenchSuite& s, const std::string& config) {
  const std::string scenario = "train_" + config;
  const core::ExperimentConfig full = s.run_config(config, scenario);
  const auto step_flops = [](const core::ExperimentConfig& c) {
    return flops_per_token_train(c) * static_cast<double>(c.train.micro_batch * c.train.seq_len * c.train.grad_accum);
  };
  const double budget = s.opts.device == core::Device::cuda ? 1e300 : s.quick() ? 6e10 : 3e11;
  std::vector<std::string> extra;
  std::string note;
  if (step_flops(full) > budget) {
    const int64_t T = std::min<int64_t>(full.train.seq_len, 256);
    extra = {"model.n_layers=1", "train.micro_batch=1", "train.grad_accum=1", fmt::format("train.seq_len={}", T),
             fmt::format("model.first_dense_layers={}", std::min<int64_t>(full.model.first_dense_layers, 1))};
    const core::ExperimentConfig scaled = s.run_config(config, scenario, extra);
    if (step_flops(scaled) > budget) {
      s.skip(scenario, fmt::format("a step is {:.3g} GFLOP ({:.3g} scaled to one layer and {} tokens), over this "
                                   "run's budget of {:.3g}{}",
                                   step_flops(full) / 1e9, step_flops(scaled) / 1e9, T, budget / 1e9,
                                   s.quick() ? "; run without --quick" : ""));
      return;
    }
    note = fmt::format("scaled: 1 of {} layers, 1x{} tokens (config: {}x{}x{})", full.model.n_layers, T,
                       full.train.micro_batch, full.train.seq_len, full.train.grad_accum);
  }
  auto ctx = context(s, config, scenario, extra);
  const QuietStdout quiet;
  train_step(*ctx, 0);  // warm-up: first touch of activations, JIT
  std::vector<double> times;
  const int steps = s.quick() ? 2 : 3;
  for (int64_t step = 1; step <= steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    train_step(*ctx, step);
    ctx->backend->synchronize();
    times.push_back(seconds_since(t0));
  }
  std::sort(times.begin(), times.end());
  const double sec = times[times.size() / 2];
  const core::TrainConfig& t = ctx->cfg.train;
  const double tokens = static_cast<double>(t.micro_batch * t.seq_len * t.grad_accum);
  const double flops = flops_per_token_train(ctx->cfg) * tokens;
  s.add({scenario,
         fmt::format("{}x{}x{} tok, {} layer{}, {}", t.micro_batch, t.seq_len, t.grad_accum, ctx->cfg.model.n_layers,
                     ctx->cfg.model.n_layers == 1 ? "" : "s",
                     core::name_of(t.precision)),
         sec, flops / sec / 1e9, "GFLOP/s", s.gemm_peak() / 1e9, "GEMM peak (fraction: MFU)",
         fmt::format("{:.0f} tokens/s{}{}", tokens / sec, note.empty() ? "" : "; ", note)});
}

void bench_eval(BenchSuite& s) {
  if (!need_tiny(s, "eval")) return;
  auto ctx = context(s, "tiny", "eval", tiny_overrides(s));
  const int64_t T = ctx->cfg.train.seq_len, B = ctx->cfg.train.micro_batch, windows = s.quick() ? 8 : 32;
  const data::TokenSource& src = ctx->valid_src ? *ctx->valid_src : *ctx->data->sources().front();
  evaluate(*ctx->model, src, T, B, B);  // warm-up
  const auto t0 = std::chrono::steady_clock::now();
  const EvalResult r = evaluate(*ctx->model, src, T, B, windows);
  const double sec = seconds_since(t0);
  const double flops = plan(ctx->cfg).flops_per_token_forward * static_cast<double>(r.tokens);
  s.add({"eval", fmt::format("{} windows x{} tok, batch {}", r.windows, T, B), sec, flops / sec / 1e9, "GFLOP/s",
         s.gemm_peak() / 1e9, "GEMM peak", fmt::format("{:.0f} tokens/s", static_cast<double>(r.tokens) / sec)});
}

namespace {

// A tiny context with one checkpoint saved; returns its folder.
std::string saved(TrainContext& ctx, int64_t step) {
  return save_checkpoint(ctx.ckpt_root.string(), step, ctx.cfg, *ctx.model, *ctx.adamw, *ctx.groups);
}

}  // namespace

void bench_checkpoint_save(BenchSuite& s) {
  if (!need_tiny(s, "checkpoint_save")) return;
  auto ctx = context(s, "tiny", "checkpoint_save", tiny_overrides(s));
  double best = 1e30;
  std::string folder;
  for (int64_t step = 1; step <= (s.quick() ? 1 : 3); ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    folder = saved(*ctx, step);
    best = std::min(best, seconds_since(t0));
  }
  const int64_t bytes = bytes_under(folder);
  const double ceiling = s.write_fsync_rate(ctx->ckpt_root, bytes);
  s.add({"checkpoint_save", fmt::format("{:.1f} MB, {} layers", static_cast<double>(bytes) / 1e6, ctx->cfg.model.n_layers),
         best, static_cast<double>(bytes) / best / 1e9, "GB/s", ceiling / 1e9,
         "plain write+fsync of the same bytes, same folder", ""});
}

void bench_checkpoint_load(BenchSuite& s) {
  if (!need_tiny(s, "checkpoint_load")) return;
  auto ctx = context(s, "tiny", "checkpoint_load", tiny_overrides(s));
  const std::string folder = saved(*ctx, 1);
  const int64_t bytes = bytes_under(folder);
  const double ceiling = s.plain_read_rate(folder);  // also brings the files into the page cache
  double best = 1e30;
  for (int r = 0; r < (s.quick() ? 1 : 3); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    load_checkpoint(folder, *ctx->model, *ctx->adamw);
    best = std::min(best, seconds_since(t0));
  }
  s.add({"checkpoint_load", fmt::format("{:.1f} MB, {} layers", static_cast<double>(bytes) / 1e6, ctx->cfg.model.n_layers),
         best, static_cast<double>(bytes) / best / 1e9, "GB/s", ceiling / 1e9, "plain read of the same files", ""});
}

void bench_export(BenchSuite& s) {
  if (!need_tiny(s, "export")) return;
  auto ctx = context(s, "tiny", "export", tiny_overrides(s));
  ExportOptions o;
  o.checkpoint = saved(*ctx, 1);
  double best = 1e30;
  int64_t bytes = 0;
  fs::path out;
  for (int r = 0; r < (s.quick() ? 1 : 2); ++r) {
    out = s.scratch() / "export" / fmt::format("out{}", r);
    o.out = out.string();
    const QuietStdout quiet;
    const auto t0 = std::chrono::steady_clock::now();
    run_export(o);
    best = std::min(best, seconds_since(t0));
    bytes = bytes_under(out);
  }
  const double ceiling = s.write_fsync_rate(out, bytes);
  s.add({"export", fmt::format("{:.1f} MB bf16 safetensors", static_cast<double>(bytes) / 1e6), best,
         static_cast<double>(bytes) / best / 1e9, "GB/s", ceiling / 1e9,
         "plain write+fsync of the same bytes, same folder", "reads the checkpoint too"});
}

}  // namespace switchyard::launch
