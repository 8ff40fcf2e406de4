// parallel/exchange_detail.cpp: the source index, the node sum and layouts shared by the
// flat and hierarchical token exchanges.
#include "parallel/exchange_detail.h"

#include <algorithm>
#include <utility>

#include "core/error.h"

namespace switchyard::parallel::detail {

SourceIndex build_source_index(const RoutedSlots& slots, const GroupTopology& topo, int group_size) {
  const auto S = static_cast<int64_t>(slots.token.size());
  const int64_t T = slots.num_tokens;
  SY_CHECK(T >= 0, "num_tokens = {}", T);
  SY_CHECK(static_cast<int64_t>(slots.dest.size()) == S && static_cast<int64_t>(slots.gate.size()) == S,
           "routed slots: {} tokens, {} destinations, {} gates", S, slots.dest.size(), slots.gate.size());
  SY_CHECK(slots.tag.empty() || static_cast<int64_t>(slots.tag.size()) == S, "routed slots: {} tags for {} slots",
           slots.tag.size(), S);
  SY_CHECK(static_cast<int>(topo.node_of.size()) == group_size, "group topology of {} ranks for a group of {}",
           topo.node_of.size(), group_size);
  const int G = topo.num_nodes;

  SourceIndex ix;
  ix.num_tokens = T;
  ix.slot_token.resize(static_cast<size_t>(S));
  ix.slot_dest.assign(slots.dest.begin(), slots.dest.end());
  ix.slot_gate.assign(slots.gate.begin(), slots.gate.end());
  ix.slot_tag.assign(static_cast<size_t>(S), 0);
  ix.dest_rows.assign(static_cast<size_t>(group_size), 0);
  ix.node_slot_count.assign(static_cast<size_t>(G), 0);
  std::vector<std::vector<int64_t>> node_slots(static_cast<size_t>(G));
  for (int64_t s = 0; s < S; ++s) {
    const int32_t d = slots.dest[s], t = slots.token[s];
    SY_CHECK(d >= 0 && d < group_size, "slot {}: destination {} outside the expert group of {}", s, d, group_size);
    SY_CHECK(s == 0 || d >= slots.dest[s - 1], "slot {}: destinations must be sorted (got {} after {})", s, d,
             slots.dest[s - 1]);
    SY_CHECK(t >= 0 && t < T, "slot {}: token {} outside [0, {})", s, t, T);
    ix.slot_token[s] = t;
    if (!slots.tag.empty()) ix.slot_tag[s] = slots.tag[s];
    ix.dest_rows[d] += 1;
    const int m = topo.node_of[static_cast<size_t>(d)];
    ix.node_slot_count[m] += 1;
    node_slots[m].push_back(s);
  }

  // Distinct tokens per node (ascending), then the reduction order: nodes ascending, slot order.
  ix.node_unique.assign(static_cast<size_t>(G), 0);
  std::vector<int64_t> unique_of(static_cast<size_t>(T), -1);  // token -> unique row, this node
  ix.red_unique.reserve(static_cast<size_t>(S));
  ix.red_slot.reserve(static_cast<size_t>(S));
  for (int m = 0; m < G; ++m) {
    std::vector<int64_t> tokens;
    tokens.reserve(node_slots[m].size());
    for (int64_t s : node_slots[m]) tokens.push_back(ix.slot_token[s]);
    std::sort(tokens.begin(), tokens.end());
    tokens.erase(std::unique(tokens.begin(), tokens.end()), tokens.end());
    const auto base = static_cast<int64_t>(ix.unique_token.size());
    for (size_t u = 0; u < tokens.size(); ++u) unique_of[tokens[u]] = base + static_cast<int64_t>(u);
    ix.unique_token.insert(ix.unique_token.end(), tokens.begin(), tokens.end());
    ix.node_unique[m] = static_cast<int64_t>(tokens.size());
    for (int64_t s : node_slots[m]) {
      ix.red_unique.push_back(unique_of[ix.slot_token[s]]);
      ix.red_slot.push_back(s);
    }
    for (int64_t t : tokens) unique_of[t] = -1;
  }
  ix.red_gate.resize(ix.red_slot.size());
  for (size_t i = 0; i < ix.red_slot.size(); ++i) ix.red_gate[i] = ix.slot_gate[ix.red_slot[i]];
  ix.red_first = first_occurrence(ix.red_unique);
  ix.unique_first = first_occurrence(ix.unique_token);
  std::vector<uint8_t> routed(static_cast<size_t>(T), 0);
  for (int64_t t : ix.slot_token) routed[t] = 1;
  for (int64_t t = 0; t < T; ++t)
    if (!routed[t]) ix.idle_tokens.push_back(t);
  return ix;
}

std::vector<uint8_t> first_occurrence(std::span<const int64_t> index) {
  std::vector<uint8_t> first(index.size(), 0);
  int64_t hi = -1;
  for (int64_t v : index) hi = std::max(hi, v);
  std::vector<uint8_t> seen(static_cast<size_t>(hi + 1), 0);
  for (size_t i = 0; i < index.size(); ++i) {
    first[i] = seen[index[i]] == 0;
    seen[index[i]] = 1;
  }
  return first;
}

void add_unique_arrays(PlanArrays& arrays, const SourceIndex& src, SourceArrays& dev) {
  std::vector<int64_t> iota;
  for (int64_t n : src.node_unique)
    for (auto u = static_cast<int64_t>(iota.size()); u < n; ++u) iota.push_back(u);
  arrays.add(src.unique_token, dev.unique_token);
  arrays.add(src.unique_first, dev.unique_first);
  arrays.add(iota, dev.iota);
}

void sum_unique_rows(core::Backend& be, float* out, const SourceIndex& src, const SourceArrays& dev,
                     std::span<const float* const> node_partials, int64_t C) {
  for (int64_t t : src.idle_tokens) be.zero(out + t * C, sizeof(float) * static_cast<size_t>(C));
  int64_t first = 0;
  for (size_t m = 0; m < src.node_unique.size(); ++m) {
    const int64_t n = src.node_unique[m];
    be.scatter_add_rows(out, dev.unique_token + first, node_partials[m], dev.iota, nullptr, dev.unique_first + first,
                        n, C);
    first += n;
  }
}

std::vector<int64_t> source_offsets(const GroupTopology& topo, std::span<const int64_t> recv_counts) {
  std::vector<int> order(recv_counts.size());
  for (size_t q = 0; q < order.size(); ++q) order[q] = static_cast<int>(q);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return std::pair(topo.local_of[a], topo.node_of[a]) < std::pair(topo.local_of[b], topo.node_of[b]);
  });
  std::vector<int64_t> off(recv_counts.size(), 0);
  int64_t next = 0;
  for (int q : order) {
    off[q] = next;
    next += recv_counts[q];
  }
  return off;
}

