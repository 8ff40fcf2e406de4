#include "data/batcher.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "data/sampler.h"

namespace switchyard::data {

namespace {

constexpr uint64_t kPermuteDomain = 0x7065726dull;  // "perm"
constexpr uint64_t kDrawDomain = 0x64726177ull;     // "draw"

uint64_t round_key(uint64_t key, int round) { return splitmix64_at(key, static_cast<uint64_t>(round)); }

}  // namespace

int64_t permute_index(int64_t i, int64_t n, uint64_t key) {
  SY_CHECK(n >= 1 && i >= 0 && i < n, "permute {} of {}", i, n);
  if (n == 1) return 0;
  int bits = 2;
  while ((int64_t{1} << bits) < n) bits += 2;
  const int half = bits / 2;
  const uint64_t mask = (uint64_t{1} << half) - 1;
  uint64_t x = static_cast<uint64_t>(i);
  do {  // cycle walking: the bijection of [0, 2^bits) restricted to [0, n)
    uint64_t left = x >> half, right = x & mask;
    for (int r = 0; r < 4; ++r) {
      const uint64_t f = splitmix64_at(round_key(key, r), right) & mask;
      const uint64_t next = left ^ f;
      left = right;
      right = next;
    }
    x = (left << half) | right;
  } while (x >= static_cast<uint64_t>(n));
  return static_cast<int64_t>(x);
}

std::vector<SampleLoss> sample_losses(const MicroBatch& mb, const std::vector<float>& token_losses) {
  SY_CHECK(static_cast<int64_t>(token_losses.size()) == mb.B * mb.T, "{} losses for {}x{}", token_losses.size(), mb.B,
           mb.T);
  std::vector<SampleLoss> out;
  out.reserve(mb.samples.size());
  for (const auto& p : mb.samples) {
    double sum = 0;
    const size_t at = static_cast<size_t>(p.row * mb.T + p.offset);
    for (int32_t t = 0; t < p.positions; ++t) sum += token_losses[at + static_cast<size_t>(t)];
    out.push_back({p.sample, static_cast<float>(sum / std::max<int32_t>(p.positions, 1)), p.loss_weight});
  }
  return out;
}

double MicroBatch::weight_sum() const {
  double sum = 0;
  for (size_t i = 0; i < targets.size(); ++i)
    if (targets[i] >= 0) sum += weights.empty() ? 1.0 : weights[i];
  return sum;
}

DocumentBatcher::DocumentBatcher(const SampleIndex& index, const std::vector<const TokenSource*>& sources,
                                 int64_t vocab_size, uint64_t seed, int rank, int world, bool packing)
    : index_(index), sources_(sources), vocab_size_(vocab_size), seed_(seed), rank_(rank), world_(world),
      packing_(packing) {
  SY_CHECK(world >= 1 && rank >= 0 && rank < world, "rank {} of world {}", rank, world);
  SY_CHECK(static_cast<int>(sources.size()) == index.sources(), "{} sources for an index of {}", sources.size(),
           index.sources());
}

int64_t DocumentBatcher::sample_of_draw(int64_t g, const DrawWeights* w) const {
  const int64_t S = index_.size();
  const int64_t round = g / S;
  const uint64_t key = splitmix64_at(seed_ ^ kPermuteDomain, static_cast<uint64_t>(round));
  const int64_t slot = permute_index(g % S, S, key);
  if (!w) return slot;
  // systematic sampling: the round's S draws take the points (slot + offset) / S of the weights'
  // cumulative distribution, in the permuted order; under equal weights exactly the permutation
  SY_CHECK(static_cast<int64_t>(w->cumulative.size()) == S, "{} weights for {} samples", w->cumulative.size(), S);
  const double offset = static_cast<double>(splitmix64_at(key ^ kDrawDomain, 0) >> 11) * 0x1.0p-53;
  const double u = (static_cast<double>(slot) + offset) / static_cast<double>(S) * w->cumulative.back();
  const auto it = std::upper_bound(w->cumulative.begin(), w->cumulative.end(), u);
  return std::min<int64_t>(it - w->cumulative.begin(), S - 1);
}

int64_t DocumentBatcher::draw(const DrawWeights* w) {
  const int64_t g = state_.drawn++ * world_ + rank_;
  return sample_of_draw(g, w);
}

void DocumentBatcher::place(MicroBatch& mb, int64_t sample, int row, int offset, const DrawWeights* w) const {
  const SampleSpan sp = index_.span(sample);
  const int64_t n = sp.length, T = mb.T;
  std::vector<int32_t> tok(static_cast<size_t>(n));
  read_checked(*sources_[static_cast<size_t>(sp.source)], sp.begin, n, vocab_size_, tok.data());
  const bool noisy = w && !w->noisy.empty() && w->noisy[static_cast<size_t>(sample)];
  const float lw = noisy ? w->noisy_loss_weight : 1.f;
  const int64_t at = row * T + offset;
  for (int64_t t = 0; t + 1 < n; ++t) {
    mb.tokens[static_cast<size_t>(at + t)] = tok[static_cast<size_t>(t)];
    mb.targets[static_cast<size_t>(at + t)] = tok[static_cast<size_t>(t + 1)];
    mb.weights[static_cast<size_t>(at + t)] = lw;
    if (packing_) mb.doc_start[static_cast<size_t>(at + t)] = offset;
  }
  mb.samples.push_back({sample, row, offset, static_cast<int32_t>(n - 1), lw});
}

MicroBatch DocumentBatcher::next(int64_t B, const DrawWeights* w) {
  const int64_t T = index_.seq_len();
  MicroBatch mb;
  mb.B = B;
  mb.T = T;
  mb.tokens.assign(static_cast<size_t>(B * T), 0);
  mb.targets.assign(mb.tokens.size(), -1);
  mb.weights.assign(mb.tokens.size(), 0.f);
  if (!packing_) {
    for (int64_t r = 0; r < B; ++r) place(mb, draw(w), static_cast<int>(r), 0, w);
    return mb;
  }
  mb.doc_start.resize(mb.tokens.size());
  for (int64_t i = 0; i < B * T; ++i) mb.doc_start[static_cast<size_t>(i)] = static_cast<int32_t>(i % T);  // padding
  auto positions = [&](int64_t s) { return index_.span(s).length - 1; };
  int64_t pooled = 0;
  for (int64_t s : state_.pool) pooled += positions(s);
  while (pooled < 2 * B * T) {
    const int64_t s = draw(w);
    state_.pool.push_back(s);
    pooled += positions(s);
  }
  std::vector<size_t> order(state_.pool.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::vector<int64_t> len(order.size());
  for (size_t i = 0; i < order.size(); ++i) len[i] = positions(state_.pool[i]);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return len[a] > len[b]; });
  std::vector<int64_t> used(static_cast<size_t>(B), 0);
  std::vector<char> placed(order.size(), 0);
  for (size_t i : order) {
    int best = -1;
    for (int64_t r = 0; r < B; ++r)
      if (used[static_cast<size_t>(r)] + len[i] <= T &&
          (best < 0 || used[static_cast<size_t>(r)] > used[static_cast<size_t>(best)]))
        best = static_cast<int>(r);
    if (best < 0) continue;
    place(mb, state_.pool[i], best, static_cast<int>(used[static_cast<size_t>(best)]), w);
    used[static_cast<size_t>(best)] += len[i];
    placed[i] = 1;
  }
  std::vector<int64_t> rest;
  for (size_t i = 0; i < state_.pool.size(); ++i)
    if (!placed[i]) rest.push_back(state_.pool[i]);
  state_.pool = std::move(rest);
  return mb;
}

}  // namespace switchyard::data
