// core/precision.h: the mixed-precision policy. One object decides the dtype of every role a
// tensor or GEMM plays; layers only name the role.
//   master weights, gradients, optimizer state: fp32 always
//   compute weights: a copy of the master weights rounded to `compute`, written by the optimizer
//     in its update pass (the router weights stay fp32: routing decisions are made in fp32)
//   GEMMs: operands in `compute`, fp32 accumulation; activation outputs stored in `compute`,
//     weight-gradient outputs accumulated in fp32
//   stored in `compute` (store()): norm outputs, SwiGLU products, activation gradients that two
//     GEMMs read; the fp32 residual stream and its gradient are rounded only as GEMM operands
//   attention: q/k/v and its output in `compute`, softmax statistics in fp32
//   router logits, softmax and top-k, norm statistics, residual stream, loss, aux and z losses:
//     fp32
// fp16 needs loss scaling (optim/loss_scaler.h): gradients below 6e-8 flush to zero otherwise.
#pragma once

#include "core/backend.h"

namespace switchyard::core {

struct PrecisionPolicy {
  Dtype compute = Dtype::f32;

  bool mixed() const { return compute != Dtype::f32; }
  bool needs_loss_scaling() const { return compute == Dtype::f16; }

  // GEMM roles. Operands in one of two states: *stored* (an activation its producer already
  // rounded with store(), or a compute weight) needs no rounding; *fresh* (an fp32 value: the
  // residual-stream gradient, router dlogits) is rounded on the fly. Rounding is idempotent, so
  // the states only save passes, never change results.
  // Forward and input-gradient GEMMs, fresh activation x compute weight -> stored activation.
  GemmRounding activation() const { return {compute, Dtype::f32, compute, compute}; }
  // The same with a stored activation operand.
  GemmRounding stored_activation() const { return {Dtype::f32, Dtype::f32, compute, compute}; }
  // Weight gradients (fp32 accumulation): fresh dY x stored X, and stored dY x stored X.
  GemmRounding weight_grad() const { return {compute, Dtype::f32, Dtype::f32, compute}; }
  GemmRounding stored_weight_grad() const { return {Dtype::f32, Dtype::f32, Dtype::f32, compute}; }
  // Router GEMMs: the stored (compute-dtype) input against fp32 router weights, fp32 logits; the
  // weight gradient from fp32 dlogits; the input gradient rounded like any activation gradient.
  GemmRounding router() const { return {Dtype::f32, Dtype::f32, Dtype::f32}; }
  GemmRounding router_wgrad() const { return {Dtype::f32, Dtype::f32, Dtype::f32}; }
  GemmRounding router_dgrad() const { return {Dtype::f32, Dtype::f32, compute}; }
  // An activation stored between kernels (norm outputs, post-RoPE q/k/v, attention output, SwiGLU
  // products, activation gradients that feed two GEMMs): rounded in place.
  void store(Backend& be, float* x, int64_t n) const {
    if (compute != Dtype::f32) be.round_to(compute, x, n);
  }
};

}  // namespace switchyard::core
