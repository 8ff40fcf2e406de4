// parallel/token_exchange.h: the MoE token exchange over the expert group, one interface with
// two algorithms (and a chooser), written once against parallel/communicator.h.
//
//   flat          one alltoallv over the expert group: one row per routed slot
//   hierarchical  node-aware, two stages: stage 1 sends each distinct (token, destination node)
//                 once, over the inter-node group, to the rank with my local index on that node
//                 (the relay); stage 2 forwards inside the node to the final ranks, duplicating
//                 there. A token crosses the node boundary at most once per destination node, and
//                 a rank sends at most one inter-node message per remote node.
//   auto          picks one of the two per plan from an alpha-beta cost model (CostModel below),
//                 the same choice on every rank, recorded in the plan
//
// Data model. Each rank has T token rows x[T] and S routed slots, slot s = (token[s], dest[s],
// gate[s], tag[s]): the copy of token row token[s] that goes to rank dest[s] of the expert group.
// Slots come sorted by dest (non-decreasing); inside one destination their order is the caller's
// and is kept. A token may have several slots (top-k), some on the same node.
//   make_plan   collective: counts first (alltoall), then the slots' metadata (alltoallv). The
//               plan is kept for the whole micro-batch (forward, backward, recomputation).
//   dispatch    payload alltoallv(s): the receiving rank gets plan.num_recv rows in CANONICAL
//               ORDER: grouped by source, inside one source in the source's slot order. Sources
//               come ordered by (local index on their node, node): the order in which the
//               hierarchical exchange's relays deliver them, so it receives in place; on one node,
//               or with one rank per node, that is rank order. plan.recv_offsets[q] is where the
//               rows of source q start; plan.recv_gate/recv_tag describe each row.
//   combine     the mirror: out[t] = sum of gate[s] * y[row of s] over the slots of t, in the
//               reduction order below; rows of tokens without slots are 0.
//   return_to_slots   one float per received row back to its slot (no sum): dgates.
//
// Reduction order (the same in both algorithms, so flat and hierarchical are BIT-IDENTICAL):
//   for a token t, let S(t, m) be its slots whose destination is on node m of the group, in slot
//   order. Partial p(t, m) = ((g1*y1 + g2*y2) + g3*y3) + ... over S(t, m), each product and sum
//   rounded to float (a product may be fused into its sum: the same routine on every path);
//   out[t] = (p(t, m1) + p(t, m2)) + ... over the nodes m1 < m2 < ... where t has slots.
//   Hierarchical computes p(t, m) on the relay of node m (the in-node sum before crossing back:
//   one row per (token, node) on the wire) and the node sum on the source; flat receives one row
//   per slot and computes both on the source. Both call the same compiled routine in the same
//   order. (A group on one node, or the flat algorithm on any layout, follows the same formula.)
//
// Statistics: each call returns what this rank sent to other ranks (self copies excluded), as
// messages (non-empty point-to-point transfers) and bytes, split by whether the peer shares this
// rank's node. Payload rows and returned values count in the call that moves them; counts and
// slot metadata count in plan.stats.
//
// Memory. Packing and sums are core::Backend kernels (gather_rows, scatter_rows, scatter_add_rows,
// gate_dot_scale) of the backend the exchange is given, and every buffer they or a payload call
// touch is in that backend's memory (device memory on the CUDA backend):
//   host      the routed slots (RoutedSlots), the plan's counts, offsets and layouts, the slot
//             metadata make_plan exchanges (over Communicator::host(): NCCL's MPI twin), and the
//             plan's recv_counts/recv_offsets/recv_gate/recv_tag (read by the dispatcher's host
//             logic and by tests)
//   backend   the caller's rows (x, recv, y, out, dy, dgate, slot values), the exchange's staging
//             buffers (grow-only, owned by the exchange, reused by every call), and the plan's
//             index arrays and gates the kernels read: built on the host, uploaded once per plan
//             as one block (one alloc, one copy), released with the plan
// Payload rows travel on the expert group's communicators (and the intra/inter-node ones), which
// must work in the backend's memory: make_token_exchange refuses an MPI communicator (host) with
// the CUDA backend (device) -- that needs NCCL -- and the converse. Host syncs: none in dispatch,
// combine and return_to_slots; make_plan blocks on the host-side counts and metadata, then
// uploads its arrays (it reads no backend value). On the CPU backend with MPI both sides are host
// memory.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/backend.h"
#include "core/choices.h"
#include "parallel/communicator.h"
#include "parallel/process_groups.h"

