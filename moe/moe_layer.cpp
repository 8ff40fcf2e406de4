// moe/moe_layer.cpp: the MoE feed-forward sublayer (see moe/moe_layer.h).
// Forward:  logits = x Wr^T -> softmax/top-k (probs, lse, idx, gates) -> routing plan (pos,
//           expert_offsets, copied to the host) -> dispatch -> grouped experts -> combine;
//           with a shared expert: out += sigmoid(x Wsg^T) * ffn_shared(x).
// Backward: combine -> (dy, dgates); experts -> dxp; dispatch -> dx (=); router (dgates + aux/z
//           terms) -> dlogits, dWr, dx +=; shared expert and its gate -> dx +=.
// Every buffer is allocated once for max_tokens in the constructor.
#include "moe/moe_layer.h"

#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/ffn.h"
#include "moe/experts.h"
#include "moe/router.h"

namespace switchyard::moe {

namespace {
// Backend allocations released when the owner goes (also when the Impl constructor throws).
struct Allocations {
  core::Backend& be;
  std::vector<void*> ptrs;
  explicit Allocations(core::Backend& b) : be(b) {}
  ~Allocations() {
    for (void* p : ptrs) be.release(p);
  }
  Allocations(const Allocations&) = delete;
  Allocations& operator=(const Allocations&) = delete;
  void* take(size_t bytes) {
    ptrs.reserve(ptrs.size() + 1);
    void* p = be.alloc(bytes > 0 ? bytes : 1);
    ptrs.push_back(p);
    return p;
  }
};
}  // namespace

struct MoeLayer::Impl {
  core::Backend& be;
  int64_t C, E, K, I, S /* shared expert width, 0: none */, max_tokens;
  Router router;
  Experts experts;
  int64_t off_shared_gate_up = -1, off_shared_down = -1, off_shared_gate = -1;

  Allocations owned;  // every backend buffer below

  // saved by forward for backward
  float *logits = nullptr, *probs = nullptr, *lse = nullptr,
        *gates = nullptr;                                          // [N,E],[N,E],[N],[N,K]
  int32_t *idx = nullptr, *pos = nullptr, *offsets = nullptr;      // [N,K],[N*K],[E+1]
  float *xp = nullptr, *h = nullptr, *a = nullptr, *ye = nullptr;  // [NK,C],[NK,2I],[NK,I],[NK,C]
  float *sh_h = nullptr, *sh_a = nullptr, *sh_y = nullptr, *sh_logit = nullptr;  // shared expert
  // scratch
  float* prob_sums = nullptr;                                          // [E]
  float *dye = nullptr, *dxp = nullptr, *dh = nullptr, *da = nullptr;  // expert rows
  float *dgates = nullptr, *dlogits = nullptr, *dprobs_all = nullptr;  // [N,K],[N,E],[E]
  float *sh_dy = nullptr, *sh_dlogit = nullptr, *sh_dh = nullptr, *sh_da = nullptr;

  // host copies (sized E, allocated once)
  std::vector<int32_t> offsets_host;  // [E+1]
  std::vector<float> prob_sums_host;  // [E]
  std::vector<double> prob_sums_d;    // [E]
  std::vector<float> dprobs_host;     // [E]
  int64_t last_N = -1;                // tokens of the last forward (backward must match)

