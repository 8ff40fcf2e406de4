// moe/token_dispatcher.cpp: the local and the expert-parallel token dispatchers (see
// moe/token_dispatcher.h).
#include "moe/token_dispatcher.h"

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "core/params.h"

namespace switchyard::moe {

namespace {

// Every expert on this rank: the rows are the routing plan's expert-sorted order, and the
// backend's dispatch/combine kernels permute by pos. Nothing crosses ranks.
class LocalDispatcher final : public TokenDispatcher {
 public:
  LocalDispatcher(core::Backend& be, const core::ModelConfig& cfg, const core::ActivationStore& acts)
      : be_(be), acts_(acts), C_(cfg.d_model), E_(cfg.moe.n_experts),
        K_(cfg.moe.slots_per_token()) {}

  void plan(const RoutingPlan& routing, const std::function<void(int64_t)>& grow,
            parallel::ExchangeStats&) override {
    r_ = routing;
    grow(rows());
  }
  int64_t rows() const override { return r_.expert_offsets_host[E_]; }
  const int32_t* expert_offsets() const override { return r_.expert_offsets_host; }
  std::string describe() const override { return {}; }

  void dispatch_forward(float* xp, const float* x, parallel::ExchangeStats&) override {
    be_.dispatch_forward(xp, x, r_.pos, r_.N, K_, C_);
  }
  void combine_forward(float* out, const float* ye, parallel::ExchangeStats&) override {
    be_.combine_forward(out, ye, r_.pos, r_.gates, r_.N, K_, C_);
  }
  void combine_backward(float* dye, float* dgates, const float* dout, const float* ye,
                        parallel::ExchangeStats&) override {
    be_.combine_backward(dye, dgates, dout, ye, r_.pos, r_.gates, r_.N, K_, C_);
  }
  void dispatch_backward(float* dx, const float* dxp, parallel::ExchangeStats&) override {
    be_.dispatch_backward(dx, dxp, r_.pos, r_.N, K_, C_);
  }
  void recompute_dispatch(float* xp, const float* x, parallel::ExchangeStats& traffic) override {
    if (!acts_.kept(dispatched_rows_keep(false))) dispatch_forward(xp, x, traffic);
  }
  void recompute_combine(const float*) override {}  // combine_backward reads ye and the plan

 private:
  core::Backend& be_;
  const core::ActivationStore& acts_;
  int64_t C_, E_, K_;
  RoutingPlan r_;
};

// Experts spread over the expert group. Pre-step: the routing plan's expert-sorted order becomes
// the exchange's slots (destination and tag: core::expert_owner of the expert; the plan is copied
// to the host for that). Communication: parallel::TokenExchange. Post-step: received rows into
// local-expert order (local_pos) for the grouped GEMMs. combine runs the mirror.
//
// Host <-> backend copies, all in plan() (once per layer and micro-batch, forward only):
//   to the host    pos, idx (unless the layer holds it: capacity), gates [N*K]: the exchange's slots and plan are built on the host
//                  (its make_plan then exchanges counts and metadata on the host, and uploads the
//                  plan's index arrays to the backend itself)
//   to the backend local_pos [R], computed on the host from the plan's recv_tag
// Everything else stays in the backend's memory: the rows handed to the exchange (x, xr, yr, dyr,
// dxr, dout), the dgates coming back per slot (dgate_slots) and their permutation into routing
// order (a backend kernel), so backward copies nothing.
class ExpertParallelDispatcher final : public TokenDispatcher {
 public:
  ExpertParallelDispatcher(core::Backend& be, const core::ModelConfig& cfg, const ExpertParallel& ep,
                           int64_t max_tokens, const core::ActivationStore& acts, const DispatchBuffers& b)
      : be_(be),
        acts_(acts),
        b_(b),
        ex_(*ep.exchange),
        C_(cfg.d_model),
        K_(cfg.moe.slots_per_token()),
        E_local_(core::local_experts(cfg, ep.rank, ep.size).count) {
    const auto NK = static_cast<size_t>(max_tokens * K_);
    for (auto* v : {&pos_host_, &idx_host_, &order_, &slot_token_, &slot_dest_, &slot_tag_}) v->assign(NK, 0);
    for (auto* v : {&gates_host_, &slot_gate_}) v->assign(NK, 0.f);
    local_offsets_host_.assign(static_cast<size_t>(E_local_ + 1), 0);
    local_pos_host_.assign(NK, 0);
    for (int64_t e = 0; e < cfg.moe.n_experts; ++e) owner_.push_back(core::expert_owner(cfg, e, ep.size));
  }

