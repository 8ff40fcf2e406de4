// tests/mpi/routing.h: deterministic routings and token values for the MPI token-exchange tests.
// Everything is a pure function of (pattern, seed, world rank, ...), so any rank can rebuild what
// any other rank sends and check what it received without further communication.
#pragma once

#include <cstdint>
#include <vector>

#include "parallel/token_exchange.h"

namespace switchyard::test {

enum class Pattern {
  random,  // top-K distinct experts per token, uniform, 1 in 8 slots dropped
  skewed,  // every token to experts 0..K-1 (all on group rank 0): all traffic to one rank
  sparse,  // odd world ranks have no tokens; the last group rank owns no chosen expert
};
const char* pattern_name(Pattern p);

struct Routing {
  int64_t num_tokens = 0;
  std::vector<int32_t> token, dest, tag;  // slots sorted by (expert, token): dest-sorted
  std::vector<float> gate;
  std::vector<int> slots_of_token;  // [T] routed slots per token
  parallel::RoutedSlots slots() const;
};

// E ranks per expert group, experts_per_rank experts each, K slots per token.
Routing make_routing(Pattern pattern, uint64_t seed, int world_rank, int E, int experts_per_rank, int K);
// Gates 1/k_t (k_t <= 2: exact in float), so combine(dispatch(x)) == x exactly.
void set_unit_partition_gates(Routing& r);

// Token value of (world rank, token, column): a multiple of 1/512 in [-2, 2], exact everywhere.
float token_value(int world_rank, int64_t token, int64_t c, uint64_t salt = 0);
// x[T, C] of a rank.
std::vector<float> token_rows(int world_rank, int64_t T, int64_t C, uint64_t salt = 0);
// The "expert output" the tests compute on the receiving rank from a received row.
inline float expert_value(float x, int32_t tag, int dest) { return x * 0.75f + static_cast<float>(tag) * 0.125f + static_cast<float>(dest); }

}  // namespace switchyard::test
