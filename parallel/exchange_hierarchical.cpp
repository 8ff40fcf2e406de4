// parallel/exchange_hierarchical.cpp: the node-aware two-stage token exchange.
//
// The expert group spans G nodes with L of its ranks each; rank p is (node n, local index l).
// Three roles, every rank plays all of them:
//   source  sends each distinct (token, destination node m) ONCE, with one record per slot
//           (unique row index, final local index, gate, tag), to the relay (m, l) over the
//           inter-node group (comm rank = node). For my own node I am the relay: nothing is sent,
//           the relay step reads my rows from x directly.
//   relay   forwards each record's row to its final rank (m, j) over the intra-node group
//           (comm rank = local index), duplicating rows there; forward order: final j, then
//           source node, then record order.
//   final   receives from relay j' the rows of sources (n', j'), n' ascending: relay j' after
//           relay j'-1 is the canonical order, so rows arrive in place.
// Combine runs the same path backwards: finals return one row per slot to their relays, each
// relay sums the rows of one (source, token) in the source's slot order (Backend::scatter_add_rows, the
// routine flat uses), and sends one partial row per distinct token back across the node
// boundary; the source adds the partials of its nodes in node order (sum_unique_rows), reading
// its own node's partials from its relay buffer.
// Memory: the plan's counts and records travel on the host sides of the inter- and intra-node
// groups; the payload rows on the groups themselves, in the backend's memory, packed and summed by
// its kernels with the plan's arrays (uploaded once, PlanArrays).
#include <algorithm>

#include "core/error.h"
#include "parallel/exchange_detail.h"

