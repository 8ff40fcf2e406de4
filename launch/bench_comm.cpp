// launch/bench_comm.cpp: the suite's scenarios over several ranks (mpirun): the MoE token exchange,
// flat and hierarchical, and the gradient all-reduce of a model's arena, each against the raw
// communicator call moving the same bytes (Communicator::alltoallv / allreduce_sum: MPI itself,
// no counts exchange, no packing, no sums). Times are the median over iterations of the slowest
// rank (a barrier before each); the rate is the bytes this rank sends per second.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <vector>

#include "core/params.h"
#include "launch/bench_suite.h"
#include "launch/param_sharding.h"
#include "parallel/process_groups.h"
#include "parallel/token_exchange.h"

namespace switchyard::launch {

namespace {

// Median over iterations of the slowest rank's seconds for fn() (two warm-up iterations).
template <class Fn>
double slowest_median(BenchSuite& s, int iters, Fn&& fn) {
  std::vector<double> t;
  for (int i = 0; i < iters + 2; ++i) {
    s.world().barrier();
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
    s.world().allreduce_max(&ns, 1);
    if (i >= 2) t.push_back(static_cast<double>(ns) * 1e-9);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Two nodes of N/2 ranks where N allows it (the hierarchical exchange has something to save),
// else one rank per node.
int64_t simulated_ranks_per_node(int N) { return N >= 4 && N % 2 == 0 ? N / 2 : 1; }

void exchange_row(BenchSuite& s, core::ExchangeAlgorithm algorithm) {
  core::Backend& be = s.backend();
  const int N = s.world().size(), me = s.world().rank();
  const int64_t T = s.quick() ? 512 : 2048, C = s.quick() ? 128 : 512, K = 2;
  core::ModelConfig model;
  model.moe.n_experts = 2 * N;
  model.moe.top_k = K;
  parallel::ProcessGroups groups(s.world(), {N, simulated_ranks_per_node(N)});
  auto ex = parallel::make_token_exchange(algorithm, groups.exchange_groups(), be);

  // every token to K distinct random experts, slots sorted by destination rank
  std::mt19937_64 rng(1000003ull * static_cast<uint64_t>(me) + 1);
  struct Slot { int32_t dest, token, tag; };
  std::vector<Slot> slots;
  std::vector<int64_t> experts(static_cast<size_t>(model.moe.n_experts));
  for (int64_t t = 0; t < T; ++t) {
    for (size_t e = 0; e < experts.size(); ++e) experts[e] = static_cast<int64_t>(e);
    std::shuffle(experts.begin(), experts.end(), rng);
    for (int64_t k = 0; k < K; ++k) {
      const core::ExpertOwner o = core::expert_owner(model, experts[k], N);
      slots.push_back({o.rank, static_cast<int32_t>(t), o.local});
    }
  }
  std::stable_sort(slots.begin(), slots.end(), [](const Slot& a, const Slot& b) { return a.dest < b.dest; });
  std::vector<int32_t> token, dest, tag;
  std::vector<float> gate(slots.size(), 0.5f);
  for (const Slot& sl : slots) {
    token.push_back(sl.token);
    dest.push_back(sl.dest);
    tag.push_back(sl.tag);
  }
  const parallel::RoutedSlots routed{T, token, dest, gate, tag, C * 4};
  core::Arena x(be, T * C), out(be, T * C);
  x.zero();
  std::unique_ptr<parallel::ExchangePlan> plan = ex->make_plan(routed);
  core::Arena recv(be, std::max<int64_t>(plan->num_recv, 1) * C);
  const int iters = s.quick() ? 5 : 20;
  const double sec = slowest_median(s, iters, [&] {
    plan = ex->make_plan(routed);
    parallel::dispatch_forward(*ex, *plan, x.data(), C, recv.data());
    parallel::combine_forward(*ex, *plan, recv.data(), C, out.data());
  });

  // raw: the same per-slot rows there and back, one alltoallv each way
  std::vector<int64_t> send_counts(N, 0), send_displs(N, 0), recv_counts(N, 0), recv_displs(N, 0);
  for (const Slot& sl : slots) send_counts[sl.dest] += C * 4;
  s.world().alltoall(send_counts.data(), recv_counts.data(), 1);
  for (int r = 1; r < N; ++r) {
    send_displs[r] = send_displs[r - 1] + send_counts[r - 1];
    recv_displs[r] = recv_displs[r - 1] + recv_counts[r - 1];
  }
  const int64_t send_bytes = send_displs[N - 1] + send_counts[N - 1], recv_bytes = recv_displs[N - 1] + recv_counts[N - 1];
  std::vector<char> a(static_cast<size_t>(std::max(send_bytes, recv_bytes))), b(a.size());
  const double raw = slowest_median(s, iters, [&] {
    s.world().alltoallv(a.data(), send_counts, send_displs, b.data(), recv_counts, recv_displs);
    s.world().alltoallv(b.data(), recv_counts, recv_displs, a.data(), send_counts, send_displs);
  });
  const double bytes = 2.0 * static_cast<double>(send_bytes);
  const bool flat = algorithm == core::ExchangeAlgorithm::flat;
  s.add({flat ? "exchange_flat" : "exchange_hierarchical",
         fmt::format("{} tok x{} fp32 top-{}, {} ranks ({}/node)", T, C, K, N, simulated_ranks_per_node(N)), sec,
         bytes / sec / 1e9, "GB/s", bytes / raw / 1e9, "raw MPI alltoallv of the same rows, both ways",
         "plan + dispatch + combine; rows sent per slot both ways"});
}

}  // namespace

void bench_exchange_flat(BenchSuite& s) { exchange_row(s, core::ExchangeAlgorithm::flat); }
void bench_exchange_hierarchical(BenchSuite& s) { exchange_row(s, core::ExchangeAlgorithm::hierarchical); }

// The gradient arena of the default model (core::ModelConfig: the tiny config's shape) summed over
// the world by the trainer's bucketed reducer, against one allreduce_sum of the whole arena.
void bench_allreduce(BenchSuite& s) {
  core::ModelConfig model;
  const core::ParamTable table = core::make_param_table(model);
  parallel::ProcessGroups groups(s.world(), {1, 0});
  GradientReducer reducer(table, groups, static_cast<int>(model.n_layers));
  const int64_t n = table.total();
  std::vector<float> grads(static_cast<size_t>(n), 1e-3f), raw_buf(grads);
  const int iters = s.quick() ? 5 : 20;
  const double sec = slowest_median(s, iters, [&] { reducer.reduce(grads.data()); });
  const double raw = slowest_median(s, iters, [&] { s.world().allreduce_sum(raw_buf.data(), n); });
  const double bytes = 4.0 * static_cast<double>(n);
  s.add({"allreduce", fmt::format("{:.1f}M fp32 over {} ranks", static_cast<double>(n) / 1e6, s.world().size()), sec,
         bytes / sec / 1e9, "GB/s", bytes / raw / 1e9, "raw MPI allreduce of the same floats", "GradientReducer::reduce"});
}

}  // namespace switchyard::launch
