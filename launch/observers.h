// launch/observers.h: what watches a run besides metrics.jsonl and the progress line (rank 0,
// observe.* in the config): the Prometheus exporter (launch/prometheus.h) and the TensorBoard
// event files (launch/tensorboard.h). Each observer is handed every metrics.jsonl record as it is
// written (launch/metrics.h step_json / eval_json), so the names and values of a run live in one
// place and every view of it shows the same numbers.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/config.h"

namespace switchyard::launch {

class RunObserver {
 public:
  virtual ~RunObserver() = default;
  // The run folder is ready and the next step is start_step + 1 (start_step > 0: a resumed run).
  virtual void start(int64_t start_step) { (void)start_step; }
  virtual void step(const nlohmann::json& record) = 0;  // a step_json record, after metrics.jsonl has it
  virtual void eval(const nlohmann::json& record) = 0;  // an eval_json record
  virtual void close() {}                               // the run ended normally: flush what is kept
};

// Where the observers of a run find it: its config (observe.*, run.name) and its folder.
struct ObservedRun {
  const core::ExperimentConfig& cfg;
  std::filesystem::path dir;
};

// The observers observe.* asks for, made before the run folder is touched (a Prometheus port is
// listening when this returns; files are opened by start()), so that a port in use or a bad path
// is a usage error naming the key before anything is written.
std::vector<std::unique_ptr<RunObserver>> make_observers(const ObservedRun& run);

}  // namespace switchyard::launch
