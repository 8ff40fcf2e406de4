// parallel/process_groups.cpp: topology discovery and the split of world into process groups.
#include "parallel/process_groups.h"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <map>
#include <string_view>

#include "core/error.h"

namespace switchyard::parallel {
namespace {

constexpr const char* kRanksPerNodeEnv = "SWITCHYARD_RANKS_PER_NODE";

// ranks_per_node from the environment; 0 when unset or empty.
int64_t ranks_per_node_from_env() {
  const char* v = std::getenv(kRanksPerNodeEnv);
  if (v == nullptr || *v == '\0') return 0;
  std::string_view s(v);
  int64_t out = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  if (ec != std::errc() || end != s.data() + s.size() || out < 1)
    throw_usage("environment {}={}: expected a positive integer (ranks per node)", kRanksPerNodeEnv, s);
  return out;
}

void check_ranks_per_node(int64_t rpn, int world_size, const std::string& source) {
  if (rpn < 1 || world_size % rpn != 0)
    throw_usage("{} = {} must be a positive divisor of the world size {} (mpirun -np)", source, rpn,
                world_size);
}

}  // namespace

Topology simulated_topology(int world_size, int ranks_per_node, const std::string& source) {
  check_ranks_per_node(ranks_per_node, world_size, source);
  Topology t;
  t.source = source;
  t.num_nodes = world_size / ranks_per_node;
  t.node_size.assign(static_cast<size_t>(t.num_nodes), ranks_per_node);
  for (int r = 0; r < world_size; ++r) {
    t.node_of.push_back(r / ranks_per_node);
    t.local_of.push_back(r % ranks_per_node);
  }
  return t;
}

Topology discover_topology(Communicator& world, int64_t ranks_per_node) {
  if (ranks_per_node > 0)
    return simulated_topology(world.size(), static_cast<int>(ranks_per_node), "parallel.ranks_per_node");
  if (ranks_per_node < 0) check_ranks_per_node(ranks_per_node, world.size(), "parallel.ranks_per_node");
  if (const int64_t env = ranks_per_node_from_env(); env > 0)
    return simulated_topology(world.size(), static_cast<int>(env), kRanksPerNodeEnv);

  // Every rank learns the lowest world rank on its machine (the node's leader), then all leaders.
  Communicator& host = world.host();
  auto shared = host.split_shared_memory();
  std::vector<int64_t> on_node(static_cast<size_t>(shared->size()));
  const int64_t me = host.rank();
  shared->allgather(&me, on_node.data(), 1);
  const int64_t leader = *std::min_element(on_node.begin(), on_node.end());
  std::vector<int64_t> leaders(static_cast<size_t>(host.size()));
  host.allgather(&leader, leaders.data(), 1);

  Topology t;
  t.source = "MPI_COMM_TYPE_SHARED";
  std::map<int64_t, int> node_index;  // leader -> node, numbered by lowest rank
  for (int64_t l : leaders) node_index.emplace(l, 0);
  int next = 0;
  for (auto& [l, idx] : node_index) idx = next++;
  t.num_nodes = next;
  t.node_size.assign(static_cast<size_t>(next), 0);
  for (int64_t l : leaders) {
    const int node = node_index[l];
    t.node_of.push_back(node);
    t.local_of.push_back(t.node_size[static_cast<size_t>(node)]++);
  }
  return t;
}

GroupTopology group_topology(const Topology& topology, std::span<const int> group_world_ranks) {
  GroupTopology g;
  std::map<int, int> node_index;  // world node -> group node, numbered by lowest group rank
  for (int world_rank : group_world_ranks) {
    const int wn = topology.node_of.at(static_cast<size_t>(world_rank));
    auto [it, added] = node_index.emplace(wn, static_cast<int>(node_index.size()));
    if (added) g.ranks_of_node.emplace_back();
    auto& members = g.ranks_of_node[static_cast<size_t>(it->second)];
    g.node_of.push_back(it->second);
    g.local_of.push_back(static_cast<int>(members.size()));
    members.push_back(static_cast<int>(g.node_of.size()) - 1);
  }
  g.num_nodes = static_cast<int>(g.ranks_of_node.size());
  g.ranks_per_node = g.ranks_of_node.empty() ? 0 : static_cast<int>(g.ranks_of_node[0].size());
  for (const auto& members : g.ranks_of_node)
    g.regular = g.regular && static_cast<int>(members.size()) == g.ranks_per_node;
  return g;
}

ProcessGroups::ProcessGroups(Communicator& world, const ProcessGroupOptions& options) : world_(world) {
  const int n = world.size();
  if (options.expert_parallel < 1 || n % options.expert_parallel != 0)
    throw_usage("parallel.expert_parallel = {} must be a positive divisor of the world size {} "
                "(mpirun -np); expert groups are ranks [k*E, (k+1)*E)",
                options.expert_parallel, n);
  expert_parallel_ = static_cast<int>(options.expert_parallel);
  topology_ = discover_topology(world, options.ranks_per_node);

  const int rank = world.rank(), e = expert_parallel_;
  const int node = topology_.node_of[static_cast<size_t>(rank)];
  const int local = topology_.local_of[static_cast<size_t>(rank)];
  data_ = world.split(0, rank);
  expert_ = world.split(rank / e, rank % e);
  expert_data_ = world.split(rank % e, rank / e);
  intra_node_ = world.split(node, rank);
  inter_node_ = world.split(local, node);

  std::vector<int> members;
  for (int r = (rank / e) * e; r < (rank / e + 1) * e; ++r) members.push_back(r);
  expert_topology_ = group_topology(topology_, members);
  const int er = rank % e;
  expert_intra_ = expert_->split(expert_topology_.node_of[static_cast<size_t>(er)],
                                 expert_topology_.local_of[static_cast<size_t>(er)]);
  expert_inter_ = expert_->split(expert_topology_.local_of[static_cast<size_t>(er)],
                                 expert_topology_.node_of[static_cast<size_t>(er)]);
}

ExchangeGroups ProcessGroups::exchange_groups() {
  return ExchangeGroups{expert_.get(), expert_intra_.get(), expert_inter_.get(), expert_topology_};
}

}  // namespace switchyard::parallel
