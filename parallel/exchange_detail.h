// parallel/exchange_detail.h: internals shared by the token-exchange algorithms (not a public
// header): the source-side index of the slots, the node sum both algorithms end with (the
// summation itself is core::Backend::scatter_add_rows), byte layouts of alltoallv calls, traffic
// counting, and the algorithm classes.
//
// What lives where. Host memory: the slots (RoutedSlots), the source index below, every count,
// offset and layout, and the slot metadata make_plan exchanges (over the communicators' host()
// side). Backend memory: the payload rows (the caller's and the exchange's Staging buffers, moved
// by the payload communicators, which must be in the backend's memory space) and the index arrays
// the kernels read (each plan's PlanArrays, parallel/exchange_memory.h).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "parallel/exchange_memory.h"
#include "parallel/token_exchange.h"

namespace switchyard::parallel::detail {

// A rank's slots seen from the source side, grouped by destination node of the group.
struct SourceIndex {
  int64_t num_tokens = 0;           // T
  std::vector<int64_t> slot_token;  // [S] token row per slot
  std::vector<int32_t> slot_dest;   // [S] destination rank in the group
  std::vector<float> slot_gate;     // [S]
  std::vector<int32_t> slot_tag;    // [S]
  std::vector<int64_t> dest_rows;   // [group size] slots per destination rank
  // Distinct (token, destination node) pairs, node-major, tokens ascending inside a node. The
  // partial sums of combine live in this layout ("unique rows").
  std::vector<int64_t> node_unique;  // [G] unique rows per node
  std::vector<int64_t> unique_token; // [U] token of each unique row
  // The combine reduction of the slots into unique rows, in the order that defines the sum: nodes
  // ascending, slots in slot order: unique[red_unique[i]] += gate[red_slot[i]] * row(red_slot[i]).
  std::vector<int64_t> red_unique, red_slot;  // [S] each
  std::vector<float> red_gate;                // [S] gate[red_slot[i]]
  std::vector<uint8_t> red_first;             // [S] first term of its unique row (written, not added)
  std::vector<uint8_t> unique_first;          // [U] first node term of its token in out
  std::vector<int64_t> idle_tokens;           // tokens without slots (combine writes 0)
  std::vector<int64_t> node_slot_count;       // [G] slots per destination node
};
// Checks the slots (sizes, ranges, sorted by destination) and indexes them.
SourceIndex build_source_index(const RoutedSlots& slots, const GroupTopology& topo, int group_size);

// The source index's arrays that kernels read, in the backend's memory (a plan's PlanArrays; each
// algorithm adds the ones it uses, the others stay null).
struct SourceArrays {
  const int64_t* slot_token = nullptr;  // flat dispatch's gather
  const int64_t* red_unique = nullptr;  // flat combine's in-node sum
  const int64_t* red_slot = nullptr;    // flat combine; hierarchical return_to_slots
  const float* red_gate = nullptr;
  const uint8_t* red_first = nullptr;
  const int64_t* unique_token = nullptr;  // sum_unique_rows; hierarchical stage-1 gather
  const uint8_t* unique_first = nullptr;  // sum_unique_rows
  const int64_t* iota = nullptr;          // [max node_unique] 0, 1, 2, ...: sum_unique_rows
};
// Adds what sum_unique_rows reads (unique_token, unique_first, iota) to `arrays`.
void add_unique_arrays(PlanArrays& arrays, const SourceIndex& src, SourceArrays& dev);

// THE summation of the exchange is core::Backend::scatter_add_rows (one kernel, so both algorithms
// round alike); the row packing is Backend::gather_rows / scatter_rows.
// first[i] = 1 where index[i] appears for the first time in index[0..n).
std::vector<uint8_t> first_occurrence(std::span<const int64_t> index);
// The source's last step: for nodes m ascending, for the unique rows u of m:
// out[unique_token[u]] (=, first node of the token; else +=) node_partials[m][u - first row of m];
// rows of tokens without slots = 0. Through the backend's kernels, with the arrays of `dev`.
void sum_unique_rows(core::Backend& be, float* out, const SourceIndex& src, const SourceArrays& dev,
                     std::span<const float* const> node_partials, int64_t C);
// Canonical order of sources: by (local index, node) of the group topology. Returns the first
// receive row of every source given the rows each sends here.
std::vector<int64_t> source_offsets(const GroupTopology& topo, std::span<const int64_t> recv_counts);

// Byte counts and displacements of one alltoallv side, from rows per peer.
struct Layout {
  std::vector<int64_t> counts, displs;  // bytes
  int64_t total = 0;                    // bytes
};
Layout make_layout(std::span<const int64_t> rows, int64_t row_bytes);
// The same with given row offsets per peer (rows land where the canonical order puts them).
Layout placed_layout(std::span<const int64_t> rows, std::span<const int64_t> offsets, int64_t row_bytes);
// Row offsets (prefix sums) of rows per peer.
std::vector<int64_t> row_offsets(std::span<const int64_t> rows);

// Adds the messages/bytes of one alltoallv side to stats: peer r gets bytes[r]; r == self is not a
// message; peer_on_my_node(r) decides intra or inter.
template <class OnMyNode>
void add_traffic(ExchangeStats& stats, std::span<const int64_t> bytes, int self, OnMyNode on_my_node) {
  for (int r = 0; r < static_cast<int>(bytes.size()); ++r) {
    if (r == self || bytes[r] == 0) continue;
    Traffic& t = on_my_node(r) ? stats.intra_node : stats.inter_node;
    t.messages += 1;
    t.bytes += bytes[r];
  }
}

// Scales every entry of rows by unit (counts of rows -> counts of bytes etc.).
std::vector<int64_t> scaled(std::span<const int64_t> rows, int64_t unit);

class Stopwatch {
 public:
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

// The statistics of one dispatch, combine or return_to_slots call: the plan's algorithm, traffic
// added as the call goes (add_traffic(call.stats, ...)), its time from construction to done().
struct CallStats {
  explicit CallStats(const ExchangePlan& plan) { stats.algorithm = plan.algorithm; }
  ExchangeStats done() {
    stats.seconds = watch.seconds();
    return stats;
  }
  Stopwatch watch;
  ExchangeStats stats;
};

// *c, or an internal error naming `what` when c is null.
Communicator& must(Communicator* c, const char* what);

// Usage error unless every communicator of `groups` works in the memory of `be`
// (Communicator::memory_space() against Backend::host_memory()).
void check_memory_spaces(const ExchangeGroups& groups, const core::Backend& be);

// What both algorithms share: the expert group, its topology, the backend whose kernels pack and
// sum the rows (with the per-row scratch of the MoE steps), and a plan made from the slots' source
// index (auto builds the index once for its vote and hands it to plan_from).
class IndexedExchange : public TokenExchange {
 public:
  std::unique_ptr<ExchangePlan> make_plan(const RoutedSlots& slots) final;
  virtual std::unique_ptr<ExchangePlan> plan_from(SourceIndex src) = 0;
  core::Backend& backend() const final { return be_; }
  Communicator& group() const final { return group_; }
  float* row_scratch(int64_t n) final;