std::vector<int64_t> row_offsets(std::span<const int64_t> rows) {
  std::vector<int64_t> off(rows.size() + 1, 0);
  for (size_t i = 0; i < rows.size(); ++i) off[i + 1] = off[i] + rows[i];
  return off;
}

Layout make_layout(std::span<const int64_t> rows, int64_t row_bytes) {
  Layout l;
  for (int64_t r : rows) {
    l.counts.push_back(r * row_bytes);
    l.displs.push_back(l.total);
    l.total += r * row_bytes;
  }
  return l;
}

Layout placed_layout(std::span<const int64_t> rows, std::span<const int64_t> offsets, int64_t row_bytes) {
  Layout l;
  for (size_t i = 0; i < rows.size(); ++i) {
    l.counts.push_back(rows[i] * row_bytes);
    l.displs.push_back(offsets[i] * row_bytes);
    l.total += rows[i] * row_bytes;
  }
  return l;
}

std::vector<int64_t> scaled(std::span<const int64_t> rows, int64_t unit) {
  std::vector<int64_t> out(rows.begin(), rows.end());
  for (auto& v : out) v *= unit;
  return out;
}

Communicator& must(Communicator* c, const char* what) {
  SY_CHECK(c != nullptr, "token exchange without its {} communicator", what);
  return *c;
}

void check_memory_spaces(const ExchangeGroups& groups, const core::Backend& be) {
  for (const Communicator* c : {groups.group, groups.intra, groups.inter}) {
    if (c == nullptr || (c->memory_space() == MemorySpace::host) == be.host_memory()) continue;
    if (be.host_memory())
      throw_usage("the token exchange's {} communicator moves device memory, but the {} backend computes in host "
                  "memory: expert parallelism on the {} backend needs a host-memory communicator (MPI)",
                  c->name(), be.name(), be.name());
    throw_usage("the {} backend computes in device memory, but the token exchange's {} communicator moves host "
                "memory: expert parallelism with the CUDA backend needs the NCCL communicator (a build with NCCL)",
                be.name(), c->name());
  }
}

IndexedExchange::IndexedExchange(const ExchangeGroups& groups, core::Backend& be)
    : group_(must(groups.group, "expert group")), be_(be), topo_(groups.topology) {
  check_memory_spaces(groups, be);
}

float* IndexedExchange::row_scratch(int64_t n) {
  return reinterpret_cast<float*>(steps_.get(n * static_cast<int64_t>(sizeof(float))));
}

std::unique_ptr<ExchangePlan> IndexedExchange::make_plan(const RoutedSlots& slots) {
  return plan_from(build_source_index(slots, topo_, group_.size()));
}

}  // namespace switchyard::parallel::detail
