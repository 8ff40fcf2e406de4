#include "data/sampler.h"

#include <algorithm>
#include <vector>

#include "core/error.h"

namespace switchyard::data {

namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kDataDomain = 0x64617461ull;  // "data": keeps these numbers apart from other streams

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Unbiased enough for n << 2^64: the high word of h * n.
uint64_t scale_to(uint64_t h, uint64_t n) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(h) * n) >> 64);
}

}  // namespace

uint64_t splitmix64_at(uint64_t seed, uint64_t g) { return mix64(seed + (g + 1) * kGolden); }

void read_checked(const TokenSource& source, int64_t begin, int64_t n, int64_t vocab_size, int32_t* out) {
  source.read(begin, n, out);
  for (int64_t i = 0; i < n; ++i) {
    if (out[i] < 0 || out[i] >= vocab_size) {
      throw_usage("{}: token {} at position {} is outside the model's vocabulary [0, {}); check that the data "
                  "was tokenized for this model (model.vocab_size)",
                  source.describe(), out[i], begin + i, vocab_size);
    }
  }
}

TokenWindows::TokenWindows(const TokenSource& source, int64_t seq_len, int64_t vocab_size)
    : source_(source), seq_len_(seq_len), vocab_size_(vocab_size) {
  SY_CHECK(seq_len >= 1, "seq_len {}", seq_len);
  SY_CHECK(vocab_size >= 1, "vocab_size {}", vocab_size);
  if (source.vocab_hint() > vocab_size) {
    throw_usage("{} was made for a vocabulary of {} tokens, larger than model.vocab_size = {}",
                source.describe(), source.vocab_hint(), vocab_size);
  }
}

void TokenWindows::read_window(int64_t begin, std::vector<int32_t>& window, int32_t* tokens,
                               int32_t* targets) const {
  const int64_t T = seq_len_;
  window.resize(static_cast<size_t>(T + 1));
  read_checked(source_, begin, T + 1, vocab_size_, window.data());
  std::copy(window.begin(), window.begin() + T, tokens);
  std::copy(window.begin() + 1, window.end(), targets);
}

WindowSampler::WindowSampler(const TokenSource& source, int64_t seq_len, int64_t vocab_size, uint64_t seed,
                             int rank, int world, int64_t n_micro)
    : TokenWindows(source, seq_len, vocab_size), seed_(seed), rank_(rank), world_(world), n_micro_(n_micro) {
  SY_CHECK(world >= 1 && rank >= 0 && rank < world, "rank {} of world {}", rank, world);
  SY_CHECK(n_micro >= 1, "n_micro {}", n_micro);
  if (source.size() < seq_len + 1) {
    throw_usage("{} has {} tokens, fewer than one training window of train.seq_len + 1 = {}; use more data or "
                "a shorter train.seq_len", source.describe(), source.size(), seq_len + 1);
  }
  n_starts_ = source.size() - seq_len;
}

int64_t WindowSampler::global_index(int64_t step, int64_t micro, int64_t B, int64_t i) const {
  return ((step * n_micro_ + micro) * world_ + rank_) * B + i;
}

int64_t WindowSampler::window_start(int64_t g) const {
  return static_cast<int64_t>(
      scale_to(splitmix64_at(seed_ ^ kDataDomain, static_cast<uint64_t>(g)), static_cast<uint64_t>(n_starts_)));
}

void WindowSampler::read_sample(int64_t g, int32_t* tokens, int32_t* targets) const {
  std::vector<int32_t> window;
  read_window(window_start(g), window, tokens, targets);
}

void WindowSampler::next_batch(int64_t step, int64_t micro, int64_t B, int32_t* tokens, int32_t* targets) const {
  SY_CHECK(step >= 0 && micro >= 0 && micro < n_micro_ && B >= 1, "step {} micro {} of {} B {}", step, micro,
           n_micro_, B);
  const int64_t T = seq_len_;
  std::vector<int32_t> window;
  for (int64_t i = 0; i < B; ++i)
    read_window(window_start(global_index(step, micro, B, i)), window, tokens + i * T, targets + i * T);
}

EvalWindows::EvalWindows(const TokenSource& source, int64_t seq_len, int64_t vocab_size)
    : TokenWindows(source, seq_len, vocab_size) {
  count_ = source.size() / (seq_len + 1);
  if (count_ == 0) {
    throw_usage("{} has {} tokens, fewer than one evaluation window of train.seq_len + 1 = {}; use more "
                "validation data or a shorter train.seq_len", source.describe(), source.size(), seq_len + 1);
  }
}

void EvalWindows::read(int64_t w, int32_t* tokens, int32_t* targets) const {
  SY_CHECK(w >= 0 && w < count_, "eval window {} of {}", w, count_);
  std::vector<int32_t> window;
  read_window(w * (seq_len_ + 1), window, tokens, targets);
}

}  // namespace switchyard::data
