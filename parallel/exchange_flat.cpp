// parallel/exchange_flat.cpp: the flat token exchange, one alltoallv over the expert group per
// call, one row per routed slot. Slots are sorted by destination, so the send buffer in slot order
// is already grouped by peer; received rows land at their source's canonical offset. Counts and
// slot metadata travel on the group's host side; payload rows on the group itself, between the
// caller's buffers and the staging buffers, in the backend's memory.
#include <algorithm>

#include "core/error.h"
#include "parallel/exchange_detail.h"

namespace switchyard::parallel::detail {
namespace {

struct FlatPlan final : ExchangePlan {
  SourceIndex src;
  PlanArrays arrays;  // the backend's copy of what the kernels read: dev, recv_gate
  SourceArrays dev;
};

const FlatPlan& as_flat(const ExchangePlan& plan) {
  const auto* p = dynamic_cast<const FlatPlan*>(&plan);
  SY_CHECK(p != nullptr, "a {} plan given to the flat exchange", core::name_of(plan.algorithm));
  return *p;
}

struct SlotMeta {  // what travels with each slot at plan time
  float gate;
  int32_t tag;
};

}  // namespace

FlatExchange::FlatExchange(const ExchangeGroups& groups, core::Backend& be) : IndexedExchange(groups, be) {
  SY_CHECK(static_cast<int>(topo_.node_of.size()) == group_.size(), "topology of {} ranks for a group of {}",
           topo_.node_of.size(), group_.size());
}

bool FlatExchange::on_my_node(int r) const {
  return topo_.node_of[static_cast<size_t>(r)] == topo_.node_of[static_cast<size_t>(group_.rank())];
}

void FlatExchange::alltoallv_rows(Communicator& comm, const ExchangePlan& plan, const SourceIndex& src, bool to_dest,
                                  const void* send, void* recv, int64_t row_bytes, ExchangeStats& stats) {
  const Layout slots = make_layout(src.dest_rows, row_bytes);
  const Layout placed = placed_layout(plan.recv_counts, plan.recv_offsets, row_bytes);
  const Layout& sl = to_dest ? slots : placed;
  const Layout& rl = to_dest ? placed : slots;
  comm.alltoallv(send, sl.counts, sl.displs, recv, rl.counts, rl.displs);
  add_traffic(stats, sl.counts, comm.rank(), [&](int r) { return on_my_node(r); });
}

std::unique_ptr<ExchangePlan> FlatExchange::plan_from(SourceIndex src) {
  Stopwatch watch;
  const int E = group_.size(), me = group_.rank();
  Communicator& host = group_.host();
  auto plan = std::make_unique<FlatPlan>();
  plan->algorithm = ExchangeAlgorithm::flat;
  plan->stats.algorithm = plan->algorithm;
  plan->num_tokens = src.num_tokens;
  plan->num_slots = static_cast<int64_t>(src.slot_token.size());

  // Counts first: rows per peer.
  plan->recv_counts.assign(static_cast<size_t>(E), 0);
  host.alltoall(src.dest_rows.data(), plan->recv_counts.data(), 1);
  add_traffic(plan->stats, std::vector<int64_t>(static_cast<size_t>(E), sizeof(int64_t)), me,
              [&](int r) { return on_my_node(r); });
  plan->num_recv = 0;
  for (int64_t c : plan->recv_counts) plan->num_recv += c;
  plan->recv_offsets = source_offsets(topo_, plan->recv_counts);

  // Then each slot's gate and tag, in slot order.
  std::vector<SlotMeta> send(src.slot_token.size()), recv(static_cast<size_t>(plan->num_recv));
  for (size_t s = 0; s < send.size(); ++s) send[s] = SlotMeta{src.slot_gate[s], src.slot_tag[s]};
  alltoallv_rows(host, *plan, src, true, send.data(), recv.data(), sizeof(SlotMeta), plan->stats);
  plan->recv_gate.resize(recv.size());
  plan->recv_tag.resize(recv.size());
  for (size_t r = 0; r < recv.size(); ++r) {
    plan->recv_gate[r] = recv[r].gate;
    plan->recv_tag[r] = recv[r].tag;
  }

  // The index arrays of dispatch and combine, and the gates, into the backend's memory at once.
  PlanArrays& a = plan->arrays;
  SourceArrays& dev = plan->dev;
  a.add(src.slot_token, dev.slot_token);
  a.add(src.red_unique, dev.red_unique);
  a.add(src.red_slot, dev.red_slot);
  a.add(src.red_gate, dev.red_gate);
  a.add(src.red_first, dev.red_first);
  add_unique_arrays(a, src, dev);
  a.add(plan->recv_gate, plan->backend_recv_gate);
  a.upload(be_);
  plan->src = std::move(src);
  plan->stats.seconds = watch.seconds();
  return plan;
}

ExchangeStats FlatExchange::dispatch(const ExchangePlan& plan_in, const void* x, int64_t row_bytes, void* recv) {
  CallStats call(plan_in);
  const FlatPlan& plan = as_flat(plan_in);
  const auto S = static_cast<int64_t>(plan.src.slot_token.size());
  std::byte* send = send_.get(S * row_bytes);
  be_.gather_rows(send, x, plan.dev.slot_token, S, row_bytes);
  alltoallv_rows(group_, plan, plan.src, true, send, recv, row_bytes, call.stats);
  return call.done();
}

ExchangeStats FlatExchange::combine(const ExchangePlan& plan_in, const float* y, int64_t C, float* out,
                                    bool weighted) {
  CallStats call(plan_in);
  const FlatPlan& plan = as_flat(plan_in);
  const SourceIndex& src = plan.src;
  const SourceArrays& dev = plan.dev;
  const auto S = static_cast<int64_t>(src.slot_token.size());
  const auto U = static_cast<int64_t>(src.unique_token.size());
  const int64_t row = C * static_cast<int64_t>(sizeof(float));
  // The mirror of dispatch: one row per slot comes back, in slot order.
  auto* slot_rows = reinterpret_cast<float*>(recv_.get(S * row));
  alltoallv_rows(group_, plan, src, false, y, slot_rows, row, call.stats);
  // Partial sums per (token, node), then the node sum: the order that defines the result.
  auto* partial = reinterpret_cast<float*>(send_.get(U * row));
  be_.scatter_add_rows(partial, dev.red_unique, slot_rows, dev.red_slot, weighted ? dev.red_gate : nullptr,
                       dev.red_first, S, C);
  std::vector<const float*> node_partials;
  for (int64_t first = 0; int64_t n : src.node_unique) {
    node_partials.push_back(partial + first * C);
    first += n;
  }
  sum_unique_rows(be_, out, src, dev, node_partials, C);
  return call.done();
}

ExchangeStats FlatExchange::return_to_slots(const ExchangePlan& plan_in, const float* recv_values,
                                            float* slot_values) {
  CallStats call(plan_in);
  const FlatPlan& plan = as_flat(plan_in);
  alltoallv_rows(group_, plan, plan.src, false, recv_values, slot_values, sizeof(float), call.stats);
  return call.done();
}

}  // namespace switchyard::parallel::detail
