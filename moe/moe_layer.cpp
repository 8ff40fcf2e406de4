// moe/moe_layer.cpp: the MoE feed-forward sublayer (see moe/moe_layer.h).
// Forward:  logits = x Wr^T -> softmax/top-k (probs, lse, idx, gates) -> routing plan (pos,
//           expert_offsets, copied to the host) -> dispatcher plan -> dispatch -> grouped
//           experts -> combine; with a shared expert: out += sigmoid(x Wsg^T) * ffn_shared(x).
// Backward: combine -> (dy, dgates); experts -> dxp; dispatch -> dx (=); router (dgates + aux/z
//           terms) -> dlogits, dWr, dx +=; shared expert and its gate -> dx +=.
// Local or expert parallel is the dispatcher's business (moe/token_dispatcher.h), chosen once in
// the constructor. Every buffer is allocated once for max_tokens in the constructor.
#include "moe/moe_layer.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/ffn.h"
#include "moe/capacity.h"
#include "moe/experts.h"
#include "moe/router.h"
#include "moe/token_dispatcher.h"

namespace switchyard::moe {

namespace {
// Activation buffers of the layer (core/activations.h), bound by the store. Kept under every
// policy, the routing plan: probs, lse, gates, idx, pos, offsets (and the dispatcher's local_pos
// with expert parallelism). Expensive: the exchanged tokens xp, yr (expert parallelism), expert
// GEMM outputs h, ye, shared expert h, y, logit. Cheap: the SwiGLU products a, sh_a, and xp
// without expert parallelism (a local gather of x). The rest is scratch.
struct Buffers {
  float *logits = nullptr, *probs = nullptr, *lse = nullptr,
        *gates = nullptr;                                          // [N,E],[N,E],[N],[N,K]
  int32_t *idx = nullptr, *pos = nullptr, *offsets = nullptr;      // [N,K],[N*K],[E+1]
  int32_t* kept = nullptr;  // [N,K] idx after the capacity drops (-1): what is dispatched (capacity on)
  float *xp = nullptr, *h = nullptr, *a = nullptr, *ye = nullptr;  // expert rows: [R,C],[R,2I],[R,I],[R,C]
  float *sh_h = nullptr, *sh_a = nullptr, *sh_y = nullptr, *sh_logit = nullptr;  // shared expert
  // scratch
  float* prob_sums = nullptr;                                          // [E]
  float *dye = nullptr, *dxp = nullptr, *dh = nullptr, *da = nullptr;  // expert rows
  float *dgates = nullptr, *dlogits = nullptr, *dprobs_all = nullptr;  // [N,K],[N,E],[E]
  float *sh_dy = nullptr, *sh_dlogit = nullptr, *sh_dh = nullptr, *sh_da = nullptr;
  DispatchBuffers dispatch;  // the dispatcher's (expert parallelism: xr, yr, dyr, dxr, local_pos, dgate_slots)
};

// The buffers of R expert rows (one per routed slot this rank computes): f(name, slot, width, keep).
template <class F>
void for_each_row_buffer(Buffers& b, int64_t C, int64_t I, bool expert_parallel, F&& f) {
  using core::Keep;
  f("moe.xp", &b.xp, C, dispatched_rows_keep(expert_parallel));
  f("moe.h", &b.h, 2 * I, Keep::expensive);
  f("moe.a", &b.a, I, Keep::cheap);
  f("moe.ye", &b.ye, C, Keep::expensive);
  f("moe.dye", &b.dye, C, Keep::scratch);
  f("moe.dxp", &b.dxp, C, Keep::scratch);
  f("moe.dh", &b.dh, 2 * I, Keep::scratch);
  f("moe.da", &b.da, I, Keep::scratch);
  for_each_dispatch_buffer(b.dispatch, expert_parallel, C, f);
}

// Registers every buffer of the layer, N = max_tokens tokens and `rows` expert rows.
void add_buffers(core::ActivationStore& acts, const core::ModelConfig& cfg, int layer, int64_t N,
                 int64_t rows, bool expert_parallel, Buffers& b) {
  using core::Keep;
  const int64_t C = cfg.d_model, E = cfg.moe.n_experts, K = cfg.moe.slots_per_token(),
                S = cfg.moe.shared_expert_size;
  // sigmoid scoring's backward reads the logits (moe/router.h)
  acts.add(layer, "moe.logits", &b.logits, N * E,
           cfg.moe.router.scoring == core::RouterScoring::sigmoid ? Keep::always : Keep::scratch);
  acts.add(layer, "moe.probs", &b.probs, N * E, Keep::always);
  acts.add(layer, "moe.lse", &b.lse, N, Keep::always);
  acts.add(layer, "moe.gates", &b.gates, N * K, Keep::always);
  acts.add(layer, "moe.idx", &b.idx, N * K, Keep::always);
  acts.add(layer, "moe.pos", &b.pos, N * K, Keep::always);
  if (cfg.moe.router.capacity_factor > 0) acts.add(layer, "moe.kept", &b.kept, N * K, Keep::always);
  acts.add(layer, "moe.offsets", &b.offsets, E + 1, Keep::always);
  acts.add(layer, "moe.prob_sums", &b.prob_sums, E, Keep::scratch);
  acts.add(layer, "moe.dgates", &b.dgates, N * K, Keep::scratch);
  acts.add(layer, "moe.dlogits", &b.dlogits, N * E, Keep::scratch);
  acts.add(layer, "moe.dprobs_all", &b.dprobs_all, E, Keep::scratch);
  if (S > 0) {
    acts.add(layer, "moe.shared.h", &b.sh_h, N * 2 * S, Keep::expensive);
    acts.add(layer, "moe.shared.a", &b.sh_a, N * S, Keep::cheap);
    acts.add(layer, "moe.shared.y", &b.sh_y, N * C, Keep::expensive);
    acts.add(layer, "moe.shared.logit", &b.sh_logit, N, Keep::expensive);
    acts.add(layer, "moe.shared.dy", &b.sh_dy, N * C, Keep::scratch);
    acts.add(layer, "moe.shared.dlogit", &b.sh_dlogit, N, Keep::scratch);
    acts.add(layer, "moe.shared.dh", &b.sh_dh, N * 2 * S, Keep::scratch);
    acts.add(layer, "moe.shared.da", &b.sh_da, N * S, Keep::scratch);
  }
  for_each_dispatch_slot_buffer(b.dispatch, expert_parallel, N * K,
                                [&](const char* name, auto** slot, int64_t count, Keep keep) {
                                  acts.add(layer, name, slot, count, keep);
                                });
  for_each_row_buffer(b, C, cfg.moe.expert_size, expert_parallel,
                      [&](const char* name, auto** slot, int64_t width, Keep keep) {
                        acts.add(layer, name, slot, rows * width, keep);
                      });
}
}  // namespace

struct MoeLayer::Impl : Buffers {
  core::Backend& be;
  core::ActivationStore& acts;
  int layer;
  core::PrecisionPolicy prec;
  int64_t C, E, K, I, S /* shared expert width, 0: none */, max_tokens;
  ExpertParallel ep;
  int64_t E_local, first_expert;  // this rank's experts (all of them without expert parallelism)
  Router router;
  CapacityRule capacity;
  Experts experts;
  int64_t off_shared_gate_up = -1, off_shared_down = -1, off_shared_gate = -1;

