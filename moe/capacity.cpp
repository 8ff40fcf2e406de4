// moe/capacity.cpp: expert capacity and the drop rule (see moe/capacity.h).
#include "moe/capacity.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <numeric>

#include "core/error.h"

namespace switchyard::moe {

CapacityRule capacity_rule(const core::MoeConfig& moe) {
  return {moe.router.capacity_factor, moe.router.min_capacity, moe.router.drop_policy, moe.router.importance};
}

int64_t expert_capacity(const CapacityRule& rule, int64_t tokens, int64_t K, int64_t E) {
  const double c = std::ceil(rule.factor * static_cast<double>(tokens) * static_cast<double>(K) / static_cast<double>(E));
  return std::max(rule.min, static_cast<int64_t>(c));
}

void slot_importance(float* out, const float* probs, const int32_t* idx, int64_t N, int64_t E, int64_t K,
                     core::ImportanceScore score) {
  std::vector<float> row(static_cast<size_t>(E));
  for (int64_t t = 0; t < N; ++t) {
    const float* p = probs + t * E;
    if (score == core::ImportanceScore::gate) {
      for (int64_t k = 0; k < K; ++k) {
        const int32_t e = idx[t * K + k];
        out[t * K + k] = e >= 0 ? p[e] : 0.f;
      }
      continue;
    }
    float margin = 0.f;  // top-1 minus the (K+1)-th score
    std::copy(p, p + E, row.begin());
    const float top = *std::max_element(row.begin(), row.end());
    if (K < E) {
      std::nth_element(row.begin(), row.begin() + K, row.end(), std::greater<float>());
      margin = top - row[static_cast<size_t>(K)];
    } else {
      margin = top;
    }
    for (int64_t k = 0; k < K; ++k) out[t * K + k] = margin;
  }
}

int64_t drop_over_capacity(int32_t* idx, const float* importance, int64_t S, int64_t E, int64_t cap,
                           core::DropPolicy policy) {
  int64_t dropped = 0;
  if (policy == core::DropPolicy::position) {
    std::vector<int64_t> taken(static_cast<size_t>(E), 0);
    for (int64_t s = 0; s < S; ++s) {
      if (idx[s] < 0) continue;
      if (taken[static_cast<size_t>(idx[s])]++ >= cap) {
        idx[s] = -1;
        ++dropped;
      }
    }
    return dropped;
  }
  // importance: per expert, its slots by (importance descending, slot ascending); keep cap
  std::vector<int64_t> start(static_cast<size_t>(E + 1), 0);
  for (int64_t s = 0; s < S; ++s)
    if (idx[s] >= 0) ++start[static_cast<size_t>(idx[s]) + 1];
  std::partial_sum(start.begin(), start.end(), start.begin());
  std::vector<int64_t> by_expert(static_cast<size_t>(start[static_cast<size_t>(E)]));
  std::vector<int64_t> cursor(start.begin(), start.end() - 1);
  for (int64_t s = 0; s < S; ++s)  // slot order inside each expert: the tie-break
    if (idx[s] >= 0) by_expert[static_cast<size_t>(cursor[static_cast<size_t>(idx[s])]++)] = s;
  for (int64_t e = 0; e < E; ++e) {
    const auto first = by_expert.begin() + start[static_cast<size_t>(e)];
    const auto last = by_expert.begin() + start[static_cast<size_t>(e) + 1];
    if (last - first <= cap) continue;
    std::stable_sort(first, last, [&](int64_t a, int64_t b) { return importance[a] > importance[b]; });
    for (auto it = first + cap; it != last; ++it) {
      idx[*it] = -1;
      ++dropped;
    }
  }
  return dropped;
}

CapacityResult apply_capacity(const CapacityRule& rule, int32_t* idx, const float* probs, int64_t N, int64_t E,
                              int64_t K, parallel::Communicator* group) {
  SY_CHECK(rule.enabled(), "apply_capacity without a capacity factor");
  const int64_t NK = N * K;
  std::vector<float> imp(static_cast<size_t>(NK));
  if (rule.policy == core::DropPolicy::importance) slot_importance(imp.data(), probs, idx, N, E, K, rule.importance);
  CapacityResult r;
  if (group == nullptr || group->size() == 1) {
    r.capacity = expert_capacity(rule, N, K, E);
    r.dropped = drop_over_capacity(idx, imp.data(), NK, E, r.capacity, rule.policy);
    return r;
  }
  // the group's slots, in group-rank order: each packed as (expert << 32) | importance bits
  parallel::Communicator& host = group->host();
  const int P = host.size(), me = host.rank();
  std::vector<int64_t> tokens(static_cast<size_t>(P));
  host.allgather(&N, tokens.data(), 1);
  const int64_t most = *std::max_element(tokens.begin(), tokens.end()) * K;
  std::vector<int64_t> mine(static_cast<size_t>(most), static_cast<int64_t>(uint64_t{0xffffffffu} << 32));
  for (int64_t s = 0; s < NK; ++s)
    mine[static_cast<size_t>(s)] = static_cast<int64_t>((static_cast<uint64_t>(static_cast<uint32_t>(idx[s])) << 32) |
                                                        std::bit_cast<uint32_t>(imp[static_cast<size_t>(s)]));
  std::vector<int64_t> all(static_cast<size_t>(most * P));
  host.allgather(mine.data(), all.data(), most);
  const int64_t T = std::accumulate(tokens.begin(), tokens.end(), int64_t{0});
  std::vector<int32_t> gidx(static_cast<size_t>(T * K));
  std::vector<float> gimp(gidx.size());
  int64_t g = 0, my_first = 0;
  for (int q = 0; q < P; ++q) {
    if (q == me) my_first = g;
    for (int64_t s = 0; s < tokens[static_cast<size_t>(q)] * K; ++s, ++g) {
      const auto v = static_cast<uint64_t>(all[static_cast<size_t>(q * most + s)]);
      gidx[static_cast<size_t>(g)] = static_cast<int32_t>(static_cast<uint32_t>(v >> 32));
      gimp[static_cast<size_t>(g)] = std::bit_cast<float>(static_cast<uint32_t>(v));
    }
  }
  r.capacity = expert_capacity(rule, T, K, E);
  drop_over_capacity(gidx.data(), gimp.data(), T * K, E, r.capacity, rule.policy);
  for (int64_t s = 0; s < NK; ++s) {
    if (idx[s] >= 0 && gidx[static_cast<size_t>(my_first + s)] < 0) ++r.dropped;
    idx[s] = gidx[static_cast<size_t>(my_first + s)];
  }
  return r;
}

}  // namespace switchyard::moe