namespace switchyard::parallel {

// flat | hierarchical | automatic; names and the config key parallel.token_exchange: core/choices.h.
using core::ExchangeAlgorithm;
// By name ("flat", "hierarchical", "auto"); anything else: usage error naming `key`.
ExchangeAlgorithm parse_exchange_algorithm(std::string_view s,
                                           std::string_view key = "parallel.token_exchange");

// One link of the alpha-beta model: a message of b bytes costs latency_s + b / bandwidth.
struct LinkCost {
  double latency_s = 0;
  double bandwidth = 1;  // bytes per second
};

// Defaults: intra-node NVLink 4 (H100 SXM: 450 GB/s per direction nominal, ~200 GB/s reached by
// all-to-all traffic; ~3 us per message through NCCL/CUDA IPC); inter-node InfiniBand NDR
// (400 Gb/s = 50 GB/s per GPU nominal, ~40 GB/s reached; ~6 us per message with GPUDirect RDMA).
// Estimated time of one exchange on a rank, summed over its stages:
//   flat:         n_intra*a_intra + B_intra/b_intra + n_inter*a_inter + B_inter/b_inter
//   hierarchical: stage 1 (inter, one row per distinct token and remote node) + stage 2 (intra,
//                 one row per slot whose final rank is not its relay)
// Messages and bytes are summed (int64, exactly) over the group, so the choice is the same on
// every rank; ties go to flat. Stage-2 message counts are upper bounds (counted per source), which
// leans towards flat when latency dominates. A group on one node always uses flat.
struct CostModel {
  LinkCost intra{3e-6, 200e9};
  LinkCost inter{6e-6, 40e9};
};

struct Traffic {
  int64_t messages = 0;
  int64_t bytes = 0;
};

struct ExchangeStats {
  ExchangeAlgorithm algorithm = ExchangeAlgorithm::flat;  // what ran
  Traffic intra_node;  // sent to other ranks of my node
  Traffic inter_node;  // sent to ranks on other nodes
  double seconds = 0;  // wall time of the call on this rank
  ExchangeStats& operator+=(const ExchangeStats& o);
};

// The routed slots of this rank (views of HOST arrays: the caller keeps them alive during make_plan).
struct RoutedSlots {
  int64_t num_tokens = 0;           // T: rows of x
  std::span<const int32_t> token;   // [S] row of x, in [0, T)
  std::span<const int32_t> dest;    // [S] expert-group rank, non-decreasing
  std::span<const float> gate;      // [S] combine weight
  std::span<const int32_t> tag;     // [S] delivered with the row (e.g. local expert); empty: 0
  int64_t row_bytes = 0;            // bytes per dispatched row, for auto's cost model; 0: 4096
};

// The result of make_plan: what the receiving side gets, and (in the algorithm's own subclass)
// every index map dispatch and combine need.
struct ExchangePlan {
  virtual ~ExchangePlan() = default;
  ExchangeAlgorithm algorithm = ExchangeAlgorithm::flat;  // what this plan runs
  int64_t num_tokens = 0, num_slots = 0;
  int64_t num_recv = 0;               // rows dispatch delivers here
  std::vector<int64_t> recv_counts;   // [group size] rows from each source rank
  std::vector<int64_t> recv_offsets;  // [group size] first row of each source (canonical order)
  std::vector<float> recv_gate;       // [num_recv] gate of each received row
  std::vector<int32_t> recv_tag;      // [num_recv]
  // recv_gate in the backend's memory (the plan's uploaded arrays): what combine_backward's
  // gate_dot_scale reads. Everything above is host memory.
  const float* backend_recv_gate = nullptr;
  ExchangeStats stats;                // traffic of making the plan: counts and slot metadata
                                      // (auto's vote, one allreduce of 8 int64, is not counted)
  double estimate_flat_s = 0;         // cost model (mean per rank), filled by auto
  double estimate_hierarchical_s = 0;
};

class TokenExchange {
 public:
  virtual ~TokenExchange() = default;
  virtual ExchangeAlgorithm algorithm() const = 0;  // as configured (may be auto)
  // The backend whose kernels pack and sum the rows (core::Backend's token-exchange section).
  virtual core::Backend& backend() const = 0;
  // The expert group it exchanges over (its host() side carries host values: e.g. the routing
  // metadata expert capacity needs, moe/capacity.h).
  virtual Communicator& group() const = 0;
  // At least n floats in the backend's memory, owned by the exchange (grow-only, reused; the next
  // call that asks overwrites them): per-row scratch of the MoE steps below.
  virtual float* row_scratch(int64_t n) = 0;

