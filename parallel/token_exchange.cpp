// parallel/token_exchange.cpp: algorithm names, the auto chooser (cost model), the factory and
// the four MoE steps written over the TokenExchange interface.
#include "parallel/token_exchange.h"

#include <fmt/format.h>

#include <array>

#include "core/error.h"
#include "parallel/exchange_detail.h"

namespace switchyard::parallel {

ExchangeAlgorithm parse_exchange_algorithm(std::string_view s, std::string_view key) {
  if (const auto a = core::value_named<ExchangeAlgorithm>(s)) return *a;
  throw_usage("{} = '{}': expected one of {}", key, s, core::names_of<ExchangeAlgorithm>());
}

ExchangeStats& ExchangeStats::operator+=(const ExchangeStats& o) {
  algorithm = o.algorithm;
  intra_node.messages += o.intra_node.messages;
  intra_node.bytes += o.intra_node.bytes;
  inter_node.messages += o.inter_node.messages;
  inter_node.bytes += o.inter_node.bytes;
  seconds += o.seconds;
  return *this;
}

namespace {

using detail::FlatExchange;
using detail::HierarchicalExchange;
using detail::SourceIndex;

// Chooses flat or hierarchical per plan; both run the same reduction, so the choice never changes
// a result, only the traffic.
class AutoExchange final : public TokenExchange {
 public:
  AutoExchange(const ExchangeGroups& groups, core::Backend& be, const CostModel& cost)
      : group_(detail::must(groups.group, "expert group")), topo_(groups.topology), cost_(cost), flat_(groups, be) {
    // Hierarchical needs a regular layout and has nothing to save inside one node.
    if (topo_.regular && topo_.num_nodes > 1) hier_ = std::make_unique<HierarchicalExchange>(groups, be);
  }
  ExchangeAlgorithm algorithm() const override { return ExchangeAlgorithm::automatic; }
  core::Backend& backend() const override { return flat_.backend(); }
  Communicator& group() const override { return group_; }
  float* row_scratch(int64_t n) override { return flat_.row_scratch(n); }

  std::unique_ptr<ExchangePlan> make_plan(const RoutedSlots& slots) override {
    SourceIndex src = detail::build_source_index(slots, topo_, group_.size());
    if (!hier_) return flat_.plan_from(std::move(src));
    // Quantities of this rank's slots (rows), summed exactly over the group.
    enum { kFlatIntraMsg, kFlatIntraRows, kFlatInterMsg, kFlatInterRows,
           kHierInterMsg, kHierInterRows, kHierIntraMsg, kHierIntraRows, kCount };
    std::array<int64_t, kCount> q{};
    const int me = group_.rank(), n = topo_.node_of[static_cast<size_t>(me)];
    const int l = topo_.local_of[static_cast<size_t>(me)];
    for (int d = 0; d < group_.size(); ++d) {
      if (d == me || src.dest_rows[d] == 0) continue;
      const bool intra = topo_.node_of[static_cast<size_t>(d)] == n;
      q[intra ? kFlatIntraMsg : kFlatInterMsg] += 1;
      q[intra ? kFlatIntraRows : kFlatInterRows] += src.dest_rows[d];
      if (topo_.local_of[static_cast<size_t>(d)] != l) {  // stage 2: relay (m, l) -> final d
        q[kHierIntraMsg] += 1;
        q[kHierIntraRows] += src.dest_rows[d];
      }
    }
    for (int m = 0; m < topo_.num_nodes; ++m) {
      if (m == n || src.node_unique[m] == 0) continue;
      q[kHierInterMsg] += 1;
      q[kHierInterRows] += src.node_unique[m];
    }
    group_.host().allreduce_sum(q.data(), kCount);
    const double rb = slots.row_bytes > 0 ? static_cast<double>(slots.row_bytes) : 4096.0;
    const double ranks = group_.size();
    auto cost = [&](const LinkCost& link, int64_t msgs, int64_t rows) {
      return (static_cast<double>(msgs) * link.latency_s + static_cast<double>(rows) * rb / link.bandwidth) / ranks;
    };
    const double flat = cost(cost_.intra, q[kFlatIntraMsg], q[kFlatIntraRows]) +
                        cost(cost_.inter, q[kFlatInterMsg], q[kFlatInterRows]);
    const double hier = cost(cost_.inter, q[kHierInterMsg], q[kHierInterRows]) +
                        cost(cost_.intra, q[kHierIntraMsg], q[kHierIntraRows]);
    auto plan = hier < flat ? hier_->plan_from(std::move(src)) : flat_.plan_from(std::move(src));
    plan->estimate_flat_s = flat;
    plan->estimate_hierarchical_s = hier;
    return plan;
  }

