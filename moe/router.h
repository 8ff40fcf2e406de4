// moe/router.h: the router of one MoE layer and the balancing-loss bookkeeping.
//   logits = x Wr^T [N,E] -> softmax (fp32) -> top-k -> gates (renormalised when configured)
// Backward turns dL/dgates (from combine) plus the aux/z loss terms into dL/dlogits, then
// accumulates dWr += dlogits^T x and adds dlogits Wr to dx.
// Balancing losses (see moe/moe_layer.h):
//   aux = E * sum_e (count_e / N) * P_e,  P_e = mean_t probs[t,e]  (counts are constants)
//   z   = mean_t lse_t^2
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
  Router(int64_t C, int64_t E, int64_t K, bool renormalize, int64_t w_offset,
         const core::PrecisionPolicy& prec = {});

  int64_t experts() const { return E_; }
  int64_t top_k() const { return K_; }

  // logits, probs [N,E]; lse [N]; idx, gates [N,K] (all written).
  void forward(core::Backend& be, float* logits, float* probs, float* lse, int32_t* idx,
               float* gates, const float* x, const float* params, int64_t N) const;

  // dlogits [N,E] is written (scratch and result); dx += dlogits Wr; grads[Wr] += dlogits^T x.
  // dprobs_all [E] (may be null): dL/dprobs[t,e] shared by every token (the aux-loss term).
  // z_coef: dL/d(sum_t lse_t^2).
  void backward(core::Backend& be, float* dx, float* grads, float* dlogits, const float* dgates,
                const float* probs, const float* lse, const int32_t* idx, const float* gates,
                const float* dprobs_all, float z_coef, const float* x, const float* params,
                int64_t N) const;

 private:
  int64_t C_, E_, K_;
  bool renormalize_;
  int64_t w_offset_;
  core::PrecisionPolicy prec_;
};

// aux = E * sum_e (counts[e] / N) * (prob_sums[e] / N); prob_sums[e] = sum_t probs[t,e].
double aux_loss(const std::vector<int64_t>& counts, const std::vector<double>& prob_sums,
                int64_t N);
// dL/dprobs[t,e] of d_aux * aux, the same for every token: d_aux * E * counts[e] / N / N.
void aux_loss_dprobs(std::vector<float>& out, const std::vector<int64_t>& counts, int64_t N,
                     double d_aux);

}  // namespace switchyard::moe
