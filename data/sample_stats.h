// data/sample_stats.h: what the run has learned about each sample (data.sample: document), and
// the draw and loss weights that hard-example mining and noise weighting derive from it.
//
// Memory per sample: 10 bytes of statistics (what checkpoints keep), 5 of scores (draw weight,
// flags), and 9 in each of the two DrawWeights a run holds (~33 bytes: 10 million samples in
// 330 MB). The statistics, fp16 values: visits (uint16, saturating), the loss of the first visit,
// an EMA of the loss, an EMA of the excess loss (the sample's mean token loss minus the median
// sample loss of the step that visited it: what is left once the model's progress as a whole is
// taken out) and an EMA of the excess's change per visit (the slope: < 0 while the model is still
// learning the sample). EMA factor data.stats_ema per visit; the first visit sets each value.
//
// Scores, after min_visits visits (data.noise / data.mining):
//   noisy: excess > noise.threshold and slope > -noise.max_slope (high and flat: not learnable);
//          drawn with weight noise.sample_weight, its loss weighted noise.loss_weight;
//   hard:  excess > mining.threshold and slope <= 0, not noisy (high and still falling);
//          drawn with weight min(mining.max_weight, 1 + mining.strength * excess).
// Noise flags start after noise.warmup_steps, hard weights after mining.warmup_steps.
//
// Every rank applies the same updates in the same order (the trainer gathers every rank's sample
// losses first), so every rank holds the same table; checkpoints save it (save/load below).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"

namespace switchyard::data {

// One visit: a sample's mean token loss in a step.
struct SampleLoss {
  int64_t sample = 0;
  float loss = 0;
  float weight = 1;  // its loss weight in that step
};

struct SampleScore {
  int64_t visits = 0;
  float first = 0, ema = 0, excess = 0, slope = 0;
  bool noisy = false, hard = false;
  float draw_weight = 1, loss_weight = 1;
};

// What a step's draws use: per sample the draw weight's cumulative sum and the noisy flags (empty:
// none). Immutable once built; shared with the prefetch thread; checkpoints keep the one of the
// step before (launch/data_checkpoint.h).
struct DrawWeights {
  std::vector<double> cumulative;  // [S], cumulative[s] = sum of draw weights of samples 0..s
  std::vector<uint8_t> noisy;      // [S]
  float noisy_loss_weight = 1;
  int64_t noisy_count = 0, hard_count = 0;
  float min_weight = 1, max_weight = 1;  // over every sample's draw weight
};

class SampleStats {
 public:
  SampleStats(int64_t samples, const core::DataConfig& cfg);

  int64_t size() const { return static_cast<int64_t>(visits_.size()); }
  // One step's visits, in the same order on every rank. Returns the median
  // sample loss of the step (the excess is measured from it).
  double update(const std::vector<SampleLoss>& visits);
  SampleScore score(int64_t s, int64_t step) const;
  // The weights of draws from this table once it holds `step` steps (steps do not go back); base:
  // the blend's weight of each sample (empty: 1 each). Null when every sample weighs the same and
  // none is noisy (uniform draws). Cost: one pass of prefix sums; the scores themselves are kept
  // per sample and redone only for the samples update() visited (and for all when a warmup ends).
  std::shared_ptr<const DrawWeights> draw_weights(int64_t step, const std::vector<double>& base);

  // The table as a [S, 5] uint16 array (visits, first, ema, excess, slope as fp16 bits), for checkpoints.
  std::vector<uint16_t> to_table() const;
  // Usage error naming `what` when the table does not have S rows.
  void from_table(const std::vector<uint16_t>& table, const std::string& what);

 private:
  bool noise_on(int64_t step) const;
  bool mining_on(int64_t step) const;
  SampleScore score_with(size_t i, bool noise, bool mining) const;
  // Sample i's draw weight and flags under the gates in force (gate_noise_, gate_mining_).
  void rescore(size_t i);
  core::DataConfig cfg_;
  std::vector<uint16_t> visits_, first_, ema_, excess_, slope_;
  // the scores of the gates last applied: draw weight and flags (bit 0 noisy, bit 1 hard) per sample
  std::vector<float> draw_w_;
  std::vector<uint8_t> flags_;
  int64_t noisy_count_ = 0, hard_count_ = 0;
  bool gate_noise_ = false, gate_mining_ = false, scored_ = false;  // scored_: draw_w_ and flags_ are current
  std::shared_ptr<const DrawWeights> base_only_;  // the blend's weights alone (no gate on), built once
};

}  // namespace switchyard::data
