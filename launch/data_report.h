// launch/data_report.h: `switchyard data-report --checkpoint DIR`: what the per-sample statistics
// of a document-mode run say (data/sample_stats.h): how many samples were seen, flagged noisy or
// hard, the draw weights, and the samples scored most noisy and most hard with a text preview, so a
// user can see what the run filtered. --json FILE writes every sample's statistics and scores.
#pragma once

#include <cstdint>
#include <string>

namespace switchyard::launch {

struct DataReportOptions {
  std::string checkpoint;  // checkpoint folder, checkpoint directory (its `latest`) or run folder
  int64_t top = 10;        // samples listed per kind
  std::string json;        // optional: every sample's statistics to this file
};

// Returns the exit code. Usage errors: not a checkpoint, a run without data.sample: document, the
// run's data files missing (paths as the run's config gives them, relative to the current folder).
int run_data_report(const DataReportOptions& opts);

}  // namespace switchyard::launch
