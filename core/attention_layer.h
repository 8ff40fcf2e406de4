// core/attention_layer.h: the self-attention sublayer of one transformer block:
//   qkv = x Wqkv^T (+ bias) -> RoPE on q,k -> causal GQA attention -> out = att Wo^T.
// x is the normalised input [B*T, C]; out [B*T, C] is written (=). The layer keeps what its
// backward needs (post-RoPE qkv, attention output, log-sum-exp) in buffers it owns, sized for
// max_tokens = B*T at construction. Backward writes dx (=) and accumulates parameter grads (+=).
#pragma once

#include <cstdint>

#include "core/backend.h"
#include "core/config.h"
#include "core/params.h"

namespace switchyard::core {

class AttentionLayer {
 public:
  AttentionLayer(Backend& be, const ModelConfig& cfg, const ParamTable& table, int layer,
                 int64_t max_tokens);
  ~AttentionLayer();
  AttentionLayer(const AttentionLayer&) = delete;
  AttentionLayer& operator=(const AttentionLayer&) = delete;

  // params / grads: the arena bases (tensors are found by the table's offsets).
  void forward(float* out, const float* x, const float* params, int64_t B, int64_t T);
  void backward(float* dx, const float* dout, const float* x, const float* params, float* grads,
                int64_t B, int64_t T);

 private:
  Backend& be_;
  AttentionShape shape_;  // B and T filled per call
  float theta_;
  int64_t C_, max_tokens_;
  int64_t off_wqkv_, off_bqkv_ /* -1: no bias */, off_wo_;
  float *qkv_ = nullptr, *att_ = nullptr, *lse_ = nullptr;     // saved
  float *dqkv_ = nullptr, *datt_ = nullptr;                     // scratch
};

}  // namespace switchyard::core
