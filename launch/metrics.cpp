#include "launch/metrics.h"

#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>

#include "core/error.h"
#include "launch/balance_metrics.h"
#include "launch/evaluate.h"

namespace switchyard::launch {

MetricsWriter::MetricsWriter(const std::string& path) : path_(path) {
  f_ = std::fopen(path.c_str(), "a");
  if (!f_) throw_usage("cannot open {} for writing: check that the run folder is writable", path);
}
MetricsWriter::~MetricsWriter() {
  if (f_) std::fclose(f_);
}
void MetricsWriter::write(const nlohmann::json& record) {
  const std::string line = record.dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0)
    throw_usage("{}: cannot write the metrics record of step {} ({}); free disk space, then continue with "
                "`switchyard train --resume`", path_, record.value("step", int64_t{-1}), std::strerror(errno));
}

nlohmann::json step_json(const StepRecord& r) {
  const std::vector<LayerBalance> balance = layer_balances(r.expert_counts, r.n_experts, r.dropped, r.routed_tokens);
  const auto per_layer = [&](auto value) {  // one entry per MoE layer
    nlohmann::json a = nlohmann::json::array();
    for (const LayerBalance& b : balance) a.push_back(value(b));
    return a;
  };
  nlohmann::json rec = {{"step", r.step}, {"loss", r.loss}, {"ce", r.ce}, {"aux_loss", r.aux},
                        {"z_loss", r.z}, {"lr", r.lr}, {"grad_norm", r.grad_norm},
                        {"tokens_per_s", r.tokens_per_s()}, {"step_ms", r.seconds * 1e3},
                        {"forward_ms", r.forward_s * 1e3}, {"backward_ms", r.backward_s * 1e3},
                        {"reduce_ms", r.reduce_s * 1e3}, {"optimizer_ms", r.optimizer_s * 1e3},
                        {"expert_ms", r.expert_s * 1e3}, {"exchange_ms", r.exchange.seconds * 1e3},
                        {"exchange_bytes_intra", r.exchange.intra_node.bytes},
                        {"exchange_bytes_inter", r.exchange.inter_node.bytes},
                        {"exchange_messages_inter", r.exchange.inter_node.messages},
                        {"expert_load", per_layer([](const LayerBalance& b) { return b.share; })}};
  // balance per MoE layer (launch/balance_metrics.h)
  rec["busiest30_share"] = per_layer([](const LayerBalance& b) { return b.busiest30_share; });
  rec["max_over_mean"] = per_layer([](const LayerBalance& b) { return b.max_over_mean; });
  rec["load_cv"] = per_layer([](const LayerBalance& b) { return b.load_cv; });
  rec["mean_k"] = per_layer([](const LayerBalance& b) { return b.mean_k; });
  rec["dropped_fraction"] = per_layer([](const LayerBalance& b) { return b.dropped_fraction; });
  if (!r.selection_bias.empty()) rec["selection_bias"] = r.selection_bias;  // per MoE layer [min, max]
  if (!r.expert_decay.empty()) rec["expert_decay"] = r.expert_decay;  // per MoE layer [min, max] multiplier
  rec["data_wait_ms"] = r.data_wait_s * 1e3;
  if (r.mfu > 0) rec["mfu"] = r.mfu;
  rec["memory_mb"] = r.memory_mb;
  rec["memory_peak_mb"] = r.memory_peak_mb;
  rec["time"] = r.time;
  if (r.data) {
    const StepData& d = *r.data;
    rec["data"] = {{"samples", d.samples},       {"effective_samples", d.effective_samples},
                   {"noisy_drawn", d.noisy_drawn}, {"noisy_share", d.noisy_share},
                   {"hard_share", d.hard_share},   {"weight_min", d.weight_min},
                   {"weight_max", d.weight_max},   {"median_loss", d.median_loss},
                   {"padding", d.padding}};
  }
  if (r.loss_scaling) {
    rec["loss_scale"] = r.loss_scale;
    rec["skipped"] = r.skipped;
    rec["skipped_steps"] = r.skipped_steps;
  }
  if (r.memory) {
    rec["activation_mb"] = r.memory->activations;
    rec["activation_plan_mb"] = r.memory->activations_plan;
    rec["rss_peak_mb"] = r.memory->rss_peak;
  }
  return rec;
}

nlohmann::json eval_json(int64_t step, const EvalResult& e) {
  return {{"step", step}, {"eval_loss", e.loss}, {"eval_tokens", e.tokens}};
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const auto total = static_cast<int64_t>(std::llround(s));
  if (total >= 3600) return fmt::format("{}h{:02d}m", total / 3600, (total / 60) % 60);
  if (total >= 60) return fmt::format("{}m{:02d}s", total / 60, total % 60);
  return fmt::format("{}s", total);
}

namespace {
// A live line only on a real terminal: under mpirun/srun a rank's stdout can be a pseudo-terminal
// while the launcher writes to a log file, so launched ranks print plain lines.
bool interactive_terminal() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_PROCID"})
    if (std::getenv(v)) return false;
  return isatty(STDOUT_FILENO) != 0;
}
}  // namespace

Progress::Progress(int64_t total_steps, int64_t interval)
    : total_(total_steps), interval_(interval > 0 ? interval : 1), tty_(interactive_terminal()) {}

void Progress::update(int64_t step, double loss, double lr, double tokens_per_s, double sec_per_step,
                      std::string_view balance) {
  if (!tty_ && step % interval_ != 0 && step != total_ && step != 1) return;
  const std::string tps = tokens_per_s >= 1000 ? fmt::format("{:.1f}k", tokens_per_s / 1000)
                                               : fmt::format("{:.0f}", tokens_per_s);
  std::string line =
      fmt::format("step {}/{} | loss {:.4f} | lr {:.2e} | {} tok/s | ETA {}", step, total_, loss, lr,
                  tps, format_duration(sec_per_step * static_cast<double>(total_ - step)));
  if (!balance.empty()) line += fmt::format(" | {}", balance);
  if (tty_) {
    fmt::print("\r{:<130}", line);
    open_line_ = true;
  } else {
    fmt::print("{}\n", line);
  }
  std::fflush(stdout);
}

void Progress::finish() {
  if (open_line_) fmt::print("\n");
  open_line_ = false;
  std::fflush(stdout);
}

}  // namespace switchyard::launch
