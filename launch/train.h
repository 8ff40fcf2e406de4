// launch/train.h: the training command. The trainer owns the step schedule (DESIGN decision 7):
// for each optimizer step, micro-batches of the accumulation window run forward and backward
// (gradients accumulate), then gradients are reduced over the data-parallel ranks once, clipped,
// and AdamW steps with the scheduled learning rate.
#pragma once

#include <string>
#include <vector>

#include "parallel/mpi_context.h"

namespace switchyard::launch {

struct TrainOptions {
  std::string config_path;
  std::vector<std::string> overrides;  // --set a.b=value
  std::string init_from;               // Hugging Face folder with initial weights (optional)
  std::string run_dir;                 // overrides run.dir / runs/<run.name>
  bool resume = false;                 // --resume given
  std::string resume_from;             // its value: a checkpoint folder or root; empty: checkpoint.dir
  bool overwrite = false;              // --overwrite: start afresh in a folder holding an earlier run
};

// Returns the process exit code (0 on success); throws switchyard::Error on bad input.
int run_train(const TrainOptions& opts, const parallel::MpiContext& mpi);

}  // namespace switchyard::launch