  // host copies (sized E, allocated once)
  std::vector<int32_t> offsets_host;  // [E+1]
  std::vector<float> prob_sums_host;  // [E]
  std::vector<double> prob_sums_d;    // [E]
  std::vector<float> dprobs_host;     // [E]
  std::vector<float> probs_host;      // [N,E] capacity with importance dropping only
  int64_t last_N = -1;                // tokens of the last forward (backward must match)
  // aux_scope global: the step's counts [E] and the aux loss's denominators (empty: per micro-batch)
  std::vector<int64_t> aux_counts;
  double aux_count_tokens = 0, aux_prob_tokens = 0;
  struct AuxTerms {
    const std::vector<int64_t>& counts;
    double count_tokens, prob_tokens;
  };
  // the aux loss's counts and denominators: the step's, else those of a forward of N tokens
  AuxTerms aux_terms(const std::vector<int64_t>& own, int64_t N) const {
    if (aux_counts.empty()) return {own, static_cast<double>(N), static_cast<double>(N)};
    return {aux_counts, aux_count_tokens, aux_prob_tokens};
  }
  // the aux-loss-free selection bias [E] (model.moe.balance.bias_rate > 0): a host copy, the
  // one the trainer updates and checkpoints save, and the backend's copy router_topk reads
  std::vector<float> bias_host;
  float* bias = nullptr;

