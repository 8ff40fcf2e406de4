// launch/metrics.h: per-step metrics (metrics.jsonl in the run folder) and the live progress line.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

namespace switchyard::launch {

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

// "step 12/300 | loss 3.1234 | lr 1.20e-03 | 4.1k tok/s | ETA 1m02s" on one line: rewritten in
// place on a terminal, printed every `interval` steps otherwise.
class Progress {
 public:
  Progress(int64_t total_steps, int64_t interval);
  void update(int64_t step, double loss, double lr, double tokens_per_s, double seconds_per_step);
  void finish();

 private:
  int64_t total_, interval_;
  bool tty_;
  bool open_line_ = false;
};

std::string format_duration(double seconds);

}  // namespace switchyard::launch
