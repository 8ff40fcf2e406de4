// tests/mpi/test_exchange_device_check.cpp: the token exchange on the device-discipline checker
// (core/device_check_backend.h, parallel/device_check_communicator.h) under mpirun (2 and 4
// ranks). The checker's memory is closed to the host outside the calls it is handed, and its
// kernels and stream-ordered collectives reject host pointers: an exchange that runs clean here
// keeps every kernel argument and payload in device memory and never reads it from the host, as
// the CUDA backend with NCCL needs (counts and slot metadata go through host()).
//  - flat, hierarchical and auto (make_plan, dispatch, combine, combine backward with
//    return_to_slots, dispatch backward) on every layout and routing of the exchange tests give
//    bitwise the plain CPU + MPI results, the same plan and the same traffic;
//  - nothing of the exchange's memory outlives it and its plans;
//  - a communicator outside the backend's memory is a usage error (MPI with a device backend
//    names NCCL).
// The expert-parallel model on the checker: tests/mpi/test_expert_parallel_model.cpp.
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "core/device_check_backend.h"
#include "parallel/device_check_communicator.h"
#include "parallel/mpi_communicator.h"
#include "tests/mpi/exchange_testing.h"
#include "tests/unit/testing.h"

namespace switchyard::test {
namespace {

void expect_same_traffic(const parallel::ExchangeStats& a, const parallel::ExchangeStats& b, const char* what) {
  EXPECT_EQ(a.algorithm, b.algorithm) << what;
  EXPECT_EQ(a.intra_node.messages, b.intra_node.messages) << what;
  EXPECT_EQ(a.intra_node.bytes, b.intra_node.bytes) << what;
  EXPECT_EQ(a.inter_node.messages, b.inter_node.messages) << what;
  EXPECT_EQ(a.inter_node.bytes, b.inter_node.bytes) << what;
}

TEST(ExchangeDeviceCheck, BitIdenticalToHostRun) {
  auto world = parallel::MpiCommunicator::world();
  auto be = core::make_device_check_backend(core::make_cpu_backend(0));
  ASSERT_FALSE(be->host_memory());
  auto checked_world = parallel::make_device_check_communicator(*world, core::device_check_registry(*be));
  const int64_t live_before = be->memory_stats().live_bytes;
  for (const Layout& layout : layouts_for(world->size())) {
    parallel::ProcessGroups plain(*world, {layout.expert_parallel, layout.ranks_per_node});
    parallel::ProcessGroups checked(*checked_world, {layout.expert_parallel, layout.ranks_per_node});
    for (ExchangeAlgorithm alg : {kFlat, kHier, kAuto}) {
      auto host_ex = parallel::make_token_exchange(alg, plain.exchange_groups(), host_backend());
      auto device_ex = parallel::make_token_exchange(alg, checked.exchange_groups(), *be);
      for (const RoutingCase& rc : kRoutings) {
        SCOPED_TRACE(layout.name() + " " + std::string(core::name_of(alg)) + " " + pattern_name(rc.pattern) +
                     " K=" + std::to_string(rc.K));
        const Routing r = make_routing(rc.pattern, rc.seed, world->rank(), layout.expert_parallel, kExpertsPerRank, rc.K);
        const Pass a = run_pass(*host_ex, r, world->rank(), plain.expert_rank(), kColumns);
        const Pass b = run_pass(*device_ex, r, world->rank(), checked.expert_rank(), kColumns);
        EXPECT_EQ(b.plan->algorithm, a.plan->algorithm);
        EXPECT_EQ(b.plan->num_recv, a.plan->num_recv);
        EXPECT_EQ(b.plan->recv_counts, a.plan->recv_counts);
        EXPECT_EQ(b.plan->recv_offsets, a.plan->recv_offsets);
        EXPECT_EQ(b.plan->recv_tag, a.plan->recv_tag);
        EXPECT_TRUE(bit_equal(b.plan->recv_gate, a.plan->recv_gate));
        EXPECT_TRUE(bit_equal(b.recv, a.recv)) << "dispatch";
        EXPECT_TRUE(bit_equal(b.out, a.out)) << "combine";
        EXPECT_TRUE(bit_equal(b.dy, a.dy)) << "combine backward: dy";
        EXPECT_TRUE(bit_equal(b.dgate, a.dgate)) << "combine backward: dgate";
        EXPECT_TRUE(bit_equal(b.dx, a.dx)) << "dispatch backward";
        expect_same_traffic(b.plan->stats, a.plan->stats, "make_plan");
        expect_same_traffic(b.dispatch, a.dispatch, "dispatch");
        expect_same_traffic(b.combine, a.combine, "combine");
        expect_same_traffic(b.combine_bwd, a.combine_bwd, "combine backward");
        expect_same_traffic(b.dispatch_bwd, a.dispatch_bwd, "dispatch backward");
      }
    }
  }
  // Staging buffers went with their exchanges, plan arrays with their plans.
  EXPECT_EQ(be->memory_stats().live_bytes, live_before);
}

TEST(ExchangeDeviceCheck, CommunicatorOutsideTheBackendsMemory) {
  auto world = parallel::MpiCommunicator::world();
  auto be = core::make_device_check_backend(core::make_cpu_backend(1));
  const int E = world->size();
  {  // an MPI communicator (host memory) with a device backend: needs NCCL
    parallel::ProcessGroups groups(*world, {E, 1});
    for (ExchangeAlgorithm alg : {kFlat, kHier, kAuto}) {
      const std::string msg = usage_error([&] { parallel::make_token_exchange(alg, groups.exchange_groups(), *be); });
      EXPECT_HAS(msg, "NCCL");
      EXPECT_HAS(msg, "device memory");
    }
  }
  {  // a device communicator with the CPU backend (host memory)
    auto checked_world = parallel::make_device_check_communicator(*world, core::device_check_registry(*be));
    parallel::ProcessGroups groups(*checked_world, {E, 1});
    const std::string msg =
        usage_error([&] { parallel::make_token_exchange(kFlat, groups.exchange_groups(), host_backend()); });
    EXPECT_HAS(msg, "host memory");
  }
}

}  // namespace
}  // namespace switchyard::test
