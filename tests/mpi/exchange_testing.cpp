// tests/mpi/exchange_testing.cpp: helpers of the token-exchange tests.
#include "tests/mpi/exchange_testing.h"

#include <fmt/format.h>

#include <cstring>

namespace switchyard::test {

std::string Layout::name() const { return fmt::format("E={} ranks_per_node={}", expert_parallel, ranks_per_node); }

std::vector<Layout> layouts_for(int world_size) {
  if (world_size == 4) return {{4, 2}, {4, 1}, {4, 4}, {2, 1}, {2, 2}};
  if (world_size == 2) return {{2, 1}, {2, 2}};
  return {{world_size, 1}};
}

Pass run_pass(parallel::TokenExchange& ex, const Routing& r, int world_rank, int group_rank, int64_t C) {
  Pass p;
  const int64_t T = r.num_tokens;
  parallel::RoutedSlots slots = r.slots();
  slots.row_bytes = C * static_cast<int64_t>(sizeof(float));
  p.plan = ex.make_plan(slots);
  const int64_t R = p.plan->num_recv;
  const std::vector<float> x = token_rows(world_rank, T, C);
  p.recv.assign(static_cast<size_t>(R * C), -1.0f);
  p.dispatch = parallel::dispatch_forward(ex, *p.plan, x.data(), C, p.recv.data());
  p.y.resize(p.recv.size());
  for (int64_t i = 0; i < R; ++i)
    for (int64_t c = 0; c < C; ++c)
      p.y[i * C + c] = expert_value(p.recv[i * C + c], p.plan->recv_tag[i], group_rank);
  p.out.assign(static_cast<size_t>(T * C), -1.0f);
  p.combine = parallel::combine_forward(ex, *p.plan, p.y.data(), C, p.out.data());
  const std::vector<float> dout = token_rows(world_rank, T, C, /*salt=*/7);
  p.dy.assign(static_cast<size_t>(R * C), -1.0f);
  p.dgate.assign(r.token.size(), -1.0f);
  p.combine_bwd = parallel::combine_backward(ex, *p.plan, dout.data(), p.y.data(), C, p.dy.data(), p.dgate.data());
  p.dx.assign(static_cast<size_t>(T * C), -1.0f);
  p.dispatch_bwd = parallel::dispatch_backward(ex, *p.plan, p.dy.data(), C, p.dx.data());
  return p;
}

core::Backend& test_backend() {
  static const std::unique_ptr<core::Backend> be = core::make_cpu_backend(0);  // OpenMP's thread count
  return *be;
}

::testing::AssertionResult bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "sizes " << a.size() << " vs " << b.size();
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0)
      return ::testing::AssertionFailure() << "first difference at " << i << ": " << a[i] << " vs " << b[i];
  }
  return ::testing::AssertionSuccess();
}

}  // namespace switchyard::test
