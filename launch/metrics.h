// launch/metrics.h: what one training step measured (StepRecord), its metrics.jsonl record and the
// eval record (the run folder's metrics), and the live progress line.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "parallel/token_exchange.h"

namespace switchyard::launch {

struct EvalResult;  // launch/evaluate.h

// Memory measured after the first step of a run (activations: one micro-batch), MiB; the backend's
// peak is StepRecord::memory_peak_mb.
struct StepMemory {
  double activations = 0;      // the peak minus what the model and optimizer hold
  double activations_plan = 0; // what `switchyard plan` estimated
  double rss_peak = 0;         // peak resident memory of the process
};

// What the data layer did in a step (data.sample: document), over every rank.
struct StepData {
  int64_t samples = 0;          // samples trained on (visits)
  double effective_samples = 0; // (sum of loss weights)^2 / sum of squared loss weights
  double noisy_drawn = 0;       // share of the step's samples flagged noisy when drawn
  double noisy_share = 0;       // share of all samples flagged noisy (the weights the draws used)
  double hard_share = 0;        // share of all samples flagged hard
  double weight_min = 1, weight_max = 1;  // draw weights over all samples
  double median_loss = 0;       // the median sample loss (the excess loss is measured from it)
  double padding = 0;           // share of positions with no target (this rank)
};

// One optimizer step (launch/train_step.h). Losses are means over the micro-batches of every
// rank; timings, traffic and memory are this rank's.
struct StepRecord {
  int64_t step = 0;  // 1-based
  double loss = 0, ce = 0, aux = 0, z = 0;
  double tokens = 0;        // summed over the window and the ranks
  int nonfinite_ranks = 0;  // ranks whose loss was inf/NaN
  double lr = 0;
  double grad_norm = 0;     // unscaled, before clipping
  bool loss_scaling = false;  // fp16: the next three fields are reported
  double loss_scale = 1;      // the scale this step ran with
  bool skipped = false;       // overflow: the optimizer did not step
  int64_t skipped_steps = 0;  // of the run so far
  double seconds = 0, forward_s = 0, backward_s = 0, reduce_s = 0, optimizer_s = 0, expert_s = 0;
  parallel::ExchangeStats exchange;    // the token exchange of the window (its seconds included)
  int64_t n_experts = 0;
  std::vector<int64_t> expert_counts;  // [MoE layer * n_experts + expert]: routed slots, all ranks
  std::vector<int64_t> dropped;        // [MoE layer]: slots dropped over capacity, all ranks
  int64_t routed_tokens = 0;           // tokens each MoE layer routed, all ranks
  std::vector<std::array<double, 2>> expert_decay;  // dynamic expert decay: per MoE layer [min, max] multiplier
  std::vector<std::array<double, 2>> selection_bias;  // per MoE layer [min, max] after the step (bias on)
  std::optional<StepMemory> memory;    // the first step of a run only
  double data_wait_s = 0;              // time the step waited for its micro-batches (prefetch: ~0)
  std::optional<StepData> data;        // data.sample: document only
  double mfu = 0;                      // model FLOPs utilisation (launch/peak.h); 0: unknown
  double memory_mb = 0;                // backend memory in use at the end of the step (MiB)
  double memory_peak_mb = 0;           // its peak since the start of the run (MiB)
  double time = 0;                     // the end of the step, seconds since the Unix epoch

  double tokens_per_s() const { return tokens / seconds; }
};

// The metrics.jsonl record of a step. Per MoE layer (launch/balance_metrics.h): expert_load (each
// expert's counts as a fraction of the layer's total), busiest30_share, max_over_mean, load_cv,
// mean_k, dropped_fraction; with them on, expert_decay and selection_bias ([min, max]); data_wait_ms;
// in document mode a "data" object (StepData's fields); mfu (when known), memory_mb, memory_peak_mb
// (every step), time.
nlohmann::json step_json(const StepRecord& r);
// The metrics.jsonl record of an evaluation after `step` steps.
nlohmann::json eval_json(int64_t step, const EvalResult& e);

// Appends one JSON object per line; flushed after every record so a killed run keeps its metrics.
class MetricsWriter {
 public:
  explicit MetricsWriter(const std::string& path);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  // Appends one line and flushes it; a failed write (disk full) is a usage Error naming the file.
  void write(const nlohmann::json& record);

 private:
  std::FILE* f_ = nullptr;
  std::string path_;
};

// "step 12/300 | loss 3.1234 | lr 1.20e-03 | 4.1k tok/s | ETA 1m02s" on one line, then " | " and
// `balance` when not empty (balance_summary): rewritten in place on a terminal, printed every
// `interval` steps otherwise.
class Progress {
 public:
  Progress(int64_t total_steps, int64_t interval);
  void update(int64_t step, double loss, double lr, double tokens_per_s, double seconds_per_step,
              std::string_view balance = {});
  void finish();

 private:
  int64_t total_, interval_;
  bool tty_;
  bool open_line_ = false;
};

std::string format_duration(double seconds);

}  // namespace switchyard::launch