  void plan(const RoutingPlan& routing, const std::function<void(int64_t)>& grow,
            parallel::ExchangeStats& traffic) override;
  int64_t rows() const override { return plan_->num_recv; }
  const int32_t* expert_offsets() const override { return local_offsets_host_.data(); }
  std::string describe() const override { return parallel::describe_plan(*plan_); }

  void dispatch_forward(float* xp, const float* x, parallel::ExchangeStats& traffic) override {
    traffic += parallel::dispatch_forward(ex_, *plan_, x, C_, b_.xr);
    be_.dispatch_forward(xp, b_.xr, b_.local_pos, rows(), 1, C_);  // xp[local_pos[r]] = xr[r]
  }
  void combine_forward(float* out, const float* ye, parallel::ExchangeStats& traffic) override {
    to_received_order(ye);
    traffic += parallel::combine_forward(ex_, *plan_, b_.yr, C_, out);
  }
  void combine_backward(float* dye, float* dgates, const float* dout, const float* /*ye: yr*/,
                        parallel::ExchangeStats& traffic) override;
  void dispatch_backward(float* dx, const float* dxp, parallel::ExchangeStats& traffic) override {
    be_.dispatch_backward(b_.dxr, dxp, b_.local_pos, rows(), 1, C_);  // received order
    traffic += parallel::dispatch_backward(ex_, *plan_, b_.dxr, C_, dx);
  }
  void recompute_dispatch(float* xp, const float* x, parallel::ExchangeStats& traffic) override {
    if (!acts_.kept(dispatched_rows_keep(true))) dispatch_forward(xp, x, traffic);  // same plan
  }
  void recompute_combine(const float* ye) override {
    if (!acts_.kept(core::Keep::expensive)) to_received_order(ye);  // yr
  }

 private:
  void to_received_order(const float* ye) {
    be_.dispatch_backward(b_.yr, ye, b_.local_pos, rows(), 1, C_);  // yr[r] = ye[local_pos[r]]
  }

