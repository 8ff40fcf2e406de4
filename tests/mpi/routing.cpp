// tests/mpi/routing.cpp: deterministic routings for the token-exchange tests.
#include "tests/mpi/routing.h"

#include <algorithm>
#include <array>
#include <tuple>

#include "core/params.h"

namespace switchyard::test {
namespace {

uint64_t mix(uint64_t x) {  // splitmix64 finaliser
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t hash(uint64_t a, uint64_t b, uint64_t c = 0, uint64_t d = 0) {
  return mix(mix(mix(mix(a) ^ b) ^ c) ^ d);
}

}  // namespace

const char* pattern_name(Pattern p) {
  switch (p) {
    case Pattern::random: return "random";
    case Pattern::skewed: return "skewed";
    case Pattern::sparse: return "sparse";
  }
  return "?";
}

parallel::RoutedSlots Routing::slots() const {
  parallel::RoutedSlots s;
  s.num_tokens = num_tokens;
  s.token = token;
  s.dest = dest;
  s.gate = gate;
  s.tag = tag;
  return s;
}

Routing make_routing(Pattern pattern, uint64_t seed, int world_rank, int E, int experts_per_rank, int K) {
  Routing r;
  const int X = E * experts_per_rank;
  const int usable = pattern == Pattern::sparse ? X - experts_per_rank : X;  // last rank: none
  r.num_tokens = 5 + static_cast<int64_t>(hash(seed, world_rank, 1) % 60);
  if (pattern == Pattern::sparse && world_rank % 2 == 1) r.num_tokens = 0;
  struct Slot {
    int expert;
    int32_t token;
    float gate;
  };
  std::vector<Slot> slots;
  for (int64_t t = 0; t < r.num_tokens; ++t) {
    std::vector<int> chosen;
    for (int k = 0; k < K; ++k) {
      int e = k;
      if (pattern != Pattern::skewed) {
        e = static_cast<int>(hash(seed, world_rank, t, 100 + k) % static_cast<uint64_t>(usable));
        while (std::find(chosen.begin(), chosen.end(), e) != chosen.end()) e = (e + 1) % usable;
      }
      chosen.push_back(e);
      const bool dropped = pattern == Pattern::random && hash(seed, world_rank, t, 200 + k) % 8 == 0;
      const float gate = 0.05f + static_cast<float>(hash(seed, world_rank, t, 300 + k) % 1000) / 1052.0f;
      if (!dropped) slots.push_back(Slot{e, static_cast<int32_t>(t), gate});
    }
  }
  std::sort(slots.begin(), slots.end(),
            [](const Slot& a, const Slot& b) { return std::tie(a.expert, a.token) < std::tie(b.expert, b.token); });
  r.slots_of_token.assign(static_cast<size_t>(r.num_tokens), 0);
  core::ModelConfig model;  // only the expert count matters to the ownership rule
  model.moe.n_experts = X;
  for (const Slot& s : slots) {
    const core::ExpertOwner owner = core::expert_owner(model, s.expert, E);
    r.token.push_back(s.token);
    r.dest.push_back(owner.rank);
    r.tag.push_back(owner.local);
    r.gate.push_back(s.gate);
    r.slots_of_token[s.token] += 1;
  }
  return r;
}

void set_unit_partition_gates(Routing& r) {
  for (size_t s = 0; s < r.token.size(); ++s) r.gate[s] = 1.0f / static_cast<float>(r.slots_of_token[r.token[s]]);
}

float token_value(int world_rank, int64_t token, int64_t c, uint64_t salt) {
  const auto h = hash(salt, world_rank, static_cast<uint64_t>(token), static_cast<uint64_t>(c));
  return static_cast<float>(static_cast<int64_t>(h % 2049) - 1024) / 512.0f;
}

std::vector<float> token_rows(int world_rank, int64_t T, int64_t C, uint64_t salt) {
  std::vector<float> x(static_cast<size_t>(T * C));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < C; ++c) x[t * C + c] = token_value(world_rank, t, c, salt);
  return x;
}

}  // namespace switchyard::test
