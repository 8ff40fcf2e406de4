// data/train_data.h: the training data of one rank: its sources (a file or a blend), the sample
// unit (data.sample), the per-sample statistics, and the prefetch thread.
//
// Steps are taken in order. take(s) returns step s's micro-batches; with data.prefetch it then
// starts a thread preparing step s+1 (drawing, reading, packing) while step s computes, so the
// step waits only when the reader does not keep up (StepBatches::wait_s says how long).
//
// Determinism. Window mode: data/sampler.h (a blend picks each window's source first, by its
// weight, from splitmix64 of (seed, g)). Document mode: data/batcher.h. Mining and noise weights
// follow the statistics with a fixed lag, whatever data.prefetch says: step s draws with the
// weights of the table that holds steps 1 .. s-1 (its first draws, with none). So a run is the
// same with and without prefetch, and a resumed run draws what the uninterrupted one did: the
// checkpoint holds the table after step s and after step s-1, and each rank's draw state.
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/config.h"
#include "data/batcher.h"
#include "data/sample_stats.h"
#include "data/sampler.h"
#include "data/samples.h"
#include "data/token_source.h"

namespace switchyard::data {

struct StepBatches {
  int64_t step = -1;  // 0-based
  std::vector<MicroBatch> micro;
  DrawState state_after;                       // this rank's draw state once these were drawn
  std::shared_ptr<const DrawWeights> weights;  // what the draws used (null: uniform)
  double prepare_s = 0;                        // time spent drawing and reading them
  double wait_s = 0;                           // time take() waited for them
};

// What a checkpoint keeps of the data (document mode; window mode keeps nothing).
struct DataState {
  int64_t steps = 0;                  // steps recorded
  std::vector<uint16_t> table;        // SampleStats::to_table after `steps` steps
  std::shared_ptr<const DrawWeights> lagged;  // the draw weights of the table after steps - 1 (null: uniform)
  std::vector<DrawState> ranks;       // each rank's draw state after `steps` steps
};

class TrainData {
 public:
  // Opens data.train (each source's "train" split). Usage errors for the files (token_source.h),
  // for document mode on a source without documents, and for an empty dataset.
  TrainData(const core::ExperimentConfig& cfg, int rank, int world, int64_t micro_batch);
  ~TrainData();
  TrainData(const TrainData&) = delete;
  TrainData& operator=(const TrainData&) = delete;

  bool documents() const { return documents_; }
  const std::vector<std::unique_ptr<TokenSource>>& sources() const { return sources_; }
  const SampleIndex* index() const { return index_.get(); }
  const SampleStats* stats() const { return stats_.get(); }
  int64_t steps_recorded() const { return steps_; }

  // The micro-batches of step `step` (0-based); steps are taken in order.
  StepBatches take(int64_t step);
  // Document mode, after step `step` (0-based): every rank's visits of the step in rank order
  // (the same list on every rank). Returns the median sample loss.
  double record(const std::vector<SampleLoss>& visits, int64_t step);
  // Waits for a prefetch under way (before reading other files or checkpointing).
  void settle();

  // This rank's part of the checkpoint (ranks: its own state only) and the restore of all of it.
  DataState state() const;
  // Usage error naming `what` when the saved state does not fit this run's data.
  void restore(const DataState& s, const std::string& what);

 private:
  StepBatches build(int64_t step, std::shared_ptr<const DrawWeights> weights);
  core::DataConfig cfg_;
  int rank_, world_;
  int64_t B_, T_, accum_, steps_total_, vocab_;
  uint64_t seed_;
  bool documents_;
  std::vector<std::unique_ptr<TokenSource>> sources_;
  std::vector<double> source_cumulative_;  // window mode blends: cumulative normalised weights
  std::vector<std::unique_ptr<WindowSampler>> windows_;
  std::unique_ptr<SampleIndex> index_;
  std::vector<double> base_;  // document blends: per-sample base weight; else empty
  std::unique_ptr<SampleStats> stats_;
  std::unique_ptr<DocumentBatcher> batcher_;
  int64_t steps_ = 0;
  // the draw weights of the table now (after steps_ steps) and of the one before
  std::shared_ptr<const DrawWeights> weights_now_, weights_lagged_;
  DrawState last_state_;
  std::optional<std::future<StepBatches>> pending_;
  int64_t pending_step_ = -1;
};

}  // namespace switchyard::data