namespace switchyard::parallel::detail {
namespace {

struct Record {  // one slot, as the relay of its destination node receives it: 16 bytes
  int32_t unique;  // row among the unique rows the source sends to this node
  int32_t final_local;
  float gate;
  int32_t tag;
};

struct RowMeta {  // what the relay forwards with each row at plan time
  float gate;
  int32_t tag;
};

struct HierPlan final : ExchangePlan {
  SourceIndex src;
  int my_node = 0;
  std::vector<int64_t> s1_send_uni, s1_recv_uni;  // [G] unique rows to / from each node
  std::vector<int64_t> s1_send_rec, s1_recv_rec;  // [G] records (slots) to / from each node
  std::vector<int64_t> uni_off_send, uni_off_recv;  // [G+1] row offsets of the two above
  std::vector<int64_t> rec_row;     // [records received] row in the stage-1 receive buffer
  std::vector<float> rec_gate;      // [records received]
  std::vector<uint8_t> rec_first;   // [records received] first record of its row (written, not added)
  std::vector<int64_t> rec_pos;     // [records received] row in the stage-2 send buffer
  std::vector<int64_t> fwd_row;     // [forwarded rows] stage-1 receive row, in send order; -1 when the source is me
  std::vector<int64_t> fwd_token;   // [forwarded rows] token of x when the source is me, else -1
  std::vector<int64_t> s2_send, s2_recv;  // [L] rows to / from each local rank
  // The backend's copy of what the kernels read: rec_*, fwd_*, and of the source index
  // unique_token, unique_first, iota, red_slot; recv_gate.
  PlanArrays arrays;
  SourceArrays dev;
  const int64_t *rec_row_dev = nullptr, *rec_pos_dev = nullptr, *fwd_row_dev = nullptr, *fwd_token_dev = nullptr;
  const float* rec_gate_dev = nullptr;
  const uint8_t* rec_first_dev = nullptr;
};

const HierPlan& as_hier(const ExchangePlan& plan) {
  const auto* p = dynamic_cast<const HierPlan*>(&plan);
  SY_CHECK(p != nullptr, "a {} plan given to the hierarchical exchange", core::name_of(plan.algorithm));
  return *p;
}

int64_t sum(const std::vector<int64_t>& v) {
  int64_t s = 0;
  for (int64_t x : v) s += x;
  return s;
}

// Byte layout of a stage-1 payload: the self part (my own node) is not sent.
Layout stage1_layout(const std::vector<int64_t>& rows, const std::vector<int64_t>& offsets, int self,
                     int64_t row_bytes) {
  Layout l = placed_layout(rows, offsets, row_bytes);
  l.total -= l.counts[self];
  l.counts[self] = 0;
  return l;
}

auto all_inter(int) { return false; }  // stage 1: every peer but me is on another node
auto all_intra(int) { return true; }   // stage 2: every peer is on my node

}  // namespace

HierarchicalExchange::HierarchicalExchange(const ExchangeGroups& groups, core::Backend& be)
    : IndexedExchange(groups, be), intra_(must(groups.intra, "intra-node")), inter_(must(groups.inter, "inter-node")) {
  if (!topo_.regular)
    throw_usage("parallel.token_exchange = hierarchical needs every node to hold the same number of ranks "
                "of an expert group ({} nodes, {} ranks on the first); use flat or auto, or align "
                "parallel.expert_parallel with the ranks per node",
                topo_.num_nodes, topo_.ranks_per_node);
  const auto me = static_cast<size_t>(group_.rank());
  SY_CHECK(inter_.size() == topo_.num_nodes && inter_.rank() == topo_.node_of[me],
           "inter-node group: rank {} of {}, expected {} of {}", inter_.rank(), inter_.size(), topo_.node_of[me],
           topo_.num_nodes);
  SY_CHECK(intra_.size() == topo_.ranks_per_node && intra_.rank() == topo_.local_of[me],
           "intra-node group: rank {} of {}, expected {} of {}", intra_.rank(), intra_.size(), topo_.local_of[me],
           topo_.ranks_per_node);
}

std::unique_ptr<ExchangePlan> HierarchicalExchange::plan_from(SourceIndex src) {
  Stopwatch watch;
  const int G = topo_.num_nodes, L = topo_.ranks_per_node;
  auto plan = std::make_unique<HierPlan>();
  HierPlan& p = *plan;
  p.algorithm = ExchangeAlgorithm::hierarchical;
  p.stats.algorithm = p.algorithm;
  p.num_tokens = src.num_tokens;
  p.num_slots = static_cast<int64_t>(src.slot_token.size());
  p.my_node = inter_.rank();

  // Stage-1 counts: (records, unique rows) per destination node.
  p.s1_send_rec = src.node_slot_count;
  p.s1_send_uni = src.node_unique;
  std::vector<int64_t> c1(2 * static_cast<size_t>(G)), r1(2 * static_cast<size_t>(G));
  for (int m = 0; m < G; ++m) {
    c1[2 * m] = p.s1_send_rec[m];
    c1[2 * m + 1] = p.s1_send_uni[m];
  }
  Communicator &inter = inter_.host(), &intra = intra_.host();  // counts and records
  inter.alltoall(c1.data(), r1.data(), 2);
  add_traffic(p.stats, std::vector<int64_t>(static_cast<size_t>(G), 2 * sizeof(int64_t)), inter_.rank(), all_inter);
  p.s1_recv_rec.resize(static_cast<size_t>(G));
  p.s1_recv_uni.resize(static_cast<size_t>(G));
  for (int m = 0; m < G; ++m) {
    p.s1_recv_rec[m] = r1[2 * m];
    p.s1_recv_uni[m] = r1[2 * m + 1];
  }

  // Stage-1 records, node-major in slot order (the reduction order of the source index).
  const auto S = static_cast<int64_t>(src.slot_token.size());
  p.uni_off_send = row_offsets(p.s1_send_uni);
  std::vector<Record> send_rec(static_cast<size_t>(S));
  for (int64_t i = 0; i < S; ++i) {
    const int64_t s = src.red_slot[i];
    const int d = src.slot_dest[s];
    const int m = topo_.node_of[static_cast<size_t>(d)];
    send_rec[i] = Record{static_cast<int32_t>(src.red_unique[i] - p.uni_off_send[m]), topo_.local_of[static_cast<size_t>(d)],
                         src.slot_gate[s], src.slot_tag[s]};
  }
  const int64_t R = sum(p.s1_recv_rec);
  std::vector<Record> recv_rec(static_cast<size_t>(R));
  {
    const Layout sl = make_layout(p.s1_send_rec, sizeof(Record)), rl = make_layout(p.s1_recv_rec, sizeof(Record));
    inter.alltoallv(send_rec.data(), sl.counts, sl.displs, recv_rec.data(), rl.counts, rl.displs);
    add_traffic(p.stats, sl.counts, inter_.rank(), all_inter);
  }

  // Relay: forward order (final j, source node n', record order) and each record's place in it.
  p.uni_off_recv = row_offsets(p.s1_recv_uni);
  const std::vector<int64_t> rec_off_recv = row_offsets(p.s1_recv_rec);
  std::vector<int64_t> cnt(static_cast<size_t>(L) * G, 0);  // [j][n']
  for (int n = 0; n < G; ++n) {
    for (int64_t i = rec_off_recv[n]; i < rec_off_recv[n + 1]; ++i) {
      const Record& r = recv_rec[i];
      SY_CHECK(r.final_local >= 0 && r.final_local < L && r.unique >= 0 && r.unique < p.s1_recv_uni[n],
               "corrupt stage-1 record {} from node {}", i, n);
      cnt[static_cast<size_t>(r.final_local) * G + n] += 1;
    }
  }
  std::vector<int64_t> next = row_offsets(cnt);  // running position per (j, n')
  p.rec_row.resize(static_cast<size_t>(R));
  p.rec_gate.resize(static_cast<size_t>(R));
  p.rec_pos.resize(static_cast<size_t>(R));
  p.fwd_row.resize(static_cast<size_t>(R));
  p.fwd_token.resize(static_cast<size_t>(R));
  std::vector<RowMeta> fwd_meta(static_cast<size_t>(R));
  for (int n = 0; n < G; ++n) {
    for (int64_t i = rec_off_recv[n]; i < rec_off_recv[n + 1]; ++i) {
      const Record& r = recv_rec[i];
      const int64_t pos = next[static_cast<size_t>(r.final_local) * G + n]++;
      p.rec_row[i] = p.uni_off_recv[n] + r.unique;
      p.rec_gate[i] = r.gate;
      p.rec_pos[i] = pos;
      p.fwd_row[pos] = n == p.my_node ? -1 : p.rec_row[i];
      p.fwd_token[pos] = n == p.my_node ? src.unique_token[p.uni_off_send[n] + r.unique] : -1;
      fwd_meta[pos] = RowMeta{r.gate, r.tag};
    }
  }
  p.rec_first = first_occurrence(p.rec_row);
  p.s2_send.assign(static_cast<size_t>(L), 0);
  for (int j = 0; j < L; ++j)
    for (int n = 0; n < G; ++n) p.s2_send[j] += cnt[static_cast<size_t>(j) * G + n];

  // Stage-2 counts: rows per (relay j', source node n'), then the rows' gates and tags.
  std::vector<int64_t> c2(static_cast<size_t>(L) * G);
  intra.alltoall(cnt.data(), c2.data(), G);
  add_traffic(p.stats, std::vector<int64_t>(static_cast<size_t>(L), G * sizeof(int64_t)), intra_.rank(), all_intra);
  p.s2_recv.assign(static_cast<size_t>(L), 0);
  for (int j = 0; j < L; ++j)
    for (int n = 0; n < G; ++n) p.s2_recv[j] += c2[static_cast<size_t>(j) * G + n];
  const int64_t F = sum(p.s2_recv);
  std::vector<RowMeta> recv_meta(static_cast<size_t>(F));
  {
    const Layout sl = make_layout(p.s2_send, sizeof(RowMeta)), rl = make_layout(p.s2_recv, sizeof(RowMeta));
    intra.alltoallv(fwd_meta.data(), sl.counts, sl.displs, recv_meta.data(), rl.counts, rl.displs);
    add_traffic(p.stats, sl.counts, intra_.rank(), all_intra);
  }

  // Final: relay j' delivers sources (n', j') for n' ascending, relays in order: that is the
  // canonical order (local index, node), so the stage-2 receive buffer is the result.
  const int E = group_.size();
  p.recv_counts.assign(static_cast<size_t>(E), 0);
  for (int q = 0; q < E; ++q)
    p.recv_counts[q] = c2[static_cast<size_t>(topo_.local_of[q]) * G + topo_.node_of[q]];
  p.recv_offsets = source_offsets(topo_, p.recv_counts);
  const std::vector<int64_t> relay_off = row_offsets(p.s2_recv);
  for (int j = 0; j < L; ++j)
    SY_CHECK(p.recv_offsets[topo_.ranks_of_node[0][j]] == relay_off[j], "relay {} rows start at {}, canonical {}", j,
             relay_off[j], p.recv_offsets[topo_.ranks_of_node[0][j]]);
  p.num_recv = F;
  p.recv_gate.resize(static_cast<size_t>(F));
  p.recv_tag.resize(static_cast<size_t>(F));
  for (int64_t r = 0; r < F; ++r) {
    p.recv_gate[r] = recv_meta[r].gate;
    p.recv_tag[r] = recv_meta[r].tag;
  }

  // What the kernels read, into the backend's memory at once.
  PlanArrays& a = p.arrays;
  a.add(p.rec_row, p.rec_row_dev);
  a.add(p.rec_pos, p.rec_pos_dev);
  a.add(p.rec_gate, p.rec_gate_dev);
  a.add(p.rec_first, p.rec_first_dev);
  a.add(p.fwd_row, p.fwd_row_dev);
  a.add(p.fwd_token, p.fwd_token_dev);
  a.add(src.red_slot, p.dev.red_slot);
  add_unique_arrays(a, src, p.dev);
  a.add(p.recv_gate, p.backend_recv_gate);
  a.upload(be_);
  p.src = std::move(src);
  p.stats.seconds = watch.seconds();
  return plan;
}

ExchangeStats HierarchicalExchange::dispatch(const ExchangePlan& plan_in, const void* x, int64_t row_bytes,
                                             void* recv) {
  CallStats call(plan_in);
  const HierPlan& p = as_hier(plan_in);
  const int G = topo_.num_nodes, n = p.my_node;
  const auto R = static_cast<int64_t>(p.fwd_row.size());
  std::byte* a = a_.get(std::max(p.uni_off_send[G], R) * row_bytes);
  std::byte* b = b_.get(p.uni_off_recv[G] * row_bytes);
  // Stage 1: one row per distinct (token, remote node) to the relay of each remote node.
  for (int m = 0; m < G; ++m) {
    if (m == n) continue;
    be_.gather_rows(a + p.uni_off_send[m] * row_bytes, x, p.dev.unique_token + p.uni_off_send[m], p.s1_send_uni[m],
                    row_bytes);
  }
  const Layout s1s = stage1_layout(p.s1_send_uni, p.uni_off_send, n, row_bytes);
  const Layout s1r = stage1_layout(p.s1_recv_uni, p.uni_off_recv, n, row_bytes);
  inter_.alltoallv(a, s1s.counts, s1s.displs, b, s1r.counts, s1r.displs);
  add_traffic(call.stats, s1s.counts, n, all_inter);
  // Stage 2: the relay duplicates and forwards inside the node (my own rows straight from x: each
  // forwarded row comes from exactly one of the two gathers); the finals receive in canonical order.
  be_.gather_rows(a, b, p.fwd_row_dev, R, row_bytes);
  be_.gather_rows(a, x, p.fwd_token_dev, R, row_bytes);
  const Layout s2s = make_layout(p.s2_send, row_bytes), s2r = make_layout(p.s2_recv, row_bytes);
  intra_.alltoallv(a, s2s.counts, s2s.displs, recv, s2r.counts, s2r.displs);
  add_traffic(call.stats, s2s.counts, intra_.rank(), all_intra);
  return call.done();
}

ExchangeStats HierarchicalExchange::combine(const ExchangePlan& plan_in, const float* y, int64_t C, float* out,
                                            bool weighted) {
  CallStats call(plan_in);
  const HierPlan& p = as_hier(plan_in);
  const int G = topo_.num_nodes, n = p.my_node;
  const int64_t row = C * static_cast<int64_t>(sizeof(float));
  const auto R = static_cast<int64_t>(p.fwd_row.size());
  auto* a = reinterpret_cast<float*>(a_.get(std::max(p.uni_off_send[G], R) * row));
  auto* partial = reinterpret_cast<float*>(b_.get(p.uni_off_recv[G] * row));
  // Stage 2 backwards: every final returns one row per slot to the relay it came through.
  const Layout s2s = make_layout(p.s2_recv, row), s2r = make_layout(p.s2_send, row);
  intra_.alltoallv(y, s2s.counts, s2s.displs, a, s2r.counts, s2r.displs);
  add_traffic(call.stats, s2s.counts, intra_.rank(), all_intra);
  // The in-node sum: one partial row per (source, token), slots in the source's slot order.
  be_.scatter_add_rows(partial, p.rec_row_dev, a, p.rec_pos_dev, weighted ? p.rec_gate_dev : nullptr, p.rec_first_dev,
                       R, C);
  // Stage 1 backwards: one row per distinct token crosses back; the source sums the nodes, its
  // own node's partials straight from its relay buffer.
  const Layout s1s = stage1_layout(p.s1_recv_uni, p.uni_off_recv, n, row);
  const Layout s1r = stage1_layout(p.s1_send_uni, p.uni_off_send, n, row);
  inter_.alltoallv(partial, s1s.counts, s1s.displs, a, s1r.counts, s1r.displs);
  add_traffic(call.stats, s1s.counts, n, all_inter);
  std::vector<const float*> node_partials(static_cast<size_t>(G));
  for (int m = 0; m < G; ++m)
    node_partials[m] = m == n ? partial + p.uni_off_recv[n] * C : a + p.uni_off_send[m] * C;
  sum_unique_rows(be_, out, p.src, p.dev, node_partials, C);
  return call.done();
}

ExchangeStats HierarchicalExchange::return_to_slots(const ExchangePlan& plan_in, const float* recv_values,
                                                    float* slot_values) {
  CallStats call(plan_in);
  const HierPlan& p = as_hier(plan_in);
  constexpr int64_t kRow = sizeof(float);
  const auto R = static_cast<int64_t>(p.fwd_row.size());
  const int64_t S = p.num_slots;
  auto* a = reinterpret_cast<float*>(a_.get(R * kRow));
  auto* b = reinterpret_cast<float*>(b_.get(R * kRow));
  auto* c = reinterpret_cast<float*>(c_.get(S * kRow));
  const Layout s2s = make_layout(p.s2_recv, kRow), s2r = make_layout(p.s2_send, kRow);
  intra_.alltoallv(recv_values, s2s.counts, s2s.displs, a, s2r.counts, s2r.displs);
  add_traffic(call.stats, s2s.counts, intra_.rank(), all_intra);
  be_.gather_rows(b, a, p.rec_pos_dev, R, kRow);  // relay: back into record order
  const Layout s1s = make_layout(p.s1_recv_rec, kRow), s1r = make_layout(p.s1_send_rec, kRow);
  inter_.alltoallv(b, s1s.counts, s1s.displs, c, s1r.counts, s1r.displs);
  add_traffic(call.stats, s1s.counts, inter_.rank(), all_inter);
  be_.scatter_rows(slot_values, c, p.dev.red_slot, S, kRow);  // source: records are in reduction order
  return call.done();
}

}  // namespace switchyard::parallel::detail
