// data/sampler.h: training windows drawn from a token stream, and evaluation windows.
//
// WindowSampler: each sample is a window of seq_len+1 consecutive tokens at a pseudo-random start
// chosen only by (seed, global sample index g), through the counter-based splitmix64:
//   g     = ((step * n_micro + micro) * world + rank) * B + i      (i: row of the micro-batch)
//   start = multiply_high(splitmix64_at(seed ^ kDataDomain, g), size - seq_len)
// so a resumed run, and a run with another (world, B) split of the same global batch
// n_micro * world * B, sees the same samples. tokens = window[0:T], targets = window[1:T+1].
// Every token read is checked against the model's vocabulary: a token outside [0, vocab_size) is a
// usage error naming the file and the position.
#pragma once

#include <cstdint>
#include <vector>

#include "data/token_source.h"

namespace switchyard::data {

// The g-th output of splitmix64 started at `seed` (state seed + (g+1) * golden gamma, mixed).
uint64_t splitmix64_at(uint64_t seed, uint64_t g);

// What both window readers share: the source, the window length and the vocabulary checks.
class TokenWindows {
 public:
  int64_t seq_len() const { return seq_len_; }
  const TokenSource& source() const { return source_; }

 protected:
  // Internal errors: seq_len, vocab_size < 1. Usage error: the source's recorded vocabulary
  // (vocab_hint) is larger than vocab_size.
  TokenWindows(const TokenSource& source, int64_t seq_len, int64_t vocab_size);
  // The window of seq_len+1 tokens at `begin`, checked: tokens = window[0:T], targets =
  // window[1:T+1]. `window` is the caller's scratch (resized to seq_len+1).
  void read_window(int64_t begin, std::vector<int32_t>& window, int32_t* tokens, int32_t* targets) const;

  const TokenSource& source_;
  int64_t seq_len_;
  int64_t vocab_size_;
};

class WindowSampler : public TokenWindows {
 public:
  // `source` must outlive the sampler. Usage errors: the source has fewer than seq_len+1 tokens,
  // or its recorded vocabulary (vocab_hint) is larger than vocab_size. Internal errors: seq_len,
  // vocab_size, world, n_micro < 1, or rank outside [0, world).
  WindowSampler(const TokenSource& source, int64_t seq_len, int64_t vocab_size, uint64_t seed,
                int rank, int world, int64_t n_micro);

  // Fills tokens[B * seq_len] and targets[B * seq_len] (row-major, row i = sample i).
  void next_batch(int64_t step, int64_t micro, int64_t B, int32_t* tokens, int32_t* targets) const;

  // Global sample index of row i (see the formula above).
  int64_t global_index(int64_t step, int64_t micro, int64_t B, int64_t i) const;
  // First token position of the window of global sample g.
  int64_t window_start(int64_t g) const;
  // The window of global sample g into tokens[seq_len], targets[seq_len].
  void read_sample(int64_t g, int32_t* tokens, int32_t* targets) const;

 private:
  uint64_t seed_;
  int rank_;
  int world_;
  int64_t n_micro_;
  int64_t n_starts_;  // size - seq_len: number of possible window starts
};

// Consecutive non-overlapping windows of seq_len+1 tokens in file order: window w covers
// [w*(seq_len+1), (w+1)*(seq_len+1)); the tail shorter than a window is not used.
class EvalWindows : public TokenWindows {
 public:
  // Usage error when the source is shorter than one window. Tokens are checked against
  // vocab_size on read, as in WindowSampler.
  EvalWindows(const TokenSource& source, int64_t seq_len, int64_t vocab_size);

  int64_t count() const { return count_; }
  // Fills tokens[seq_len] and targets[seq_len] from window w, 0 <= w < count().
  void read(int64_t w, int32_t* tokens, int32_t* targets) const;

 private:
  int64_t count_;
};

// Reads [begin, begin+n) of `source` into out and checks every token is in [0, vocab_size); a
// token outside is a usage error naming the file and position. Shared by the samplers.
void read_checked(const TokenSource& source, int64_t begin, int64_t n, int64_t vocab_size,
                  int32_t* out);

}  // namespace switchyard::data