  // how the rows reach the experts and come back (local or expert parallel), its plan kept for
  // backward and recompute
  std::unique_ptr<TokenDispatcher> dispatcher;
  int64_t rows_cap = 0;  // capacity of every expert-row buffer (xp, h, a, ye, dye, dxp, dh, da, ...)

  Impl(core::Backend& b, const core::ModelConfig& cfg, const core::ParamTable& table, int layer_,
       int64_t max_tok, const std::string& prefix, const ExpertParallel& ep_,
       core::ActivationStore& acts_, const core::PrecisionPolicy& prec_)
      : be(b),
        acts(acts_),
        layer(layer_),
        prec(prec_),
        C(cfg.d_model),
        E(cfg.moe.n_experts),
        K(cfg.moe.slots_per_token()),
        I(cfg.moe.expert_size),
        S(cfg.moe.shared_expert_size),
        max_tokens(max_tok),
        ep(ep_),
        E_local(core::local_experts(cfg, ep_.rank, std::max(1, ep_.size)).count),
        first_expert(core::local_experts(cfg, ep_.rank, std::max(1, ep_.size)).first),
        router(cfg.d_model, cfg.moe.n_experts, cfg.moe.slots_per_token(), cfg.moe.router.scoring,
               cfg.moe.normalize_topk, static_cast<float>(cfg.moe.router.top_p),
               table.at(prefix + "gate.weight").offset, prec_),
        capacity(capacity_rule(cfg.moe)),
        experts(table, prefix, cfg.qwen_layout(), E_local, cfg.d_model, cfg.moe.expert_size, first_expert, prec_) {
    SY_CHECK(table.at(prefix + "gate.weight").numel == E * C,
             "router weight of layer {} is not [{}, {}]", layer, E, C);
    SY_CHECK(max_tokens >= 0 && max_tokens * K <= INT32_MAX,
             "max_tokens {} * routing slots per token {} overflows the int32 routing plan", max_tokens, K);
    if (S > 0) {
      const auto& g = table.at(prefix + "shared_expert.gate_proj.weight");
      const auto& u = table.at(prefix + "shared_expert.up_proj.weight");
      const auto& d = table.at(prefix + "shared_expert.down_proj.weight");
      const auto& sg = table.at(prefix + "shared_expert_gate.weight");
      SY_CHECK(u.offset == g.offset + S * C,
               "shared expert gate and up weights of layer {} must be adjacent", layer);
      SY_CHECK(sg.numel == C, "shared_expert_gate of layer {} is not [1, {}]", layer, C);
      off_shared_gate_up = g.offset;
      off_shared_down = d.offset;
      off_shared_gate = sg.offset;
    }
    SY_CHECK(ep.size >= 1 && E % ep.size == 0 && (ep.size == 1 || ep.exchange),
             "expert parallel size {} with {} experts and {} exchange", ep.size, E,
             ep.exchange ? "an" : "no");
    // expert rows: N*K without expert parallelism (exactly); with it the balanced share, grown
    // by ensure_rows() when a plan delivers more
    const int64_t NK = max_tokens * K;
    rows_cap = NK;
    add_buffers(acts, cfg, layer, max_tokens, rows_cap, ep.exchange != nullptr, *this);
    dispatcher = make_token_dispatcher(be, cfg, ep, max_tokens, acts, dispatch);
    offsets_host.assign(static_cast<size_t>(E + 1), 0);
    prob_sums_host.assign(static_cast<size_t>(E), 0.f);
    prob_sums_d.assign(static_cast<size_t>(E), 0.0);
    dprobs_host.assign(static_cast<size_t>(E), 0.f);
    if (capacity.enabled() && capacity.policy == core::DropPolicy::importance)
      probs_host.assign(static_cast<size_t>(max_tokens * E), 0.f);
    if (cfg.moe.balance.bias_rate > 0) {
      bias_host.assign(static_cast<size_t>(E), 0.f);
      bias = static_cast<float*>(be.alloc(sizeof(float) * static_cast<size_t>(E)));  // zeros
    }
  }
  ~Impl() {
    if (bias) be.release(bias);
  }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  // Expert-row buffers hold one row per routed slot this rank computes: N*K without expert
  // parallelism; with it, whatever the exchange delivers (up to ep.size * N * K when every token
  // of the group picks this rank), so they grow (x1.5) when a plan needs more. Growth happens
  // only in forward, before the buffers are written, never between forward and backward.
  void ensure_rows(int64_t rows) {
    if (rows <= rows_cap) return;
    rows_cap = std::max(rows, rows_cap + rows_cap / 2);
    for_each_row_buffer(*this, C, I, ep.exchange != nullptr,
                        [&](const char* name, auto** slot, int64_t width, core::Keep) {
                          using T = std::remove_reference_t<decltype(**slot)>;
                          acts.ensure<T>(layer, name, rows_cap * width);
                        });
  }
  void shared_forward(const float* x, const float* params, int64_t N);
  const int32_t* capacity_drops(MoeStats& stats, int64_t N);
};

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

// Capacity (moe/capacity.h). Host sync: the router's choice idx (and, for importance dropping,
// probs) to the host, where the expert group's drop rule runs; the kept experts back to `kept`.
// Counts the routed slots before the drops.
const int32_t* MoeLayer::Impl::capacity_drops(MoeStats& stats, int64_t N) {
  const int64_t NK = N * K;
  stats.kept.resize(static_cast<size_t>(NK));
  be.copy_to_host(stats.kept.data(), idx, sizeof(int32_t) * static_cast<size_t>(NK));
  if (!probs_host.empty()) be.copy_to_host(probs_host.data(), probs, sizeof(float) * static_cast<size_t>(N * E));
  std::fill(stats.expert_counts.begin(), stats.expert_counts.end(), 0);
  stats.routed = 0;
  for (const int32_t e : stats.kept)
    if (e >= 0) ++stats.expert_counts[static_cast<size_t>(e)], ++stats.routed;
  const CapacityResult r = apply_capacity(capacity, stats.kept.data(), probs_host.data(), N, E, K,
                                          ep.exchange ? &ep.exchange->group() : nullptr);
  stats.capacity = r.capacity;
  stats.dropped = r.dropped;
  be.copy_from_host(kept, stats.kept.data(), sizeof(int32_t) * static_cast<size_t>(NK));
  return kept;
}

// Shared expert: sh_h, sh_a, sh_y = ffn(x); sh_logit = x Wsg^T.
void MoeLayer::Impl::shared_forward(const float* x, const float* params, int64_t N) {
  core::ffn_forward(be, sh_y, sh_h, sh_a, x, N, C, S, params + off_shared_gate_up,
                    params + off_shared_down, prec);
  be.gemm(false, true, N, 1, C, 1.0f, x, C, params + off_shared_gate, C, 0.0f, sh_logit, 1,
          prec.stored_activation());
}

static std::string moe_prefix(const core::ModelConfig& cfg, int layer) {
  return fmt::format("model.layers.{}.{}", layer, cfg.qwen_layout() ? "mlp." : "block_sparse_moe.");
}

MoeLayer::MoeLayer(core::Backend& be, const core::ModelConfig& cfg, const core::ParamTable& table,
                   int layer, int64_t max_tokens, const ExpertParallel& ep)
    : own_acts_(std::make_unique<core::ActivationStore>(be, core::Recompute::none)),
      impl_(std::make_unique<Impl>(be, cfg, table, layer, max_tokens, moe_prefix(cfg, layer), ep, *own_acts_,
                                   core::PrecisionPolicy{})) {
  own_acts_->allocate();
  stats_.expert_counts.assign(static_cast<size_t>(cfg.moe.n_experts), 0);
}

MoeLayer::MoeLayer(core::Backend& be, const core::ModelConfig& cfg, const core::ParamTable& table,
                   int layer, int64_t max_tokens, const ExpertParallel& ep,
                   core::ActivationStore& acts, const core::PrecisionPolicy& prec)
    : impl_(std::make_unique<Impl>(be, cfg, table, layer, max_tokens, moe_prefix(cfg, layer), ep, acts, prec)) {
  stats_.expert_counts.assign(static_cast<size_t>(cfg.moe.n_experts), 0);
}

MoeLayer::~MoeLayer() = default;  // here, where Impl is complete

const std::vector<float>& MoeLayer::selection_bias() const { return impl_->bias_host; }

void MoeLayer::set_selection_bias(const float* host) {
  Impl& m = *impl_;
  if (!m.bias) return;
  std::copy(host, host + m.E, m.bias_host.begin());
  m.be.copy_from_host(m.bias, m.bias_host.data(), sizeof(float) * static_cast<size_t>(m.E));
}

void MoeLayer::update_selection_bias(const int64_t* load, double rate) {
  Impl& m = *impl_;
  if (!m.bias) return;
  moe::update_selection_bias(m.bias_host.data(), load, m.E, rate);
  m.be.copy_from_host(m.bias, m.bias_host.data(), sizeof(float) * static_cast<size_t>(m.E));
}

void MoeLayer::set_aux_counts(const int64_t* counts, int64_t tokens, int64_t micro_batches) {
  Impl& m = *impl_;
  m.aux_counts.clear();
  if (counts) {
    SY_CHECK(tokens > 0 && micro_batches > 0, "set_aux_counts: {} tokens over {} micro-batches", tokens,
             micro_batches);
    m.aux_counts.assign(counts, counts + m.E);
    m.aux_count_tokens = static_cast<double>(tokens);
    m.aux_prob_tokens = static_cast<double>(tokens) / static_cast<double>(micro_batches);
  }
  if (m.last_N > 0) {  // the last forward's aux loss under the new counts (its prob sums are kept)
    const auto a = m.aux_terms(stats_.expert_counts, m.last_N);
    stats_.aux_loss = aux_loss(a.counts, a.count_tokens, m.prob_sums_d, a.prob_tokens);
  }
}

void MoeLayer::register_activations(core::ActivationStore& layout, const core::ModelConfig& cfg, int layer,
                                    int64_t max_tokens, int64_t expert_rows, bool expert_parallel) {
  SY_CHECK(layout.is_layout(), "MoeLayer::register_activations: a layout store only");
  Buffers unbound;  // a layout never binds
  add_buffers(layout, cfg, layer, max_tokens, expert_rows, expert_parallel, unbound);
}

void MoeLayer::forward(float* out, const float* x, const float* params, int64_t N) {
  Impl& m = *impl_;
  core::Backend& be = m.be;
  SY_CHECK(N >= 0 && N <= m.max_tokens, "MoeLayer::forward: N={} exceeds max_tokens={}", N,
           m.max_tokens);
  const int64_t C = m.C, E = m.E, K = m.K;
  m.last_N = N;
  stats_.routed = stats_.dropped = stats_.capacity = 0;
  stats_.kept.clear();
  if (N == 0) {
    std::fill(stats_.expert_counts.begin(), stats_.expert_counts.end(), 0);
    std::fill(m.offsets_host.begin(), m.offsets_host.end(), 0);
    stats_.aux_loss = stats_.z_loss = 0;
    return;
  }

  // route; over capacity, drop (the router keeps its choice in idx, dispatch reads kept)
  m.router.forward(be, m.logits, m.probs, m.lse, m.idx, m.gates, x, params, N, m.bias);
  const int32_t* dispatched = m.idx;
  if (m.capacity.enabled()) dispatched = m.capacity_drops(stats_, N);
  be.route_plan(m.pos, m.offsets, dispatched, N, E, K);
  be.copy_to_host(m.offsets_host.data(), m.offsets, sizeof(int32_t) * static_cast<size_t>(E + 1));

  // dispatch -> experts -> combine
  stats_.exchange = {};
  stats_.expert_seconds = 0;
  TokenDispatcher& d = *m.dispatcher;
  d.plan(RoutingPlan{N, dispatched, m.pos, m.gates, m.offsets_host.data(),
                     stats_.kept.empty() ? nullptr : stats_.kept.data()},
         [&m](int64_t rows) { m.ensure_rows(rows); }, stats_.exchange);
  stats_.exchange_plan = d.describe();
  d.dispatch_forward(m.xp, x, stats_.exchange);
  const auto t0 = std::chrono::steady_clock::now();
  m.experts.forward(be, m.ye, m.h, m.a, m.xp, d.expert_offsets(), params);
  stats_.expert_seconds += seconds_since(t0);
  d.combine_forward(out, m.ye, stats_.exchange);

  // shared expert: out += sigmoid(x Wsg^T) * ffn(x)
  if (m.S > 0) {
    m.shared_forward(x, params, N);
    be.sigmoid_gate_forward(out, m.sh_logit, m.sh_y, N, C);
  }
  // the output is an activation stored in the compute dtype
  m.prec.store(be, out, N * C);

  // statistics: counts from the plan (the router's choice: counted before the drops with
  // capacity), P_e via column sums of probs, z via sum of squares of lse
  if (!m.capacity.enabled()) {
    for (int64_t e = 0; e < E; ++e)
      stats_.expert_counts[static_cast<size_t>(e)] = m.offsets_host[e + 1] - m.offsets_host[e];
    stats_.routed = m.offsets_host[E];
  }
  be.zero(m.prob_sums, sizeof(float) * static_cast<size_t>(E));
  be.bias_backward(m.prob_sums, m.probs, N, E);
  be.copy_to_host(m.prob_sums_host.data(), m.prob_sums, sizeof(float) * static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) m.prob_sums_d[static_cast<size_t>(e)] = m.prob_sums_host[e];
  const auto a = m.aux_terms(stats_.expert_counts, N);
  stats_.aux_loss = aux_loss(a.counts, a.count_tokens, m.prob_sums_d, a.prob_tokens);
  stats_.z_loss = be.sum_squares(m.lse, N) / static_cast<double>(N);
}

void MoeLayer::recompute(const float* x, const float* params, int64_t N) {
  Impl& m = *impl_;
  SY_CHECK(N == m.last_N, "MoeLayer::recompute: N={} differs from the last forward's N={}", N,
           m.last_N);
  if (N == 0) return;
  TokenDispatcher& d = *m.dispatcher;
  if (!m.acts.kept(core::Keep::expensive)) {  // full: everything after the routing plan
    d.recompute_dispatch(m.xp, x, stats_.exchange);
    const auto t0 = std::chrono::steady_clock::now();
    m.experts.forward(m.be, m.ye, m.h, m.a, m.xp, d.expert_offsets(), params);
    stats_.expert_seconds += seconds_since(t0);
    d.recompute_combine(m.ye);
    if (m.S > 0) m.shared_forward(x, params, N);
  } else if (!m.acts.kept(core::Keep::cheap)) {  // selective: local dispatch, SwiGLU products
    const int64_t rows = d.rows();
    d.recompute_dispatch(m.xp, x, stats_.exchange);
    m.be.swiglu_forward(m.a, m.h, rows, m.I);
    m.prec.store(m.be, m.a, rows * m.I);
    if (m.S > 0) {
      m.be.swiglu_forward(m.sh_a, m.sh_h, N, m.S);
      m.prec.store(m.be, m.sh_a, N * m.S);
    }
  }
}

void MoeLayer::backward(float* dx, const float* dout, const float* x, const float* params,
                        float* grads, int64_t N, float d_aux, float d_z) {
  Impl& m = *impl_;
  core::Backend& be = m.be;
  SY_CHECK(N == m.last_N, "MoeLayer::backward: N={} differs from the last forward's N={}", N,
           m.last_N);
  if (N == 0) return;
  const int64_t C = m.C, E = m.E;

  // combine -> dy of the expert rows, dgates; experts -> dxp; dispatch -> dx (=)
  TokenDispatcher& d = *m.dispatcher;
  d.combine_backward(m.dye, m.dgates, dout, m.ye, stats_.exchange);
  m.prec.store(be, m.dye, d.rows() * C);  // feeds two GEMMs per expert
  const auto t0 = std::chrono::steady_clock::now();
  m.experts.backward(be, m.dxp, grads, m.dye, m.xp, m.h, m.a, d.expert_offsets(), params, m.dh, m.da);
  stats_.expert_seconds += seconds_since(t0);
  d.dispatch_backward(dx, m.dxp, stats_.exchange);

  // router: dgates + aux term (dL/dprobs shared by all tokens) + z term
  const float* dprobs_all = nullptr;
  if (d_aux != 0.f) {
    const auto a = m.aux_terms(stats_.expert_counts, N);
    aux_loss_dprobs(m.dprobs_host, a.counts, a.count_tokens, a.prob_tokens, d_aux);
    be.copy_from_host(m.dprobs_all, m.dprobs_host.data(), sizeof(float) * static_cast<size_t>(E));
    dprobs_all = m.dprobs_all;
  }
  const float z_coef = d_z / static_cast<float>(N);
  m.router.backward(be, dx, grads, m.dlogits, m.dgates, m.logits, m.probs, m.lse, m.idx, m.gates, dprobs_all,
                    z_coef, x, params, N);

  // shared expert and its sigmoid gate
  if (m.S > 0) {
    be.sigmoid_gate_backward(m.sh_dy, m.sh_dlogit, dout, m.sh_logit, m.sh_y, N, C);
    m.prec.store(be, m.sh_dy, N * C);
    // dWsg [1,C] += dlogit^T x; dx += dlogit Wsg
    be.gemm(true, false, 1, C, N, 1.0f, m.sh_dlogit, 1, x, C, 1.0f, grads + m.off_shared_gate, C,
            m.prec.weight_grad());
    be.gemm(false, false, N, C, 1, 1.0f, m.sh_dlogit, 1, params + m.off_shared_gate, C, 1.0f, dx,
            C, m.prec.activation());
    core::ffn_backward(be, dx, /*accumulate_dx=*/true, grads + m.off_shared_gate_up,
                       grads + m.off_shared_down, m.sh_dy, x, m.sh_h, m.sh_a, N, C, m.S,
                       params + m.off_shared_gate_up, params + m.off_shared_down, m.sh_dh, m.sh_da,
                       m.prec, /*dy_stored=*/true);
  }
}

}  // namespace switchyard::moe