  Impl(core::Backend& b, const core::ModelConfig& cfg, const core::ParamTable& table, int layer,
       int64_t max_tok, const std::string& prefix)
      : be(b),
        C(cfg.d_model),
        E(cfg.moe.n_experts),
        K(cfg.moe.top_k),
        I(cfg.moe.expert_size),
        S(cfg.moe.shared_expert_size),
        max_tokens(max_tok),
        router(cfg.d_model, cfg.moe.n_experts, cfg.moe.top_k, cfg.moe.normalize_topk,
               table.at(prefix + "gate.weight").offset),
        experts(table, prefix, cfg.qwen_layout(), cfg.moe.n_experts, cfg.d_model,
                cfg.moe.expert_size),
        owned(b) {
    SY_CHECK(table.at(prefix + "gate.weight").numel == E * C,
             "router weight of layer {} is not [{}, {}]", layer, E, C);
    SY_CHECK(max_tokens >= 0 && max_tokens * K <= INT32_MAX,
             "max_tokens {} * top_k {} overflows the int32 routing plan", max_tokens, K);
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
    const int64_t N = max_tokens, NK = max_tokens * K;
    logits = falloc(N * E);
    probs = falloc(N * E);
    lse = falloc(N);
    gates = falloc(N * K);
    idx = ialloc(N * K);
    pos = ialloc(NK);
    offsets = ialloc(E + 1);
    xp = falloc(NK * C);
    h = falloc(NK * 2 * I);
    a = falloc(NK * I);
    ye = falloc(NK * C);
    prob_sums = falloc(E);
    dye = falloc(NK * C);
    dxp = falloc(NK * C);
    dh = falloc(NK * 2 * I);
    da = falloc(NK * I);
    dgates = falloc(N * K);
    dlogits = falloc(N * E);
    dprobs_all = falloc(E);
    if (S > 0) {
      sh_h = falloc(N * 2 * S);
      sh_a = falloc(N * S);
      sh_y = falloc(N * C);
      sh_logit = falloc(N);
      sh_dy = falloc(N * C);
      sh_dlogit = falloc(N);
      sh_dh = falloc(N * 2 * S);
      sh_da = falloc(N * S);
    }
    offsets_host.assign(static_cast<size_t>(E + 1), 0);
    prob_sums_host.assign(static_cast<size_t>(E), 0.f);
    prob_sums_d.assign(static_cast<size_t>(E), 0.0);
    dprobs_host.assign(static_cast<size_t>(E), 0.f);
  }

