// core/precision.h: the mixed-precision policy. One object decides the dtype of every role a
// tensor or GEMM plays; layers only name the role.
//   master weights, gradients, optimizer state: fp32 always
//   compute weights: a copy of the master weights rounded to `compute`, refreshed after each
//     optimizer step (the router weights stay fp32: routing decisions are made in fp32)
//   GEMMs: operands in `compute`, fp32 accumulation; activation outputs stored in `compute`,
//     weight-gradient outputs accumulated in fp32
//   attention: q/k/v and its output in `compute`, softmax statistics in fp32
//   router logits, softmax and top-k, norm statistics, residual stream, loss, aux and z losses:
//     fp32
// fp16 needs loss scaling (optim/loss_scaler.h): gradients below 6e-8 flush to zero otherwise.
#pragma once

#include <string>

#include "core/backend.h"
#include "core/error.h"

namespace switchyard::core {

struct PrecisionPolicy {
  Dtype compute = Dtype::f32;

  static PrecisionPolicy parse(const std::string& name) {
    if (name == "fp32") return {Dtype::f32};
    if (name == "bf16") return {Dtype::bf16};
    if (name == "fp16") return {Dtype::f16};
    throw_usage("precision '{}' is not one of fp32, bf16, fp16", name);
  }
  bool mixed() const { return compute != Dtype::f32; }
  bool needs_loss_scaling() const { return compute == Dtype::f16; }

  // Forward GEMMs and input-gradient GEMMs: activation x compute weight (already rounded).
  GemmRounding activation() const { return {compute, Dtype::f32, compute}; }
  // Weight-gradient GEMMs: both operands activations, accumulated into fp32 gradients.
  GemmRounding weight_grad() const { return {compute, compute, Dtype::f32}; }
  // Router GEMMs: compute-dtype activations against fp32 router weights, fp32 logits.
  GemmRounding router() const { return {compute, Dtype::f32, Dtype::f32}; }
  // Router weight gradient: fp32 dlogits x compute-dtype activations, fp32 accumulation.
  GemmRounding router_wgrad() const { return {Dtype::f32, compute, Dtype::f32}; }
  // Router input gradient: fp32 dlogits x fp32 weights into a compute-dtype gradient.
  GemmRounding router_dgrad() const { return {Dtype::f32, Dtype::f32, compute}; }
  // An activation stored between kernels (post-RoPE q/k/v, attention output): rounded in place.
  void store(Backend& be, float* x, int64_t n) const {
    if (compute != Dtype::f32) be.round_to(compute, x, n);
  }
};

}  // namespace switchyard::core
