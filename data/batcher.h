// data/batcher.h: micro-batches of samples (data.sample: document), one row per sample or packed.
//
// Draws. Rank r's k-th draw is global draw g = k * world + r, so the ranks' draws never share a
// number. Draws come in rounds of S (the number of samples): draw g is point
// permutation_e(g mod S) of round e = g div S, a keyed bijection of [0, S) per round (a Feistel
// network with cycle walking, keyed by seed and round). Without weights (one source, no
// reweighting yet) that point is the sample: every sample once per round, the ranks' draws
// disjoint. With weights (a blend, mining, noise: data/sample_stats.h) it is systematic
// sampling: point p takes the sample whose cumulative weight interval holds (p + o_e) / S of the
// total (o_e in [0, 1) per round), so in a round a sample of probability q comes floor or ceil of
// S * q times (weights fixed over the round) instead of a Poisson number of times, in permuted
// order; equal weights give exactly the permutation.
//
// Rows. Without packing, each row is one draw: positions [0, n-1) of a sample of n tokens, the
// rest padding (token 0, target -1). With data.packing, draws wait in a pool; each micro-batch
// tops the pool up to twice its B * seq_len positions, then places the pool's samples longest
// first (ties in draw order) into the row with the least room that still fits them (best fit);
// what does not fit stays in the pool, first in line next time. A packed row's samples are
// contiguous from position 0; doc_start marks where each begins (moe::Batch), the tail is padding.
//
// The state (draws taken, the pool) is all that a resumed run needs besides the weights.
#pragma once

#include <cstdint>
#include <vector>

#include "data/sample_stats.h"
#include "data/samples.h"

namespace switchyard::data {

// A micro-batch as the model takes it: host arrays of B*T positions, row-major.
struct MicroBatch {
  int64_t B = 0, T = 0;
  std::vector<int32_t> tokens, targets;  // target -1: padding (no loss)
  std::vector<float> weights;            // loss weight per position; empty: 1 everywhere
  std::vector<int32_t> doc_start;        // packed rows only (moe::Batch::doc_start); else empty
  struct Placed {
    int64_t sample = 0;
    int32_t row = 0, offset = 0, positions = 0;  // positions [offset, offset + positions) of the row
    float loss_weight = 1;
  };
  std::vector<Placed> samples;  // document samples, in placement order; empty for windows
  // Sum of the loss weights of the positions with a target.
  double weight_sum() const;
};

struct DrawState {
  int64_t drawn = 0;          // draws this rank has taken
  std::vector<int64_t> pool;  // packing: samples drawn, not yet placed (draw order)
  bool operator==(const DrawState&) const = default;
};

class DocumentBatcher {
 public:
  // `index` and the sources must outlive the batcher. Tokens are checked against vocab_size when
  // read (a usage error naming the file and position). Internal errors: rank outside [0, world).
  DocumentBatcher(const SampleIndex& index, const std::vector<const TokenSource*>& sources, int64_t vocab_size,
                  uint64_t seed, int rank, int world, bool packing);

  // The next micro-batch of B rows of index.seq_len() positions, drawing under `weights` (null:
  // uniform, the epoch permutation).
  MicroBatch next(int64_t B, const DrawWeights* weights);
  // The sample of draw g (see above).
  int64_t sample_of_draw(int64_t g, const DrawWeights* weights) const;

  const DrawState& state() const { return state_; }
  void set_state(DrawState s) { state_ = std::move(s); }

 private:
  int64_t draw(const DrawWeights* weights);
  void place(MicroBatch& mb, int64_t sample, int row, int offset, const DrawWeights* weights) const;
  const SampleIndex& index_;
  std::vector<const TokenSource*> sources_;
  int64_t vocab_size_;
  uint64_t seed_;
  int rank_, world_;
  bool packing_;
  DrawState state_;
};

// Each placed sample's mean token loss in the micro-batch, given the model's per-position losses
// ([B*T], moe::Model::token_losses()).
std::vector<SampleLoss> sample_losses(const MicroBatch& mb, const std::vector<float>& token_losses);

// A keyed bijection of [0, n) (n >= 1): Feistel rounds on the smallest even bit width holding n,
// cycle walking back into range. Exposed for tests.
int64_t permute_index(int64_t i, int64_t n, uint64_t key);

}  // namespace switchyard::data
