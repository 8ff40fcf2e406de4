// tests/mpi/exchange_testing.cpp: helpers of the token-exchange tests.
#include "tests/mpi/exchange_testing.h"

#include <fmt/format.h>

#include <cstring>

#include "tests/unit/testing.h"

namespace switchyard::test {

const std::vector<RoutingCase> kRoutings = {
    {Pattern::random, 2, 1}, {Pattern::random, 2, 2}, {Pattern::skewed, 2, 3},
    {Pattern::skewed, 1, 4}, {Pattern::sparse, 2, 5}, {Pattern::random, 1, 6},
};

namespace {

using Rows = DeviceCopy<float>;
// n rows' worth of floats, poisoned (-1) so that what a call forgets to write shows.
std::vector<float> poisoned(int64_t n) { return std::vector<float>(static_cast<size_t>(n), -1.0f); }

}  // namespace

std::string Layout::name() const { return fmt::format("E={} ranks_per_node={}", expert_parallel, ranks_per_node); }

std::vector<Layout> layouts_for(int world_size) {
  if (world_size == 4) return {{4, 2}, {4, 1}, {4, 4}, {2, 1}, {2, 2}};
  if (world_size == 2) return {{2, 1}, {2, 2}};
  return {{world_size, 1}};
}

Pass run_pass(parallel::TokenExchange& ex, const Routing& r, int world_rank, int group_rank, int64_t C) {
  core::Backend& be = ex.backend();
  Pass p;
  const int64_t T = r.num_tokens;
  parallel::RoutedSlots slots = r.slots();
  slots.row_bytes = C * static_cast<int64_t>(sizeof(float));
  p.plan = ex.make_plan(slots);
  const int64_t R = p.plan->num_recv;
  Rows x(be, token_rows(world_rank, T, C)), recv(be, poisoned(R * C));
  p.dispatch = parallel::dispatch_forward(ex, *p.plan, x.get(), C, recv.get());
  p.recv = recv.host();
  p.y.resize(p.recv.size());
  for (int64_t i = 0; i < R; ++i)
    for (int64_t c = 0; c < C; ++c)
      p.y[i * C + c] = expert_value(p.recv[i * C + c], p.plan->recv_tag[i], group_rank);
  Rows y(be, p.y), out(be, poisoned(T * C));
  p.combine = parallel::combine_forward(ex, *p.plan, y.get(), C, out.get());
  p.out = out.host();
  Rows dout(be, token_rows(world_rank, T, C, /*salt=*/7)), dy(be, poisoned(R * C)),
      dgate(be, poisoned(static_cast<int64_t>(r.token.size())));
  p.combine_bwd = parallel::combine_backward(ex, *p.plan, dout.get(), y.get(), C, dy.get(), dgate.get());
  p.dy = dy.host();
  p.dgate = dgate.host();
  Rows dx(be, poisoned(T * C));
  p.dispatch_bwd = parallel::dispatch_backward(ex, *p.plan, dy.get(), C, dx.get());
  p.dx = dx.host();
  return p;
}

core::Backend& host_backend() {
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