  core::Backend& be_;
  const core::ActivationStore& acts_;
  const DispatchBuffers& b_;
  parallel::TokenExchange& ex_;
  int64_t C_, K_, E_local_;
  std::vector<core::ExpertOwner> owner_;  // [E] rank and local index of every expert
  int64_t N_ = 0;                 // tokens of the last plan
  const int32_t* pos_ = nullptr;  // its routing plan's pos [N*K] (backend memory, kept by the layer)
  // Host copies for the host logic of plan(): routed slots in expert-sorted order (slot p of the
  // exchange is routing slot order_[p], i.e. p = pos[s]), and the received rows' order by local
  // expert (received row r is row local_pos[r] of the expert segments). The exchange plan of the
  // last forward (its arrays in the backend's memory).
  std::unique_ptr<parallel::ExchangePlan> plan_;
  std::vector<int32_t> pos_host_, idx_host_, order_, slot_token_, slot_dest_, slot_tag_;
  std::vector<float> gates_host_, slot_gate_;
  std::vector<int32_t> local_pos_host_, local_offsets_host_;
};

void ExpertParallelDispatcher::plan(const RoutingPlan& routing, const std::function<void(int64_t)>& grow,
                                    parallel::ExchangeStats& traffic) {
  const int64_t N = routing.N, NK = N * K_;
  N_ = N;
  pos_ = routing.pos;
  // Host sync: the routing plan to the host, where the exchange's slots are built.
  be_.copy_to_host(pos_host_.data(), routing.pos, sizeof(int32_t) * static_cast<size_t>(NK));
  if (routing.idx_host)  // the layer's host copy (capacity): no second copy from the backend
    std::copy(routing.idx_host, routing.idx_host + NK, idx_host_.begin());
  else
    be_.copy_to_host(idx_host_.data(), routing.idx, sizeof(int32_t) * static_cast<size_t>(NK));
  be_.copy_to_host(gates_host_.data(), routing.gates, sizeof(float) * static_cast<size_t>(NK));
  plan_.reset();  // the last plan's backend arrays go while the stream is idle (after the copies)
  // Only routed slots cross: a dropped slot (idx -1: top-p's unused slots, capacity drops) has
  // pos -1, and route_plan gives the M routed ones the rows 0..M-1.
  int64_t M = 0;
  for (int64_t s = 0; s < NK; ++s) {
    const int32_t p = pos_host_[s];
    if (p < 0) continue;
    order_[static_cast<size_t>(p)] = static_cast<int32_t>(s);
    ++M;
  }
  for (int64_t p = 0; p < M; ++p) {
    const int32_t s = order_[p];
    const core::ExpertOwner& o = owner_[static_cast<size_t>(idx_host_[s])];
    slot_token_[p] = static_cast<int32_t>(s / K_);
    slot_dest_[p] = o.rank;
    slot_tag_[p] = o.local;
    slot_gate_[p] = gates_host_[s];
  }
  const auto m = static_cast<size_t>(M);
  parallel::RoutedSlots slots{N, {slot_token_.data(), m}, {slot_dest_.data(), m},
                              {slot_gate_.data(), m}, {slot_tag_.data(), m},
                              C_ * static_cast<int64_t>(sizeof(float))};
  plan_ = ex_.make_plan(slots);
  traffic += plan_->stats;
  const int64_t R = plan_->num_recv;
  grow(R);
  if (static_cast<int64_t>(local_pos_host_.size()) < R) local_pos_host_.resize(static_cast<size_t>(R));

  // received rows -> local-expert order (stable counting sort by tag, on the host: recv_tag is the
  // plan's host copy), then local_pos to the backend
  std::fill(local_offsets_host_.begin(), local_offsets_host_.end(), 0);
  for (int64_t r = 0; r < R; ++r) ++local_offsets_host_[static_cast<size_t>(plan_->recv_tag[r]) + 1];
  for (int64_t e = 0; e < E_local_; ++e) local_offsets_host_[e + 1] += local_offsets_host_[e];
  std::vector<int32_t> cursor(local_offsets_host_.begin(), local_offsets_host_.end() - 1);
  for (int64_t r = 0; r < R; ++r) local_pos_host_[r] = cursor[static_cast<size_t>(plan_->recv_tag[r])]++;
  be_.copy_from_host(b_.local_pos, local_pos_host_.data(), sizeof(int32_t) * static_cast<size_t>(R));
}

void ExpertParallelDispatcher::combine_backward(float* dye, float* dgates, const float* dout, const float*,
                                                parallel::ExchangeStats& traffic) {
  const int64_t NK = N_ * K_;
  // dy of the received rows (gate * dout, where the expert output lives) and dgate per slot of
  // the exchange, then into routing order: dgates[s] = dgate_slots[pos[s]] (one term: a copy;
  // 0 for a dropped slot, pos -1)
  traffic += parallel::combine_backward(ex_, *plan_, dout, b_.yr, C_, b_.dyr, b_.dgate_slots);
  be_.dispatch_backward(dgates, b_.dgate_slots, pos_, NK, 1, 1);
  be_.dispatch_forward(dye, b_.dyr, b_.local_pos, rows(), 1, C_);  // local-expert order
}

}  // namespace

std::unique_ptr<TokenDispatcher> make_token_dispatcher(core::Backend& be, const core::ModelConfig& cfg,
                                                       const ExpertParallel& ep, int64_t max_tokens,
                                                       const core::ActivationStore& acts,
                                                       const DispatchBuffers& buffers) {
  if (ep.exchange) return std::make_unique<ExpertParallelDispatcher>(be, cfg, ep, max_tokens, acts, buffers);
  return std::make_unique<LocalDispatcher>(be, cfg, acts);
}

}  // namespace switchyard::moe
