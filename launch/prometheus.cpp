// launch/prometheus.cpp: see prometheus.h. The table and the rendering; the serving and the
// textfile are in prometheus_export.cpp.
#include "launch/prometheus.h"

#include <fmt/format.h>

#include <cmath>

namespace switchyard::launch {

namespace {

using R = PrometheusMetric::Record;
using S = PrometheusMetric::Shape;
constexpr double kMs = 1000;               // ms -> s
constexpr double kMiB = 1.0 / (1 << 20);   // MiB -> bytes (exact: a power of two)

}  // namespace

// The one table. Timings, traffic and memory are rank 0's (launch/metrics.h StepRecord); losses,
// token counts and expert loads are over every rank.
const std::vector<PrometheusMetric>& prometheus_metrics() {
  static const std::vector<PrometheusMetric> table = {
      {R::step, "step", "switchyard_step", "gauge", 1, S::value,
       "The last optimizer step the run finished (1-based, metrics.jsonl's step)."},
      {R::step, "time", "switchyard_last_step_timestamp_seconds", "gauge", 1, S::value,
       "When the last step ended, seconds since the Unix epoch; time() minus it is how long no step finished."},
      {R::step, "loss", "switchyard_loss", "gauge", 1, S::value,
       "Training loss of the last step (cross-entropy plus the weighted aux and z losses), mean over its micro-batches "
       "and ranks; NaN or +Inf when it was not finite."},
      {R::step, "ce", "switchyard_cross_entropy_loss", "gauge", 1, S::value,
       "Cross-entropy part of switchyard_loss."},
      {R::step, "aux_loss", "switchyard_aux_loss", "gauge", 1, S::value,
       "Router load-balancing (aux) loss of the last step."},
      {R::step, "z_loss", "switchyard_z_loss", "gauge", 1, S::value, "Router z-loss of the last step."},
      {R::step, "lr", "switchyard_learning_rate", "gauge", 1, S::value, "Learning rate the last step used."},
      {R::step, "grad_norm", "switchyard_grad_norm", "gauge", 1, S::value,
       "Global gradient norm of the last step, unscaled, before clipping."},
      {R::step, "loss_scale", "switchyard_loss_scale", "gauge", 1, S::value,
       "Dynamic loss scale the last step ran with (fp16 runs only)."},
      {R::step, "skipped", "switchyard_step_skipped", "gauge", 1, S::value,
       "1 when the last step overflowed and the optimizer skipped it, else 0 (fp16 runs only)."},
      {R::step, "skipped_steps", "switchyard_skipped_steps_total", "counter", 1, S::value,
       "Steps skipped for overflow in the run so far (fp16 runs only)."},
      {R::step, "tokens_per_s", "switchyard_tokens_per_second", "gauge", 1, S::value,
       "Throughput of the last step: the tokens of every rank over the step's wall time."},
      {R::step, "mfu", "switchyard_mfu_ratio", "gauge", 1, S::value,
       "Model FLOPs utilisation of the last step against the per-rank peak (observe.peak_tflops, or a GEMM measured "
       "at start)."},
      {R::step, "step_ms", "switchyard_step_seconds", "gauge", kMs, S::value, "Wall time of the last step (rank 0)."},
      {R::step, "forward_ms", "switchyard_forward_seconds", "gauge", kMs, S::value,
       "Time of the last step in forward passes (rank 0)."},
      {R::step, "backward_ms", "switchyard_backward_seconds", "gauge", kMs, S::value,
       "Time of the last step in backward passes (rank 0)."},
      {R::step, "optimizer_ms", "switchyard_optimizer_seconds", "gauge", kMs, S::value,
       "Time of the last step in the optimizer (rank 0)."},
      {R::step, "exchange_ms", "switchyard_exchange_seconds", "gauge", kMs, S::value,
       "Time of the last step in the expert-parallel token exchange (rank 0)."},
      {R::step, "reduce_ms", "switchyard_reduce_seconds", "gauge", kMs, S::value,
       "Time of the last step in the gradient reduction between ranks (rank 0)."},
      {R::step, "data_wait_ms", "switchyard_data_wait_seconds", "gauge", kMs, S::value,
       "Time the last step waited for its micro-batches (rank 0; about 0 with data.prefetch)."},
      {R::step, "expert_ms", "switchyard_expert_seconds", "gauge", kMs, S::value,
       "Time of the last step in the expert FFNs (rank 0)."},
      {R::step, "exchange_bytes_intra", "switchyard_exchange_intra_node_bytes", "gauge", 1, S::value,
       "Bytes rank 0 sent to ranks of its own node in the token exchange of the last step."},
      {R::step, "exchange_bytes_inter", "switchyard_exchange_inter_node_bytes", "gauge", 1, S::value,
       "Bytes rank 0 sent to ranks of other nodes in the token exchange of the last step."},
      {R::step, "exchange_messages_inter", "switchyard_exchange_inter_node_messages", "gauge", 1, S::value,
       "Messages rank 0 sent to ranks of other nodes in the token exchange of the last step."},
      {R::step, "memory_mb", "switchyard_memory_bytes", "gauge", kMiB, S::value,
       "Backend memory rank 0 held at the end of the last step."},
      {R::step, "memory_peak_mb", "switchyard_memory_peak_bytes", "gauge", kMiB, S::value,
       "Peak backend memory of rank 0 since the run started."},
      {R::step, "expert_load", "switchyard_expert_load", "gauge", 1, S::per_expert,
       "Share of a MoE layer's routed token slots each expert got in the last step (all ranks)."},
      {R::step, "busiest30_share", "switchyard_expert_busiest30_share", "gauge", 1, S::per_layer,
       "Share of a MoE layer's routed slots that its busiest 30% of experts got in the last step (E experts "
       "uniformly loaded: ceil(0.3 E) / E)."},
      {R::step, "max_over_mean", "switchyard_expert_max_over_mean", "gauge", 1, S::per_layer,
       "Load of a MoE layer's busiest expert over the mean expert load in the last step (uniform: 1)."},
      {R::step, "load_cv", "switchyard_expert_load_cv", "gauge", 1, S::per_layer,
       "Coefficient of variation of a MoE layer's expert loads in the last step (uniform: 0)."},
      {R::step, "dropped_fraction", "switchyard_expert_dropped_fraction", "gauge", 1, S::per_layer,
       "Fraction of a MoE layer's routed slots dropped over expert capacity in the last step."},
      {R::step, "mean_k", "switchyard_experts_per_token", "gauge", 1, S::per_layer,
       "Mean number of experts a token of a MoE layer went to in the last step."},
      {R::step, "selection_bias", "switchyard_selection_bias", "gauge", 1, S::per_layer_range,
       "Smallest and largest aux-loss-free selection bias of a MoE layer after the last step (balance.bias_rate > 0)."},
      {R::step, "expert_decay", "switchyard_expert_decay_multiplier", "gauge", 1, S::per_layer_range,
       "Smallest and largest dynamic expert weight-decay multiplier of a MoE layer in the last step."},
      {R::step, "data.samples", "switchyard_data_samples", "gauge", 1, S::value,
       "Samples the last step trained on, all ranks (data.sample: document)."},
      {R::step, "data.effective_samples", "switchyard_data_effective_samples", "gauge", 1, S::value,
       "Effective sample count of the last step: (sum of loss weights)^2 / sum of squared loss weights."},
      {R::step, "data.noisy_drawn", "switchyard_data_noisy_drawn_share", "gauge", 1, S::value,
       "Share of the last step's samples that were flagged noisy when drawn."},
      {R::step, "data.noisy_share", "switchyard_data_noisy_share", "gauge", 1, S::value,
       "Share of all samples flagged noisy."},
      {R::step, "data.hard_share", "switchyard_data_hard_share", "gauge", 1, S::value,
       "Share of all samples flagged hard."},
      {R::step, "data.weight_min", "switchyard_data_weight_min", "gauge", 1, S::value,
       "Smallest draw weight over all samples."},
      {R::step, "data.weight_max", "switchyard_data_weight_max", "gauge", 1, S::value,
       "Largest draw weight over all samples."},
      {R::step, "data.median_loss", "switchyard_data_median_loss", "gauge", 1, S::value,
       "Median sample loss (excess losses are measured from it)."},
      {R::step, "data.padding", "switchyard_data_padding_share", "gauge", 1, S::value,
       "Share of the last step's positions without a target (rank 0)."},
      {R::eval, "step", "switchyard_eval_step", "gauge", 1, S::value,
       "The step after which the last evaluation ran."},
      {R::eval, "eval_loss", "switchyard_eval_loss", "gauge", 1, S::value,
       "Mean token loss of the last evaluation on the validation data; NaN or +Inf when it was not finite."},
      {R::eval, "eval_tokens", "switchyard_eval_tokens", "gauge", 1, S::value,
       "Tokens the last evaluation scored."},
  };
  return table;
}

std::string prometheus_label_value(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string prometheus_help_text(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string prometheus_number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);  // the shortest text that reads back as v
}

std::string prometheus_marker(std::string_view run) {
  return fmt::format("{}{}", kPrometheusMarker, prometheus_label_value(run));
}

namespace {

// The value of `key` in `record` ("a.b": key b of the object a), or null.
const nlohmann::json* lookup(const nlohmann::json& record, std::string_view key) {
  const nlohmann::json* at = &record;
  while (true) {
    const size_t dot = key.find('.');
    if (!at->is_object()) return nullptr;
    const auto it = at->find(std::string(key.substr(0, dot)));
    if (it == at->end()) return nullptr;
    if (dot == std::string_view::npos) return &*it;
    at = &*it;
    key.remove_prefix(dot + 1);
  }
}

// A sample value from a record's number or bool; empty for anything else (null: not exported).
std::string sample_value(const nlohmann::json& v, double divisor) {
  if (v.is_boolean()) return v.get<bool>() ? "1" : "0";
  if (v.is_number_integer() && divisor == 1) return v.dump();  // exact, however large
  if (v.is_number()) return prometheus_number(v.get<double>() / divisor);
  return {};
}

// The samples of one row: "name{labels} value" lines.
void render_samples(const PrometheusMetric& m, const nlohmann::json& v, const std::string& run_label,
                    std::string& out) {
  const auto line = [&](const std::string& labels, const nlohmann::json& x) {
    const std::string value = sample_value(x, m.divisor);
    if (!value.empty()) out += fmt::format("{}{{{}{}}} {}\n", m.name, run_label, labels, value);
  };
  if (m.shape == S::value) return line("", v);
  if (!v.is_array()) return;
  for (size_t l = 0; l < v.size(); ++l) {
    const nlohmann::json& layer = v[l];
    switch (m.shape) {
      case S::per_layer:
        line(fmt::format(",layer=\"{}\"", l), layer);
        break;
      case S::per_expert:
        if (layer.is_array())
          for (size_t e = 0; e < layer.size(); ++e) line(fmt::format(",layer=\"{}\",expert=\"{}\"", l, e), layer[e]);
        break;
      case S::per_layer_range:
        if (layer.is_array() && layer.size() == 2) {
          line(fmt::format(",layer=\"{}\",bound=\"min\"", l), layer[0]);
          line(fmt::format(",layer=\"{}\",bound=\"max\"", l), layer[1]);
        }
        break;
      case S::value:
        break;
    }
  }
}

void render_family(std::string_view name, std::string_view type, std::string_view help, const std::string& samples,
                   std::string& out) {
  if (samples.empty()) return;  // a family without samples (no MoE layers) is left out
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, prometheus_help_text(help), name, type);
  out += samples;
}

}  // namespace

std::string prometheus_text(std::string_view run, const nlohmann::json* step, const nlohmann::json* eval,
                            bool finished) {
  const std::string run_label = fmt::format("run=\"{}\"", prometheus_label_value(run));
  std::string out = prometheus_marker(run) + "\n";
  for (const PrometheusMetric& m : prometheus_metrics()) {
    const nlohmann::json* record = m.record == R::step ? step : eval;
    const nlohmann::json* v = record ? lookup(*record, m.key) : nullptr;
    if (!v) continue;
    std::string samples;
    render_samples(m, *v, run_label, samples);
    render_family(m.name, m.type, m.help, samples, out);
  }
  // not from a record: what lets an alert tell a finished run from a stalled one (the textfile stays)
  render_family("switchyard_run_finished", "gauge",
                "1 once the run ended normally (its last textfile stays), else 0.",
                fmt::format("switchyard_run_finished{{{}}} {}\n", run_label, finished ? 1 : 0), out);
  return out;
}

}  // namespace switchyard::launch