  float* falloc(int64_t n) {
    return static_cast<float*>(owned.take(sizeof(float) * static_cast<size_t>(n)));
  }
  int32_t* ialloc(int64_t n) {
    return static_cast<int32_t*>(owned.take(sizeof(int32_t) * static_cast<size_t>(n)));
  }
};

static std::string moe_prefix(const core::ModelConfig& cfg, int layer) {
  return fmt::format("model.layers.{}.{}", layer, cfg.qwen_layout() ? "mlp." : "block_sparse_moe.");
}

MoeLayer::MoeLayer(core::Backend& be, const core::ModelConfig& cfg, const core::ParamTable& table,
                   int layer, int64_t max_tokens)
    : impl_(new Impl(be, cfg, table, layer, max_tokens, moe_prefix(cfg, layer))) {
  stats_.expert_counts.assign(static_cast<size_t>(cfg.moe.n_experts), 0);
}

MoeLayer::~MoeLayer() { delete impl_; }

void MoeLayer::forward(float* out, const float* x, const float* params, int64_t N) {
  Impl& m = *impl_;
  core::Backend& be = m.be;
  SY_CHECK(N >= 0 && N <= m.max_tokens, "MoeLayer::forward: N={} exceeds max_tokens={}", N,
           m.max_tokens);
  const int64_t C = m.C, E = m.E, K = m.K;
  m.last_N = N;
  if (N == 0) {
    std::fill(stats_.expert_counts.begin(), stats_.expert_counts.end(), 0);
    std::fill(m.offsets_host.begin(), m.offsets_host.end(), 0);
    stats_.aux_loss = stats_.z_loss = 0;
    return;
  }

  // route
  m.router.forward(be, m.logits, m.probs, m.lse, m.idx, m.gates, x, params, N);
  be.route_plan(m.pos, m.offsets, m.idx, N, E, K);
  be.copy_to_host(m.offsets_host.data(), m.offsets, sizeof(int32_t) * static_cast<size_t>(E + 1));

  // dispatch -> experts -> combine
  be.dispatch_forward(m.xp, x, m.pos, N, K, C);
  m.experts.forward(be, m.ye, m.h, m.a, m.xp, m.offsets_host.data(), params);
  be.combine_forward(out, m.ye, m.pos, m.gates, N, K, C);

  // shared expert: out += sigmoid(x Wsg^T) * ffn(x)
  if (m.S > 0) {
    core::ffn_forward(be, m.sh_y, m.sh_h, m.sh_a, x, N, C, m.S, params + m.off_shared_gate_up,
                      params + m.off_shared_down);
    be.gemm(false, true, N, 1, C, 1.0f, x, C, params + m.off_shared_gate, C, 0.0f, m.sh_logit, 1);
    be.sigmoid_gate_forward(out, m.sh_logit, m.sh_y, N, C);
  }

  // statistics: counts from the plan, P_e via column sums of probs, z via sum of squares of lse
  for (int64_t e = 0; e < E; ++e)
    stats_.expert_counts[static_cast<size_t>(e)] = m.offsets_host[e + 1] - m.offsets_host[e];
  be.zero(m.prob_sums, sizeof(float) * static_cast<size_t>(E));
  be.bias_backward(m.prob_sums, m.probs, N, E);
  be.copy_to_host(m.prob_sums_host.data(), m.prob_sums, sizeof(float) * static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) m.prob_sums_d[static_cast<size_t>(e)] = m.prob_sums_host[e];
  stats_.aux_loss = aux_loss(stats_.expert_counts, m.prob_sums_d, N);
  stats_.z_loss = be.sum_squares(m.lse, N) / static_cast<double>(N);
}

void MoeLayer::backward(float* dx, const float* dout, const float* x, const float* params,
                        float* grads, int64_t N, float d_aux, float d_z) {
  Impl& m = *impl_;
  core::Backend& be = m.be;
  SY_CHECK(N == m.last_N, "MoeLayer::backward: N={} differs from the last forward's N={}", N,
           m.last_N);
  if (N == 0) return;
  const int64_t C = m.C, E = m.E, K = m.K;

  // combine -> dy of the expert rows, dgates
  be.combine_backward(m.dye, m.dgates, dout, m.ye, m.pos, m.gates, N, K, C);
  // experts -> dxp; dispatch -> dx (=)
  m.experts.backward(be, m.dxp, grads, m.dye, m.xp, m.h, m.a, m.offsets_host.data(), params, m.dh,
                     m.da);
  be.dispatch_backward(dx, m.dxp, m.pos, N, K, C);

  // router: dgates + aux term (dL/dprobs shared by all tokens) + z term
  const float* dprobs_all = nullptr;
  if (d_aux != 0.f) {
    aux_loss_dprobs(m.dprobs_host, stats_.expert_counts, N, d_aux);
    be.copy_from_host(m.dprobs_all, m.dprobs_host.data(), sizeof(float) * static_cast<size_t>(E));
    dprobs_all = m.dprobs_all;
  }
  const float z_coef = d_z / static_cast<float>(N);
  m.router.backward(be, dx, grads, m.dlogits, m.dgates, m.probs, m.lse, m.idx, m.gates, dprobs_all,
                    z_coef, x, params, N);

  // shared expert and its sigmoid gate
  if (m.S > 0) {
    be.sigmoid_gate_backward(m.sh_dy, m.sh_dlogit, dout, m.sh_logit, m.sh_y, N, C);
    // dWsg [1,C] += dlogit^T x; dx += dlogit Wsg
    be.gemm(true, false, 1, C, N, 1.0f, m.sh_dlogit, 1, x, C, 1.0f, grads + m.off_shared_gate, C);
    be.gemm(false, false, N, C, 1, 1.0f, m.sh_dlogit, 1, params + m.off_shared_gate, C, 1.0f, dx,
            C);
    core::ffn_backward(be, dx, /*accumulate_dx=*/true, grads + m.off_shared_gate_up,
                       grads + m.off_shared_down, m.sh_dy, x, m.sh_h, m.sh_a, N, C, m.S,
                       params + m.off_shared_gate_up, params + m.off_shared_down, m.sh_dh, m.sh_da);
  }
}

}  // namespace switchyard::moe