 protected:
  IndexedExchange(const ExchangeGroups& groups, core::Backend& be);
  Communicator& group_;  // payloads; group_.host(): counts and slot metadata
  core::Backend& be_;
  GroupTopology topo_;
  Staging steps_{be_};  // row_scratch
};

class FlatExchange final : public IndexedExchange {
 public:
  FlatExchange(const ExchangeGroups& groups, core::Backend& be);
  ExchangeAlgorithm algorithm() const override { return ExchangeAlgorithm::flat; }
  std::unique_ptr<ExchangePlan> plan_from(SourceIndex src) override;
  ExchangeStats dispatch(const ExchangePlan& plan, const void* x, int64_t row_bytes, void* recv) override;
  ExchangeStats combine(const ExchangePlan& plan, const float* y, int64_t C, float* out, bool weighted) override;
  ExchangeStats return_to_slots(const ExchangePlan& plan, const float* recv_values, float* slot_values) override;

 private:
  bool on_my_node(int r) const;
  // The one collective of every flat call, over `comm` (the group, or its host side for the slot
  // metadata): rows of row_bytes from the slots to their destination's canonical receive rows
  // (to_dest), or back; counts what this rank sends in stats.
  void alltoallv_rows(Communicator& comm, const ExchangePlan& plan, const SourceIndex& src, bool to_dest,
                      const void* send, void* recv, int64_t row_bytes, ExchangeStats& stats);
  Staging send_{be_}, recv_{be_};
};

class HierarchicalExchange final : public IndexedExchange {
 public:
  HierarchicalExchange(const ExchangeGroups& groups, core::Backend& be);
  ExchangeAlgorithm algorithm() const override { return ExchangeAlgorithm::hierarchical; }
  std::unique_ptr<ExchangePlan> plan_from(SourceIndex src) override;
  ExchangeStats dispatch(const ExchangePlan& plan, const void* x, int64_t row_bytes, void* recv) override;
  ExchangeStats combine(const ExchangePlan& plan, const float* y, int64_t C, float* out, bool weighted) override;
  ExchangeStats return_to_slots(const ExchangePlan& plan, const float* recv_values, float* slot_values) override;

 private:
  Communicator& intra_;
  Communicator& inter_;
  Staging a_{be_}, b_{be_}, c_{be_};
};

}  // namespace switchyard::parallel::detail
