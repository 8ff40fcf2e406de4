// tests/mpi/exchange_testing.h: helpers of the token-exchange tests: the three algorithms, the
// layouts to try for a world size, one full forward/backward pass through an exchange, bitwise
// comparison.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "parallel/process_groups.h"
#include "parallel/token_exchange.h"
#include "tests/mpi/routing.h"

namespace switchyard::test {

struct Layout {
  int expert_parallel;  // E
  int ranks_per_node;   // simulated node size
  std::string name() const;
};
// Every (E, ranks_per_node) worth testing with N ranks: 2 x 2 nodes, 4 x 1, 1 x 4, groups inside
// and across nodes.
std::vector<Layout> layouts_for(int world_size);

// The routings every exchange test runs: random, skewed and sparse, top-1 and top-2.
struct RoutingCase {
  Pattern pattern;
  int K;
  uint64_t seed;
};
extern const std::vector<RoutingCase> kRoutings;

// Everything one exchange produced for one routing on this rank (read back to the host).
struct Pass {
  std::unique_ptr<parallel::ExchangePlan> plan;
  std::vector<float> recv, y, out, dy, dgate, dx;
  parallel::ExchangeStats dispatch, combine, combine_bwd, dispatch_bwd;
};
// make_plan, dispatch_forward(x), y = expert_value(recv), combine_forward(y),
// combine_backward(dout), dispatch_backward(dy). C columns; world_rank picks x and dout. Every row
// buffer is in the exchange's backend memory (inputs copied there, outputs read back), so the
// same pass runs on the CPU backend and on the device-discipline checker.
Pass run_pass(parallel::TokenExchange& ex, const Routing& r, int world_rank, int group_rank, int64_t C);

// The CPU backend whose kernels the exchanges of these tests pack and sum with (one per process).
core::Backend& host_backend();

::testing::AssertionResult bit_equal(const std::vector<float>& a, const std::vector<float>& b);

using parallel::ExchangeAlgorithm;
constexpr ExchangeAlgorithm kFlat = ExchangeAlgorithm::flat;
constexpr ExchangeAlgorithm kHier = ExchangeAlgorithm::hierarchical;
constexpr ExchangeAlgorithm kAuto = ExchangeAlgorithm::automatic;

constexpr int kExpertsPerRank = 2;
constexpr int64_t kColumns = 6;

}  // namespace switchyard::test
