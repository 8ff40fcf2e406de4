// launch/plan.cpp: the per-rank cost model of a config (see launch/plan.h).
#include "launch/plan.h"

#include <unistd.h>

#include <fmt/format.h>

#include "core/error.h"
#include "core/params.h"
#include "moe/model.h"

namespace switchyard::launch {

double host_memory_bytes() {
  return static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGESIZE));
}

void require_host_memory(double bytes, const std::string& what, const std::string& fix, double available) {
  if (available <= 0) available = host_memory_bytes();
  constexpr double GiB = 1 << 30;
  if (bytes > available)
    throw_usage("{} needs {:.1f} GiB of memory, more than the {:.1f} GiB this machine has{}; {}", what, bytes / GiB,
                available / GiB, available < host_memory_bytes() ? " per rank" : "", fix);
}

namespace {
using core::Recompute;

// Activation bytes of one micro-batch under a policy: the model's own registrations
// (moe::Model::register_activations) counted by a layout store, so the plan is what the model
// allocates. rows_factor: expert rows per rank in units of micro_batch x seq_len x routing slots
// per token (core::MoeConfig::slots_per_token; 1: balanced).
int64_t activation_bytes(const core::ExperimentConfig& cfg, Recompute policy, int64_t rows_factor = 1) {
  const int64_t N = cfg.train.micro_batch * cfg.train.seq_len;
  core::ActivationStore layout(policy);
  moe::Model::register_activations(layout, cfg.model, N, N * cfg.model.moe.slots_per_token() * rows_factor,
                                   cfg.parallel.expert_parallel > 1);
  return layout.bytes();
}

std::string mib(int64_t bytes) { return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1 << 20)); }
}  // namespace

PlanEstimate plan(const core::ExperimentConfig& cfg) {
  const auto& m = cfg.model;
  const int ep = static_cast<int>(cfg.parallel.expert_parallel);
  PlanEstimate p;
  const core::ParamTable full = core::make_param_table(m), mine = core::make_param_table(m, 0, ep);
  p.params_total = full.total();
  p.params_rank = mine.total();
  int64_t active = 0;
  for (const auto& s : full.specs()) {
    if (s.kind == core::ParamKind::embedding && !(m.tie_embeddings)) continue;  // a lookup
    if (s.kind == core::ParamKind::expert) {
      if (s.expert < m.moe.slots_per_token()) active += s.numel;  // top_k (top-p: k_max) experts' worth
      continue;
    }
    active += s.numel;
  }
  p.params_active = active;
  const double attn = 2.0 * static_cast<double>(cfg.train.seq_len) * static_cast<double>(m.n_heads * m.hd()) *
                      static_cast<double>(m.n_layers);
  p.flops_per_token_forward = 2.0 * static_cast<double>(active) + attn;
  const double head = 2.0 * static_cast<double>(m.vocab_size * m.d_model);
  p.flops_per_token_train[static_cast<int>(Recompute::none)] = 3 * p.flops_per_token_forward;
  p.flops_per_token_train[static_cast<int>(Recompute::selective)] = 3 * p.flops_per_token_forward;
  p.flops_per_token_train[static_cast<int>(Recompute::full)] = 4 * p.flops_per_token_forward - head;
  p.param_bytes = 4 * p.params_rank;
  p.grad_bytes = 4 * p.params_rank;
  p.optimizer_bytes = 8 * p.params_rank;
  p.compute_weight_bytes = cfg.train.precision == core::Dtype::f32 ? 0 : 4 * p.params_rank;
  for (Recompute r : {Recompute::none, Recompute::full, Recompute::selective}) {
    p.activation_bytes[static_cast<int>(r)] = activation_bytes(cfg, r);
    p.activation_bytes_worst[static_cast<int>(r)] = activation_bytes(cfg, r, cfg.parallel.expert_parallel);
  }

  if (cfg.train.activation_checkpointing != Recompute::automatic) {
    p.chosen = cfg.train.activation_checkpointing;
    return p;
  }
  const int64_t budget = cfg.train.activation_memory_mb * (int64_t{1} << 20);
  if (budget == 0) {
    p.chosen = Recompute::none;
    p.why = "auto: no train.activation_memory_mb budget, so nothing is recomputed";
    return p;
  }
  for (Recompute r : {Recompute::none, Recompute::selective, Recompute::full}) {
    if (p.activation_bytes[static_cast<int>(r)] <= budget) {
      p.chosen = r;
      p.why = fmt::format("auto: {} is the least recomputation within train.activation_memory_mb = {} ({} needed)",
                          r, cfg.train.activation_memory_mb,
                          mib(p.activation_bytes[static_cast<int>(r)]));
      return p;
    }
  }
  throw_usage("train.activation_memory_mb = {}: even full activation checkpointing needs {} per rank for "
              "micro_batch {} x seq_len {}; lower train.micro_batch or raise the budget",
              cfg.train.activation_memory_mb, mib(p.activation_bytes[static_cast<int>(Recompute::full)]),
              cfg.train.micro_batch, cfg.train.seq_len);
}