  // Collective over the expert group. Checks the slots (sorted, in range). The plan holds backend
  // memory: destroy it before the backend.
  virtual std::unique_ptr<ExchangePlan> make_plan(const RoutedSlots& slots) = 0;
  // Below, every row pointer is in the backend's memory.
  // recv[r] = x[token of the slot behind received row r], row_bytes bytes per row; recv holds
  // plan.num_recv rows. Used for forward tokens and for output gradients alike.
  virtual ExchangeStats dispatch(const ExchangePlan& plan, const void* x, int64_t row_bytes,
                                 void* recv) = 0;
  // out[T, C] (=) from y[num_recv, C] in canonical order, by the reduction order above; weighted:
  // by the plan's gates, else by 1 (dispatch backward: dx = sum of the rows' gradients).
  virtual ExchangeStats combine(const ExchangePlan& plan, const float* y, int64_t C, float* out,
                                bool weighted) = 0;
  // slot_values[s] (=) = recv_values[row of s]; slots of no row do not exist (every slot has one).
  virtual ExchangeStats return_to_slots(const ExchangePlan& plan, const float* recv_values,
                                        float* slot_values) = 0;
};

// Usage error when `hierarchical` is asked on a group whose nodes hold different numbers of its
// ranks; `auto` falls back to flat there. Usage error when a communicator of `groups` does not
// work in `be`'s memory (memory_space() against Backend::host_memory(): the CUDA backend needs the
// NCCL communicator). `be` packs and sums the rows (it outlives the exchange and its plans).
std::unique_ptr<TokenExchange> make_token_exchange(ExchangeAlgorithm algorithm,
                                                   const ExchangeGroups& groups, core::Backend& be,
                                                   const CostModel& cost = {});

// ---- the four MoE steps, written once over the interface (buffers in the backend's memory) ----
// dispatch forward: recv rows of x, C floats each.
ExchangeStats dispatch_forward(TokenExchange& ex, const ExchangePlan& plan, const float* x,
                               int64_t C, float* recv);
// dispatch backward: dx[T, C] (=) = sum over a token's slots of d_recv[row].
ExchangeStats dispatch_backward(TokenExchange& ex, const ExchangePlan& plan, const float* d_recv,
                                int64_t C, float* dx);
// combine forward: out[T, C] (=) = sum over slots of gate * y[row].
ExchangeStats combine_forward(TokenExchange& ex, const ExchangePlan& plan, const float* y,
                              int64_t C, float* out);
// combine backward, from dout[T, C] and the expert outputs y[num_recv, C]:
//   dy[r] (=) = gate[r] * dout[token of r]            (dout dispatched, then scaled where y lives)
//   dgate[s] (=) = dot(dout[token of s], y[row of s]) (computed where y lives, returned to slots)
ExchangeStats combine_backward(TokenExchange& ex, const ExchangePlan& plan, const float* dout,
                               const float* y, int64_t C, float* dy, float* dgate);

// One line for logs: "hierarchical (auto: flat 1.2 ms, hierarchical 0.8 ms)".
std::string describe_plan(const ExchangePlan& plan);

}  // namespace switchyard::parallel
