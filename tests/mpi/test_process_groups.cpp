// tests/mpi/test_process_groups.cpp: topology and process groups under mpirun (2 and 4 ranks).
// Members of every group are gathered over the group's own communicator and compared with the
// layout written out by hand (Megatron-style: expert groups are consecutive ranks).
#include <gtest/gtest.h>

#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include "core/error.h"
#include "parallel/mpi_communicator.h"
#include "parallel/process_groups.h"

namespace switchyard::test {
namespace {

std::vector<int64_t> members(parallel::Communicator& comm, int world_rank) {
  std::vector<int64_t> out(static_cast<size_t>(comm.size()));
  const int64_t me = world_rank;
  comm.allgather(&me, out.data(), 1);
  return out;
}

std::vector<int64_t> range(int64_t begin, int64_t end, int64_t step = 1) {
  std::vector<int64_t> v;
  for (int64_t i = begin; i < end; i += step) v.push_back(i);
  return v;
}

// The usage error `fn` throws must name `key`.
template <class Fn>
void expect_usage_error(Fn fn, const std::string& key) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one naming " << key;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage) << e.what();
    EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
  }
}

void check_layout(parallel::Communicator& world, int E, int rpn) {
  SCOPED_TRACE("N=" + std::to_string(world.size()) + " E=" + std::to_string(E) + " ranks_per_node=" + std::to_string(rpn));
  const int N = world.size(), r = world.rank();
  parallel::ProcessGroups g(world, {E, rpn});
  EXPECT_EQ(g.topology().num_nodes, N / rpn);
  EXPECT_EQ(g.topology().source, "parallel.ranks_per_node");
  EXPECT_EQ(g.expert_parallel(), E);
  EXPECT_EQ(g.expert_data_parallel(), N / E);
  EXPECT_EQ(g.expert_rank(), r % E);
  EXPECT_EQ(g.expert_group_index(), r / E);
  EXPECT_EQ(members(g.world(), r), range(0, N));
  EXPECT_EQ(members(g.data(), r), range(0, N));
  EXPECT_EQ(members(g.expert(), r), range(r / E * E, (r / E + 1) * E));
  EXPECT_EQ(members(g.expert_data(), r), range(r % E, N, E));
  EXPECT_EQ(members(g.intra_node(), r), range(r / rpn * rpn, (r / rpn + 1) * rpn));
  EXPECT_EQ(members(g.inter_node(), r), range(r % rpn, N, rpn));
  // The exchange's view of the expert group: L = min(E, rpn) ranks on each of E / L nodes.
  const int L = std::min(E, rpn), base = r / E * E, er = r % E;
  parallel::ExchangeGroups x = g.exchange_groups();
  EXPECT_TRUE(x.topology.regular);
  EXPECT_EQ(x.topology.num_nodes, E / L);
  EXPECT_EQ(x.topology.ranks_per_node, L);
  EXPECT_EQ(members(*x.group, r), range(base, base + E));
  EXPECT_EQ(members(*x.intra, r), range(base + er / L * L, base + (er / L + 1) * L));
  EXPECT_EQ(members(*x.inter, r), range(base + er % L, base + E, L));
  EXPECT_EQ(x.intra->rank(), er % L);
  EXPECT_EQ(x.inter->rank(), er / L);
}

TEST(ProcessGroups, MembersOfEveryLayout) {
  auto world = parallel::MpiCommunicator::world();
  const int N = world->size();
  for (int E = 1; E <= N; ++E) {
    if (N % E != 0) continue;
    for (int rpn = 1; rpn <= N; ++rpn)
      if (N % rpn == 0) check_layout(*world, E, rpn);
  }
}

TEST(ProcessGroups, RequiredLayouts) {  // N=4: E=2 and E=4 on 2 x 2 nodes; N=2: E=2
  auto world = parallel::MpiCommunicator::world();
  if (world->size() == 4) {
    check_layout(*world, 2, 2);
    check_layout(*world, 4, 2);
  } else if (world->size() == 2) {
    check_layout(*world, 2, 2);
    check_layout(*world, 2, 1);
  } else {
    GTEST_SKIP() << "written for 2 and 4 ranks";
  }
}

TEST(ProcessGroups, TopologySources) {
  auto world = parallel::MpiCommunicator::world();
  ::unsetenv("SWITCHYARD_RANKS_PER_NODE");
  {
    // Discovery: every rank of this job runs on this machine (mpirun without a host file).
    parallel::Topology t = parallel::discover_topology(*world, 0);
    EXPECT_EQ(t.source, "MPI_COMM_TYPE_SHARED");
    EXPECT_EQ(t.num_nodes, 1);
    EXPECT_EQ(t.node_size, std::vector<int>{world->size()});
    EXPECT_EQ(t.local_of[world->rank()], world->rank());
  }
  ::setenv("SWITCHYARD_RANKS_PER_NODE", "1", 1);
  {
    parallel::Topology t = parallel::discover_topology(*world, 0);
    EXPECT_EQ(t.source, "SWITCHYARD_RANKS_PER_NODE");
    EXPECT_EQ(t.num_nodes, world->size());
    // The config value wins over the environment.
    parallel::Topology c = parallel::discover_topology(*world, world->size());
    EXPECT_EQ(c.source, "parallel.ranks_per_node");
    EXPECT_EQ(c.num_nodes, 1);
  }
  ::setenv("SWITCHYARD_RANKS_PER_NODE", "two", 1);
  expect_usage_error([&] { parallel::discover_topology(*world, 0); }, "SWITCHYARD_RANKS_PER_NODE");
  ::unsetenv("SWITCHYARD_RANKS_PER_NODE");
}

TEST(ProcessGroups, InvalidSizesAreUsageErrors) {
  auto world = parallel::MpiCommunicator::world();
  const int N = world->size();
  for (int64_t E : {int64_t{0}, int64_t{-1}, int64_t{3}, int64_t{2 * N}})
    expect_usage_error([&] { parallel::ProcessGroups g(*world, {E, 1}); }, "parallel.expert_parallel");
  for (int64_t rpn : {int64_t{3}, int64_t{-2}, int64_t{2 * N}})
    expect_usage_error([&] { parallel::ProcessGroups g(*world, {N, rpn}); }, "parallel.ranks_per_node");
}

}  // namespace
}  // namespace switchyard::test
