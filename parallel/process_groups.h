// parallel/process_groups.h: the topology (which ranks share a node) and the process groups of a
// job with N ranks and expert-parallel size E, all split from one world communicator.
//
// Layout (Megatron-style; E divides N):
//   world        all N ranks
//   data         all N ranks (its own communicator): dense parameters are replicated everywhere,
//                so dense gradients are reduced here (apart from world so a bucketed reduction in
//                flight never interleaves with other world traffic)
//   expert       ranks [k*E, (k+1)*E) for k = rank / E; expert-group rank = rank % E holds the
//                experts [r*X/E, (r+1)*X/E) of the X experts; tokens travel inside this group
//   expert_data  ranks with the same rank % E, i.e. {j, j+E, j+2E, ...}: the N/E replicas of the
//                same experts; expert gradients are reduced here
//   intra_node   ranks on my node, ordered by rank
//   inter_node   ranks with my local index on every node, ordered by node
// Consecutive ranks fill a node first (mpirun's default --map-by core/slot), so an expert group of
// E >= ranks_per_node spans E / ranks_per_node whole nodes, and E <= ranks_per_node keeps the
// group inside one node (the hierarchical exchange then has nothing to save).
//
// Topology: nodes come from MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) unless ranks_per_node is
// given (config `parallel.ranks_per_node` > 0, else the environment SWITCHYARD_RANKS_PER_NODE):
// then node = rank / ranks_per_node, so 4 ranks on one machine can act as 2 nodes x 2.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace switchyard::parallel {

struct Topology {
  int num_nodes = 1;
  std::vector<int> node_of;    // [world rank] node index; nodes are numbered by their lowest rank
  std::vector<int> local_of;   // [world rank] index among the ranks of its node, in rank order
  std::vector<int> node_size;  // [node] ranks on it
  std::string source;          // where it came from: "MPI_COMM_TYPE_SHARED", the key or variable
};

// Collective over `world`. ranks_per_node > 0: simulated nodes of that size (key
// parallel.ranks_per_node); 0: SWITCHYARD_RANKS_PER_NODE if set, else MPI_COMM_TYPE_SHARED.
// Throws a usage error if the value does not divide the world size.
Topology discover_topology(Communicator& world, int64_t ranks_per_node);
// node = rank / ranks_per_node (ranks_per_node must divide world_size); `source` names the origin.
Topology simulated_topology(int world_size, int ranks_per_node, const std::string& source);

// The node structure of one group (the expert group) as the hierarchical exchange sees it.
struct GroupTopology {
  int num_nodes = 1;       // G: nodes holding ranks of the group
  int ranks_per_node = 1;  // L: the group's ranks on each node (when regular)
  bool regular = true;     // every one of the G nodes holds the same number L of the group's ranks
  std::vector<int> node_of;                     // [group rank] 0..G-1, numbered by lowest group rank
  std::vector<int> local_of;                    // [group rank] index among the group's ranks on its node
  std::vector<std::vector<int>> ranks_of_node;  // [node][local] group rank
};
// group_world_ranks[i] is the world rank of group rank i.
GroupTopology group_topology(const Topology& topology, std::span<const int> group_world_ranks);

// What the token exchange needs: the expert group and its two-level split.
struct ExchangeGroups {
  Communicator* group = nullptr;  // the expert group
  Communicator* intra = nullptr;  // the group's ranks on my node; comm rank = local index
  Communicator* inter = nullptr;  // the group's ranks with my local index; comm rank = node index
  GroupTopology topology;         // of the group
};

struct ProcessGroupOptions {
  int64_t expert_parallel = 1;  // E, key parallel.expert_parallel
  int64_t ranks_per_node = 0;   // key parallel.ranks_per_node; 0: environment or discovery
};

class ProcessGroups {
 public:
  // Collective over `world`, which must outlive this object. Usage errors (before any
  // communication, so every rank throws alike): E < 1 or E not dividing N, ranks_per_node not
  // dividing N.
  ProcessGroups(Communicator& world, const ProcessGroupOptions& options);

  Communicator& world() { return world_; }
  Communicator& data() { return *data_; }
  Communicator& expert() { return *expert_; }
  Communicator& expert_data() { return *expert_data_; }
  Communicator& intra_node() { return *intra_node_; }
  Communicator& inter_node() { return *inter_node_; }

  int expert_parallel() const { return expert_parallel_; }
  int expert_data_parallel() const { return world_.size() / expert_parallel_; }  // N / E
  int expert_rank() const { return world_.rank() % expert_parallel_; }           // in its group
  int expert_group_index() const { return world_.rank() / expert_parallel_; }    // k
  const Topology& topology() const { return topology_; }
  // The expert group with its intra- and inter-node parts, for the token exchange.
  ExchangeGroups exchange_groups();

 private:
  Communicator& world_;
  int expert_parallel_ = 1;
  Topology topology_;
  GroupTopology expert_topology_;
  std::unique_ptr<Communicator> data_, expert_, expert_data_, intra_node_, inter_node_;
  std::unique_ptr<Communicator> expert_intra_, expert_inter_;
};

}  // namespace switchyard::parallel