  ExchangeStats dispatch(const ExchangePlan& plan, const void* x, int64_t row_bytes, void* recv) override {
    return impl(plan).dispatch(plan, x, row_bytes, recv);
  }
  ExchangeStats combine(const ExchangePlan& plan, const float* y, int64_t C, float* out, bool weighted) override {
    return impl(plan).combine(plan, y, C, out, weighted);
  }
  ExchangeStats return_to_slots(const ExchangePlan& plan, const float* recv_values, float* slot_values) override {
    return impl(plan).return_to_slots(plan, recv_values, slot_values);
  }

 private:
  TokenExchange& impl(const ExchangePlan& plan) {
    if (plan.algorithm == ExchangeAlgorithm::hierarchical) {
      SY_CHECK(hier_ != nullptr, "hierarchical plan on a layout without hierarchical exchange");
      return *hier_;
    }
    return flat_;
  }

  Communicator& group_;
  GroupTopology topo_;
  CostModel cost_;
  FlatExchange flat_;
  std::unique_ptr<HierarchicalExchange> hier_;
};

}  // namespace

std::unique_ptr<TokenExchange> make_token_exchange(ExchangeAlgorithm algorithm, const ExchangeGroups& groups,
                                                   core::Backend& be, const CostModel& cost) {
  switch (algorithm) {
    case ExchangeAlgorithm::flat: return std::make_unique<FlatExchange>(groups, be);
    case ExchangeAlgorithm::hierarchical: return std::make_unique<HierarchicalExchange>(groups, be);
    case ExchangeAlgorithm::automatic: return std::make_unique<AutoExchange>(groups, be, cost);
  }
  throw_internal("unknown exchange algorithm {}", static_cast<int>(algorithm));
}

ExchangeStats dispatch_forward(TokenExchange& ex, const ExchangePlan& plan, const float* x, int64_t C,
                               float* recv) {
  return ex.dispatch(plan, x, C * static_cast<int64_t>(sizeof(float)), recv);
}

ExchangeStats dispatch_backward(TokenExchange& ex, const ExchangePlan& plan, const float* d_recv, int64_t C,
                                float* dx) {
  return ex.combine(plan, d_recv, C, dx, false);
}

ExchangeStats combine_forward(TokenExchange& ex, const ExchangePlan& plan, const float* y, int64_t C,
                              float* out) {
  return ex.combine(plan, y, C, out, true);
}

ExchangeStats combine_backward(TokenExchange& ex, const ExchangePlan& plan, const float* dout, const float* y,
                               int64_t C, float* dy, float* dgate) {
  detail::Stopwatch watch;
  ExchangeStats stats = ex.dispatch(plan, dout, C * static_cast<int64_t>(sizeof(float)), dy);
  float* dgate_recv = ex.row_scratch(plan.num_recv);
  ex.backend().gate_dot_scale(dy, dgate_recv, y, plan.backend_recv_gate, plan.num_recv, C);
  stats += ex.return_to_slots(plan, dgate_recv, dgate);
  stats.seconds = watch.seconds();  // both exchanges and the local products
  return stats;
}

std::string describe_plan(const ExchangePlan& plan) {
  std::string s(core::name_of(plan.algorithm));
  if (plan.estimate_flat_s > 0 || plan.estimate_hierarchical_s > 0)
    s += fmt::format(" (auto: flat {:.3f} ms, hierarchical {:.3f} ms)", plan.estimate_flat_s * 1e3,
                     plan.estimate_hierarchical_s * 1e3);
  return s;
}

}  // namespace switchyard::parallel
