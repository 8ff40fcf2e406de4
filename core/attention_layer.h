// core/attention_layer.h: the self-attention sublayer of one transformer block:
//   qkv = x Wqkv^T (+ bias) -> RoPE on q,k -> causal GQA attention -> out = att Wo^T.
// x is the normalised input [B*T, C], stored in the compute dtype (PrecisionPolicy::store);
// out [B*T, C] is written (=). What backward needs (post-RoPE
// qkv, attention output, log-sum-exp) is registered with the ActivationStore as `expensive`:
// under full checkpointing it is shared between layers and the model reruns forward() before
// backward. Backward writes dx (=) and accumulates parameter grads (+=). GEMM dtypes come from the
// PrecisionPolicy; `params` are the compute weights (core/precision.h).
#pragma once

#include <cstdint>
#include <memory>

#include "core/activations.h"
#include "core/backend.h"
#include "core/config.h"
#include "core/params.h"
#include "core/precision.h"

namespace switchyard::core {

class AttentionLayer {
 public:
  // A layer of a model: buffers registered with the model's store (allocated by the model).
  AttentionLayer(Backend& be, const ModelConfig& cfg, const ParamTable& table, int layer,
                 int64_t max_tokens, ActivationStore& acts, const PrecisionPolicy& prec);
  // A layer that owns its buffers (fp32, everything kept): for tests and tools.
  AttentionLayer(Backend& be, const ModelConfig& cfg, const ParamTable& table, int layer,
                 int64_t max_tokens);
  AttentionLayer(const AttentionLayer&) = delete;
  AttentionLayer& operator=(const AttentionLayer&) = delete;

  // Registers the activation buffers of layer `layer` (max_tokens rows) with a layout store
  // (core/activations.h), building no layer: launch/plan counts them so. The constructors register
  // the same list.
  static void register_activations(ActivationStore& layout, const ModelConfig& cfg, int layer,
                                   int64_t max_tokens);

  // params / grads: the arena bases (tensors are found by the table's offsets). doc_start: packed
  // rows, [B*T] in the backend's memory or null (AttentionShape::doc_start); backward takes the
  // one its forward had.
  void forward(float* out, const float* x, const float* params, int64_t B, int64_t T,
               const int32_t* doc_start = nullptr);
  void backward(float* dx, const float* dout, const float* x, const float* params, float* grads,
                int64_t B, int64_t T, const int32_t* doc_start = nullptr);
  // Incremental decoding of one sequence (inference; nothing is kept for backward). cache
  // [>= pos+n, qkv_width()] (backend memory) holds this layer's qkv rows after RoPE of positions
  // [0, pos); the n rows of x [n, C] (positions pos..pos+n-1) are appended to it and out [n, C] gets
  // the rows the forward of the whole sequence gives there. The GEMMs and RoPE run on the n new rows
  // only; attention is attention_decode for one row, else attention_forward over all pos+n rows
  // with its last n kept (a prefill). pos + n <= the layer's max_tokens.
  void decode(float* out, const float* x, const float* params, float* cache, int64_t pos, int64_t n);
  int64_t qkv_width() const { return shape_.qkv_width(); }

 private:
  struct Buffers {
    float *qkv = nullptr, *att = nullptr, *lse = nullptr;  // saved (expensive)
    float *dqkv = nullptr, *datt = nullptr;                // scratch
  };
  static void add_buffers(ActivationStore& acts, const ModelConfig& cfg, int layer, int64_t max_tokens,
                          Buffers& b);
  void setup(const ModelConfig& cfg, const ParamTable& table, int layer, ActivationStore& acts);
  void attend(const float* x, const float* params);  // qkv, RoPE, attention into the saved buffers
  Backend& be_;
  PrecisionPolicy prec_;
  AttentionShape shape_;  // B, T and doc_start filled per call
  float theta_;
  int64_t C_, max_tokens_;
  int64_t off_wqkv_, off_bqkv_ /* -1: no bias */, off_wo_;
  Buffers buf_;                                                 // bound by the store
  std::unique_ptr<ActivationStore> own_acts_;                   // standalone layers only
};

}  // namespace switchyard::core
