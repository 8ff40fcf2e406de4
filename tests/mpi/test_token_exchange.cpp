// tests/mpi/test_token_exchange.cpp: the token exchange under mpirun (2 and 4 ranks).
//  - flat, hierarchical and auto give bit-identical dispatch, combine and backward results, on every
//    layout (2 x 2 simulated nodes, 4 x 1, one node, groups inside and across nodes), for random,
//    skewed (all tokens to one rank) and sparse routing (ranks that send or receive nothing);
//  - what arrives, and where (canonical order: sources by local index, then node), equals what an
//    independent rebuild of every source's routing predicts;
//  - dispatch then combine is the identity, for values and for gradients.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "parallel/exchange_detail.h"
#include "parallel/mpi_communicator.h"
#include "tests/mpi/exchange_testing.h"

namespace switchyard::test {
namespace {

TEST(TokenExchange, FlatHierarchicalAutoBitIdentical) {
  auto world = parallel::MpiCommunicator::world();
  for (const Layout& layout : layouts_for(world->size())) {
    parallel::ProcessGroups groups(*world, {layout.expert_parallel, layout.ranks_per_node});
    auto flat = parallel::make_token_exchange(kFlat, groups.exchange_groups(), host_backend());
    auto hier = parallel::make_token_exchange(kHier, groups.exchange_groups(), host_backend());
    auto autox = parallel::make_token_exchange(kAuto, groups.exchange_groups(), host_backend());
    for (const RoutingCase& rc : kRoutings) {
      SCOPED_TRACE(layout.name() + " " + pattern_name(rc.pattern) + " K=" + std::to_string(rc.K));
      const Routing r = make_routing(rc.pattern, rc.seed, world->rank(), layout.expert_parallel, kExpertsPerRank, rc.K);
      const Pass a = run_pass(*flat, r, world->rank(), groups.expert_rank(), kColumns);
      const Pass b = run_pass(*hier, r, world->rank(), groups.expert_rank(), kColumns);
      const Pass c = run_pass(*autox, r, world->rank(), groups.expert_rank(), kColumns);
      EXPECT_EQ(a.plan->algorithm, kFlat);
      EXPECT_EQ(b.plan->algorithm, kHier);
      for (const Pass* p : {&b, &c}) {
        EXPECT_EQ(p->plan->recv_counts, a.plan->recv_counts);
        EXPECT_EQ(p->plan->recv_offsets, a.plan->recv_offsets);
        EXPECT_EQ(p->plan->recv_tag, a.plan->recv_tag);
        EXPECT_TRUE(bit_equal(p->plan->recv_gate, a.plan->recv_gate));
        EXPECT_TRUE(bit_equal(p->recv, a.recv)) << "dispatch";
        EXPECT_TRUE(bit_equal(p->out, a.out)) << "combine";
        EXPECT_TRUE(bit_equal(p->dy, a.dy)) << "combine backward: dy";
        EXPECT_TRUE(bit_equal(p->dgate, a.dgate)) << "combine backward: dgate";
        EXPECT_TRUE(bit_equal(p->dx, a.dx)) << "dispatch backward";
      }
      // The choice of auto is the same on every rank of the group.
      int64_t hier_votes = c.plan->algorithm == kHier ? 1 : 0;
      groups.expert().allreduce_sum(&hier_votes, 1);
      EXPECT_TRUE(hier_votes == 0 || hier_votes == groups.expert().size()) << hier_votes;
    }
  }
}

// What each rank receives, rebuilt from every source's routing (pure functions of the source's
// world rank), and the combine / dgate values recomputed on the source.
TEST(TokenExchange, MatchesIndependentReference) {
  auto world = parallel::MpiCommunicator::world();
  for (const Layout& layout : layouts_for(world->size())) {
    parallel::ProcessGroups groups(*world, {layout.expert_parallel, layout.ranks_per_node});
    const int E = layout.expert_parallel, me = groups.expert_rank();
    const int first = groups.expert_group_index() * E;  // world rank of group rank 0
    for (ExchangeAlgorithm alg : {kFlat, kHier}) {
      auto ex = parallel::make_token_exchange(alg, groups.exchange_groups(), host_backend());
      for (const RoutingCase& rc : kRoutings) {
        SCOPED_TRACE(layout.name() + " " + std::string(core::name_of(alg)) + " " + pattern_name(rc.pattern));
        const Routing r = make_routing(rc.pattern, rc.seed, world->rank(), E, kExpertsPerRank, rc.K);
        const Pass p = run_pass(*ex, r, world->rank(), me, kColumns);
        // Receiver side: sources by (local index, node) -- group rank q is on node q / L with local
        // index q % L -- each source's slots to me in its slot order.
        const int L = std::min(E, layout.ranks_per_node);
        std::vector<float> recv, gate;
        std::vector<int32_t> tag;
        std::vector<int64_t> counts(static_cast<size_t>(E), 0), offsets(static_cast<size_t>(E), 0);
        for (int i = 0; i < E; ++i) {
          const int q = (i % (E / L)) * L + i / (E / L);  // i-th source in canonical order
          offsets[q] = static_cast<int64_t>(gate.size());
          const Routing rq = make_routing(rc.pattern, rc.seed, first + q, E, kExpertsPerRank, rc.K);
          for (size_t s = 0; s < rq.token.size(); ++s) {
            if (rq.dest[s] != me) continue;
            counts[q] += 1;
            for (int64_t c = 0; c < kColumns; ++c) recv.push_back(token_value(first + q, rq.token[s], c));
            gate.push_back(rq.gate[s]);
            tag.push_back(rq.tag[s]);
          }
        }
        EXPECT_EQ(p.plan->recv_counts, counts);
        EXPECT_EQ(p.plan->recv_offsets, offsets);
        EXPECT_TRUE(bit_equal(p.recv, recv));
        EXPECT_TRUE(bit_equal(p.plan->recv_gate, gate));
        EXPECT_EQ(p.plan->recv_tag, tag);
        // Source side: out[t] = sum gate * y, dgate = dot(dout, y), y recomputed from x here.
        const int64_t T = r.num_tokens, C = kColumns;
        const std::vector<float> x = token_rows(world->rank(), T, C), dout = token_rows(world->rank(), T, C, 7);
        std::vector<double> out(static_cast<size_t>(T * C), 0.0);
        double worst = 0;
        for (size_t s = 0; s < r.token.size(); ++s) {
          const int64_t t = r.token[s];
          double dot = 0;
          for (int64_t c = 0; c < C; ++c) {
            const double y = expert_value(x[t * C + c], r.tag[s], r.dest[s]);
            out[t * C + c] += r.gate[s] * y;
            dot += dout[t * C + c] * y;
          }
          worst = std::max(worst, std::abs(p.dgate[s] - dot) / std::max(1.0, std::abs(dot)));
        }
        for (size_t i = 0; i < out.size(); ++i)
          worst = std::max(worst, std::abs(p.out[i] - out[i]) / std::max(1.0, std::abs(out[i])));
        EXPECT_LT(worst, 1e-5);
      }
    }
  }
}

// With gates 1/k_t (k_t <= 2 slots per token), combine(dispatch(x)) == x bit for bit, and the
// gradient path (combine backward = dispatch of dout, then dispatch backward) returns dout.
// Tokens without slots come back as 0. With unit gates the result is k_t * x.
TEST(TokenExchange, DispatchThenCombineIsIdentity) {
  auto world = parallel::MpiCommunicator::world();
  for (const Layout& layout : layouts_for(world->size())) {
    parallel::ProcessGroups groups(*world, {layout.expert_parallel, layout.ranks_per_node});
    for (ExchangeAlgorithm alg : {kFlat, kHier, kAuto}) {
      auto ex = parallel::make_token_exchange(alg, groups.exchange_groups(), host_backend());
      for (const RoutingCase& rc : kRoutings) {
        SCOPED_TRACE(layout.name() + " " + std::string(core::name_of(alg)) + " " + pattern_name(rc.pattern));
        Routing r = make_routing(rc.pattern, rc.seed, world->rank(), layout.expert_parallel, kExpertsPerRank, rc.K);
        set_unit_partition_gates(r);
        const int64_t T = r.num_tokens, C = kColumns;
        parallel::RoutedSlots slots = r.slots();
        auto plan = ex->make_plan(slots);
        const std::vector<float> x = token_rows(world->rank(), T, C), dout = token_rows(world->rank(), T, C, 7);
        std::vector<float> recv(static_cast<size_t>(plan->num_recv * C)), out(x.size()), dy(recv.size()),
            dgate(r.token.size()), dx(x.size()), unit(x.size());
        parallel::dispatch_forward(*ex, *plan, x.data(), C, recv.data());
        parallel::combine_forward(*ex, *plan, recv.data(), C, out.data());
        parallel::dispatch_backward(*ex, *plan, recv.data(), C, unit.data());  // gates 1: k_t * x
        parallel::combine_backward(*ex, *plan, dout.data(), recv.data(), C, dy.data(), dgate.data());
        parallel::dispatch_backward(*ex, *plan, dy.data(), C, dx.data());
        std::vector<float> want_x(x.size(), 0.0f), want_dout(x.size(), 0.0f), want_unit(x.size(), 0.0f);
        for (int64_t t = 0; t < T; ++t) {
          if (r.slots_of_token[t] == 0) continue;
          for (int64_t c = 0; c < C; ++c) {
            want_x[t * C + c] = x[t * C + c];
            want_dout[t * C + c] = dout[t * C + c];
            want_unit[t * C + c] = static_cast<float>(r.slots_of_token[t]) * x[t * C + c];
          }
        }
        EXPECT_TRUE(bit_equal(out, want_x)) << "values";
        EXPECT_TRUE(bit_equal(dx, want_dout)) << "gradients";
        EXPECT_TRUE(bit_equal(unit, want_unit)) << "unit gates";
      }
    }
  }
}

// Rows are bytes: any row width works (here 6-byte rows), and every rank may have nothing.
TEST(TokenExchange, ByteRowsAndEmptyRanks) {
  auto world = parallel::MpiCommunicator::world();
  for (const Layout& layout : layouts_for(world->size())) {
    parallel::ProcessGroups groups(*world, {layout.expert_parallel, layout.ranks_per_node});
    const Routing r = make_routing(Pattern::random, 9, world->rank(), layout.expert_parallel, kExpertsPerRank, 2);
    std::vector<uint16_t> x(static_cast<size_t>(r.num_tokens * 3));
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<uint16_t>(world->rank() * 1000 + i);
    std::vector<std::vector<uint16_t>> got;
    for (ExchangeAlgorithm alg : {kFlat, kHier}) {
      auto ex = parallel::make_token_exchange(alg, groups.exchange_groups(), host_backend());
      auto plan = ex->make_plan(r.slots());
      got.emplace_back(static_cast<size_t>(plan->num_recv * 3));
      ex->dispatch(*plan, x.data(), 6, got.back().data());
      // Nobody sends anything.
      const Routing none;
      auto empty = ex->make_plan(none.slots());
      EXPECT_EQ(empty->num_recv, 0);
      std::vector<float> out;
      ex->combine(*empty, nullptr, kColumns, out.data(), true);
    }
    EXPECT_EQ(got[0], got[1]) << layout.name();
  }
}

// The summation routine splits columns over threads: same bits for any thread count.
TEST(TokenExchange, SumIndependentOfThreadCount) {
  const int64_t n = 300, C = 1100, rows = 40;
  const std::vector<float> src = token_rows(0, n, C);
  std::vector<int64_t> dst_index(n), src_index(n);
  std::vector<float> w(n);
  for (int64_t i = 0; i < n; ++i) {
    dst_index[i] = (i * 7) % rows;
    src_index[i] = n - 1 - i;
    w[i] = 0.1f + 0.003f * static_cast<float>(i);
  }
  std::vector<std::vector<float>> got;
  for (int threads : {1, 3}) {
    omp_set_num_threads(threads);
    got.emplace_back(static_cast<size_t>(rows * C), 0.5f);
    std::vector<uint8_t> first = parallel::detail::first_occurrence(dst_index);
    host_backend().scatter_add_rows(got.back().data(), dst_index.data(), src.data(), src_index.data(), w.data(),
                                    first.data(), n, C);
  }
  omp_set_num_threads(1);
  EXPECT_TRUE(bit_equal(got[0], got[1]));
}

TEST(TokenExchange, UsageErrors) {
  EXPECT_THROW(parallel::parse_exchange_algorithm("ring"), Error);
  try {
    parallel::parse_exchange_algorithm("ring");
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage);
    EXPECT_NE(std::string(e.what()).find("parallel.token_exchange"), std::string::npos) << e.what();
  }
  EXPECT_EQ(parallel::parse_exchange_algorithm("auto"), kAuto);
  auto world = parallel::MpiCommunicator::world();
  if (world->size() < 3) GTEST_SKIP() << "an irregular layout needs 3 ranks or more";
  // Nodes holding 3 and 1 ranks of the group: hierarchical refuses, auto runs flat.
  parallel::Topology topo = parallel::simulated_topology(world->size(), 1, "test");
  for (int r = 0; r < world->size(); ++r) topo.node_of[r] = r < 3 ? 0 : 1;
  std::vector<int> members;
  for (int r = 0; r < world->size(); ++r) members.push_back(r);
  parallel::ExchangeGroups g{world.get(), world.get(), world.get(), parallel::group_topology(topo, members)};
  EXPECT_FALSE(g.topology.regular);
  try {
    parallel::make_token_exchange(kHier, g, host_backend());
    ADD_FAILURE() << "hierarchical on an irregular layout";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage);
    EXPECT_NE(std::string(e.what()).find("parallel.token_exchange"), std::string::npos) << e.what();
  }
  auto ex = parallel::make_token_exchange(kAuto, g, host_backend());
  const Routing r = make_routing(Pattern::random, 11, world->rank(), world->size(), kExpertsPerRank, 2);
  EXPECT_EQ(ex->make_plan(r.slots())->algorithm, kFlat);
}

}  // namespace
}  // namespace switchyard::test
