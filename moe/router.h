// moe/router.h: the router of one MoE layer and the balancing bookkeeping.
//   logits = x Wr^T [N,E] (fp32) -> scores -> top-k selection -> gates
// Scoring (model.moe.router.scoring):
//   softmax: p = softmax(logits); select the top-k of p + b; gates = the selected p.
//   sigmoid (DeepSeek-V3): s = sigmoid(logits); select the top-k of s + b; gates = the selected
//            s. `probs` then holds the normalised affinities s / sum_e s.
//   Top-p (model.moe.router.top_p > 0, adaptive experts per token): K = router.k_max slots are
//   selected as above; a token keeps the shortest prefix (in selection order) whose probs (the
//   softmax p; sigmoid: the affinities s / sum_e s) add up to >= top_p, at least 1, at most
//   k_max. Its other slots are unused: idx -1, gate 0 (dropped by the routing plan). top_p = 0:
//   all K = top_k slots kept, bit for bit the routing without the option.
//   Gates are divided by their sum (over the kept slots) when model.moe.normalize_topk. Ties go
//   to the lower index.
//   b: the aux-loss-free selection bias [E] (model.moe.balance.bias_rate > 0; else none). It
//   steers the selection only: no gate value and no gradient sees it. With b = 0 the routing is
//   bit for bit that of no bias.
// Backward turns dL/dgates (from combine) plus the aux/z loss terms into dL/dlogits (sigmoid:
// dlogit = ds * s(1-s), ds from dgates through the renormalisation over the kept slots; the
// top-p cut itself is piecewise constant, no gradient), then accumulates
// dWr += dlogits^T x and adds dlogits Wr to dx.
// Balancing losses (see moe/moe_layer.h):
//   aux = E * sum_e (count_e / N) * P_e,  P_e = mean_t probs[t,e]  (counts are constants;
//         under aux_scope global count_e and N are those of the whole step, moe/moe_layer.h);
//         probs are the softmax, or under sigmoid scoring the normalised affinities s / sum_e s
//         (DeepSeek-V3's sequence-wise aux loss uses these), so P sums to 1 in both.
//   z   = mean_t lse_t^2, lse = logsumexp of the logits under either scoring.
// Selection-bias update (once per optimizer step, launch/train_step.cpp), load_e = routing slots
// of expert e over every micro-batch of the step and every rank:
//   b_e += bias_rate * sign(mean_e load - load_e)
#pragma once

#include <cstdint>
#include <vector>

#include "core/backend.h"
#include "core/precision.h"

namespace switchyard::moe {

class Router {
 public:
  // w_offset: element offset of the router weight [E, C] in the parameter (and gradient) arena.
  // prec: the router GEMMs read compute-dtype activations against fp32 weights (core/precision.h).
  // K: routing slots per token (core::MoeConfig::slots_per_token: k_max under top-p, else top_k).
  Router(int64_t C, int64_t E, int64_t K, core::RouterScoring scoring, bool renormalize,
         float top_p, int64_t w_offset, const core::PrecisionPolicy& prec = {});

  int64_t experts() const { return E_; }
  int64_t top_k() const { return K_; }  // routing slots per token
  core::RouterScoring scoring() const { return scoring_; }
  // Sigmoid scoring reads the forward's logits in backward (they must be kept).
  bool backward_reads_logits() const { return scoring_ == core::RouterScoring::sigmoid; }

  // logits, probs [N,E]; lse [N]; idx, gates [N,K] (all written). bias [E]: the selection bias
  // in the backend's memory, or null.
  void forward(core::Backend& be, float* logits, float* probs, float* lse, int32_t* idx,
               float* gates, const float* x, const float* params, int64_t N,
               const float* bias = nullptr) const;

  // dlogits [N,E] is written (scratch and result); dx += dlogits Wr; grads[Wr] += dlogits^T x.
  // logits: the forward's (read under sigmoid scoring only).
  // dprobs_all [E] (may be null): dL/dprobs[t,e] shared by every token (the aux-loss term).
  // z_coef: dL/d(sum_t lse_t^2).
  void backward(core::Backend& be, float* dx, float* grads, float* dlogits, const float* dgates,
                const float* logits, const float* probs, const float* lse, const int32_t* idx, const float* gates,
                const float* dprobs_all, float z_coef, const float* x, const float* params,
                int64_t N) const;

 private:
  int64_t C_, E_, K_;
  core::RouterScoring scoring_;
  bool renormalize_;
  float top_p_;
  int64_t w_offset_;
  core::PrecisionPolicy prec_;
};

// aux = E * sum_e (counts[e] / count_tokens) * (prob_sums[e] / prob_tokens); prob_sums[e] =
// sum_t probs[t,e]. One micro-batch of N tokens: count_tokens = prob_tokens = N. Global scope
// (moe/moe_layer.h): counts and count_tokens of the whole step, prob_tokens its mean micro-batch.
double aux_loss(const std::vector<int64_t>& counts, double count_tokens,
                const std::vector<double>& prob_sums, double prob_tokens);
// dL/dprobs[t,e] of d_aux * aux, the same for every token:
// d_aux * E * counts[e] / count_tokens / prob_tokens.
void aux_loss_dprobs(std::vector<float>& out, const std::vector<int64_t>& counts,
                     double count_tokens, double prob_tokens, double d_aux);

// One step of the aux-loss-free bias: bias[e] += rate * sign(mean(load) - load[e]) for the E
// experts (load: routing slots of the whole step, summed over every rank).
void update_selection_bias(float* bias, const int64_t* load, int64_t E, double rate);

}  // namespace switchyard::moe