std::string format_plan(const core::ExperimentConfig& cfg, const PlanEstimate& p, int world) {
  const auto& m = cfg.model;
  const int ep = static_cast<int>(cfg.parallel.expert_parallel);
  std::string out;
  out += fmt::format("plan for {} rank(s), expert parallel {}, precision {}, micro-batch {} x {} tokens\n", world,
                     ep, cfg.train.precision, cfg.train.micro_batch, cfg.train.seq_len);
  out += fmt::format("  parameters: {} total, {} per rank ({} experts of {} per layer), {} active per token\n",
                     p.params_total, p.params_rank, m.moe.n_experts / ep, m.moe.n_experts, p.params_active);
  out += fmt::format("  FLOPs per token: forward {:.3g}, training {:.3g} (none, selective), {:.3g} (full)\n",
                     p.flops_per_token_forward, p.flops_per_token_train[0], p.flops_per_token_train[1]);
  out += fmt::format("  memory per rank, {} (every rank holds the same amounts):\n",
                     cfg.train.device == core::Device::cuda ? "in its GPU's memory" : "in host memory");
  out += fmt::format("    {:<38} {:>12}\n", "parameters (fp32 master)", mib(p.param_bytes));
  out += fmt::format("    {:<38} {:>12}\n", "gradients (fp32)", mib(p.grad_bytes));
  out += fmt::format("    {:<38} {:>12}\n", "optimizer (AdamW moments, fp32)", mib(p.optimizer_bytes));
  if (p.compute_weight_bytes)
    out += fmt::format("    {:<38} {:>12}\n", "compute weights", mib(p.compute_weight_bytes));
  const int64_t fixed = p.param_bytes + p.grad_bytes + p.optimizer_bytes + p.compute_weight_bytes;
  for (Recompute r : {Recompute::none, Recompute::selective, Recompute::full}) {
    const int64_t a = p.activation_bytes[static_cast<int>(r)];
    out += fmt::format("    {:<38} {:>12}   total {:>12}{}\n",
                       fmt::format("activations, checkpointing {}", r), mib(a),
                       mib(fixed + a), r == p.chosen ? "   <- chosen" : "");
  }
  if (ep > 1) {
    const int c = static_cast<int>(p.chosen);
    out += fmt::format("  expert rows assume balanced routing; if every token of the expert group chose this "
                       "rank's experts, activations under {} would need {} (the buffers grow when routing "
                       "is skewed)\n",
                       p.chosen, mib(p.activation_bytes_worst[c]));
  }
  out += fmt::format("  train.activation_checkpointing = {}{}\n", cfg.train.activation_checkpointing,
                     p.why.empty() ? "" : "; " + p.why);
  return out;
}

int run_plan(const PlanOptions& opts) {
  const core::ExperimentConfig cfg = core::load_experiment_config(opts.config_path, opts.overrides);
  const int world = opts.ranks > 0 ? opts.ranks : static_cast<int>(cfg.parallel.expert_parallel);
  if (world % cfg.parallel.expert_parallel != 0)
    throw_usage("plan --ranks {}: must be a multiple of parallel.expert_parallel = {}", world,
                cfg.parallel.expert_parallel);
  fmt::print("{}", format_plan(cfg, plan(cfg), world));
  return 0;
}

}  // namespace switchyard::launch
