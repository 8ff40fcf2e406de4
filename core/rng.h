// core/rng.h: counter-based random numbers. A value is a pure function of (key, counter), so
// initialisation, sampling, recomputation and resume reproduce the same numbers on any thread
// count or parallel layout (DESIGN decision 10).
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>

namespace switchyard::core {

// splitmix64 finaliser: a bijective 64-bit mix.
constexpr uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// A key from several integers (seed, step, micro-batch, layer, rank, ...).
constexpr uint64_t rng_key(uint64_t a, uint64_t b = 0, uint64_t c = 0, uint64_t d = 0) {
  return mix64(mix64(mix64(mix64(a) ^ b) ^ c) ^ d);
}

// A stable 64-bit key of a name (FNV-1a), the same on every platform and run.
constexpr uint64_t name_key(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001b3ULL;
  return h;
}

// Uniform in [0, 1) with 53 random bits.
inline double rng_uniform(uint64_t key, uint64_t counter) {
  return static_cast<double>(mix64(key ^ mix64(counter)) >> 11) * 0x1.0p-53;
}

// Standard normal (Box-Muller over two uniforms of the same counter).
inline double rng_normal(uint64_t key, uint64_t counter) {
  const double u1 = rng_uniform(key, 2 * counter), u2 = rng_uniform(key, 2 * counter + 1);
  return std::sqrt(-2.0 * std::log1p(-u1)) * std::cos(6.283185307179586 * u2);
}

}  // namespace switchyard::core
