// launch/prometheus.h: a run's metrics in the Prometheus text exposition format (version 0.0.4),
// served by rank 0 on observe.prometheus_port (GET /metrics, cpp-httplib on a background thread)
// and/or written after every step to observe.prometheus_textfile for node_exporter's textfile
// collector. Everything comes from the metrics.jsonl records (launch/metrics.h) through one table,
// prometheus_metrics(): record key -> metric name, type, help and unit. Every series carries
// run="<run.name>"; per-MoE-layer series add layer="<MoE layer index>" (as in metrics.jsonl),
// expert_load adds expert="<index>". docs/OBSERVING.md lists the names; configs/prometheus/ holds
// alert rules over them and an example scrape config.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "launch/observers.h"

namespace switchyard::launch {

// One row of the table: where a metric's value is in a record and what it is called.
struct PrometheusMetric {
  enum class Record { step, eval };  // a step_json or an eval_json record
  enum class Shape {
    value,            // one number (a bool: 1 or 0)
    per_layer,        // one number per MoE layer: label layer
    per_expert,       // per MoE layer a list over its experts: labels layer, expert
    per_layer_range,  // per MoE layer [min, max]: labels layer, bound="min"|"max"
  };
  Record record;
  std::string_view key;   // the record's key; "data.samples": key "samples" of the "data" object
  std::string_view name;  // the metric (switchyard_ prefix, base units, _total for counters)
  std::string_view type;  // "gauge" or "counter"
  double divisor;         // exported value = record value / divisor (ms -> s: 1000; MiB -> bytes: 2^-20)
  Shape shape;
  std::string_view help;
};

// The table, in the order the metrics are rendered.
const std::vector<PrometheusMetric>& prometheus_metrics();

// The first line of every rendering and of every textfile Switchyard writes:
// "# switchyard metrics of run NAME" (NAME escaped as a label value). A file whose first line does
// not start with kPrometheusMarker is never overwritten.
inline constexpr std::string_view kPrometheusMarker = "# switchyard metrics of run ";
std::string prometheus_marker(std::string_view run);

// The exposition text of a run: the marker line, then for each table row present in the last step
// record `step` (or the last eval record `eval`; either may be null) its HELP, TYPE and samples,
// then switchyard_run_finished (1 once the run ended normally). Keys absent from the records are
// not exported; NaN and infinities are written NaN, +Inf, -Inf.
std::string prometheus_text(std::string_view run, const nlohmann::json* step, const nlohmann::json* eval,
                            bool finished = false);

// The format's escapes: a label value (\\, \", \n) and a HELP text (\\, \n).
std::string prometheus_label_value(std::string_view s);
std::string prometheus_help_text(std::string_view s);
// A sample value: the shortest text that reads back as the same double; NaN, +Inf, -Inf.
std::string prometheus_number(double v);

// The observer for observe.prometheus_port / observe.prometheus_textfile, or null when both are
// off. Started when it returns: the port is bound (a port in use or an address that is not this
// machine's is a usage error naming observe.prometheus_port / observe.prometheus_address), the
// textfile checked (it must end in .prom, its folder exist, and an existing file be one Switchyard
// wrote, else a usage error naming observe.prometheus_textfile) and written once. Serving stops
// when the run ends (close) or the observer is destroyed.
std::unique_ptr<RunObserver> make_prometheus_observer(const ObservedRun& run);

}  // namespace switchyard::launch
