// core/attention_layer.cpp: the self-attention sublayer (see core/attention_layer.h).
#include "core/attention_layer.h"

#include <fmt/format.h>

#include <string>

#include "core/error.h"

namespace switchyard::core {

AttentionLayer::AttentionLayer(Backend& be, const ModelConfig& cfg, const ParamTable& table,
                               int layer, int64_t max_tokens, ActivationStore& acts,
                               const PrecisionPolicy& prec)
    : be_(be), prec_(prec), theta_(static_cast<float>(cfg.rope_theta)), C_(cfg.d_model),
      max_tokens_(max_tokens) {
  setup(cfg, table, layer, acts);
}

AttentionLayer::AttentionLayer(Backend& be, const ModelConfig& cfg, const ParamTable& table,
                               int layer, int64_t max_tokens)
    : be_(be), theta_(static_cast<float>(cfg.rope_theta)), C_(cfg.d_model),
      max_tokens_(max_tokens), own_acts_(std::make_unique<ActivationStore>(be, Recompute::none)) {
  setup(cfg, table, layer, *own_acts_);
  own_acts_->allocate();
}

void AttentionLayer::setup(const ModelConfig& cfg, const ParamTable& table, int layer,
                           ActivationStore& acts) {
  const int64_t max_tokens = max_tokens_;
  shape_.NH = cfg.n_heads;
  shape_.NKV = cfg.n_kv_heads;
  shape_.HD = cfg.hd();
  SY_CHECK(shape_.NH > 0 && shape_.NKV > 0 && shape_.NH % shape_.NKV == 0,
           "attention layer {}: n_heads {} must be a multiple of n_kv_heads {}", layer,
           shape_.NH, shape_.NKV);
  SY_CHECK(max_tokens > 0, "attention layer {}: max_tokens {}", layer, max_tokens);
  const std::string p = fmt::format("model.layers.{}.self_attn.", layer);
  const int64_t qw = shape_.q_width(), kvw = shape_.NKV * shape_.HD;

  // q, k, v weights (and biases) must be adjacent: one [qkv_width, C] matrix.
  const ParamSpec& wq = table.at(p + "q_proj.weight");
  const ParamSpec& wk = table.at(p + "k_proj.weight");
  const ParamSpec& wv = table.at(p + "v_proj.weight");
  SY_CHECK(wq.numel == qw * C_ && wk.numel == kvw * C_ && wv.numel == kvw * C_,
           "attention layer {}: q/k/v weight shapes do not match the config", layer);
  SY_CHECK(wk.offset == wq.offset + wq.numel && wv.offset == wk.offset + wk.numel,
           "attention layer {}: q/k/v weights are not adjacent in the arena", layer);
  off_wqkv_ = wq.offset;
  off_bqkv_ = -1;
  const int bq = table.find(p + "q_proj.bias");
  if (bq >= 0) {
    const ParamSpec& q = table[static_cast<size_t>(bq)];
    const ParamSpec& k = table.at(p + "k_proj.bias");
    const ParamSpec& v = table.at(p + "v_proj.bias");
    SY_CHECK(q.numel == qw && k.numel == kvw && v.numel == kvw,
             "attention layer {}: q/k/v bias shapes do not match the config", layer);
    SY_CHECK(k.offset == q.offset + q.numel && v.offset == k.offset + k.numel,
             "attention layer {}: q/k/v biases are not adjacent in the arena", layer);
    off_bqkv_ = q.offset;
  }
  const ParamSpec& wo = table.at(p + "o_proj.weight");
  SY_CHECK(wo.numel == C_ * qw, "attention layer {}: o_proj shape does not match", layer);
  off_wo_ = wo.offset;

  add_buffers(acts, cfg, layer, max_tokens, buf_);
}

void AttentionLayer::add_buffers(ActivationStore& acts, const ModelConfig& cfg, int layer,
                                 int64_t max_tokens, Buffers& b) {
  AttentionShape shape;
  shape.NH = cfg.n_heads;
  shape.NKV = cfg.n_kv_heads;
  shape.HD = cfg.hd();
  const int64_t W = shape.qkv_width(), qw = shape.q_width();
  acts.add(layer, "attn.qkv", &b.qkv, max_tokens * W, Keep::expensive);
  acts.add(layer, "attn.out", &b.att, max_tokens * qw, Keep::expensive);
  acts.add(layer, "attn.lse", &b.lse, max_tokens * shape.NH, Keep::expensive);
  acts.add(layer, "attn.dqkv", &b.dqkv, max_tokens * W, Keep::scratch);
  acts.add(layer, "attn.dout", &b.datt, max_tokens * qw, Keep::scratch);
}

void AttentionLayer::register_activations(ActivationStore& layout, const ModelConfig& cfg, int layer,
                                          int64_t max_tokens) {
  SY_CHECK(layout.is_layout(), "AttentionLayer::register_activations: a layout store only");
  Buffers unbound;  // a layout never binds
  add_buffers(layout, cfg, layer, max_tokens, unbound);
}

void AttentionLayer::attend(const float* x, const float* params) {
  const int64_t N = shape_.B * shape_.T, W = shape_.qkv_width();
  be_.gemm(false, true, N, W, C_, 1.0f, x, C_, params + off_wqkv_, C_, 0.0f, buf_.qkv, W,
           prec_.stored_activation());  // qkv = x Wqkv^T (x stored by the model)
  if (off_bqkv_ >= 0) be_.add_bias(buf_.qkv, params + off_bqkv_, N, W);
  be_.rope_forward(buf_.qkv, shape_, theta_);
  prec_.store(be_, buf_.qkv, N * W);
  be_.attention_forward(buf_.att, buf_.lse, buf_.qkv, shape_);
  prec_.store(be_, buf_.att, N * shape_.q_width());
}

void AttentionLayer::forward(float* out, const float* x, const float* params, int64_t B,
                             int64_t T, const int32_t* doc_start) {
  const int64_t N = B * T;
  SY_CHECK(B > 0 && T > 0 && N <= max_tokens_, "attention forward: B*T = {}*{} exceeds {}", B, T,
           max_tokens_);
  shape_.B = B;
  shape_.T = T;
  shape_.doc_start = doc_start;
  shape_.pos0 = 0;
  const int64_t QW = shape_.q_width();
  attend(x, params);
  be_.gemm(false, true, N, C_, QW, 1.0f, buf_.att, QW, params + off_wo_, QW, 0.0f, out, C_,
           prec_.stored_activation());  // out = att Wo^T
}

void AttentionLayer::decode(float* out, const float* x, const float* params, float* cache, int64_t pos,
                            int64_t n) {
  const int64_t T = pos + n, W = shape_.qkv_width(), QW = shape_.q_width();
  SY_CHECK(pos >= 0 && n > 0 && T <= max_tokens_, "attention decode: positions {}..{} exceed {}", pos, T,
           max_tokens_);
  float* fresh = cache + pos * W;
  be_.gemm(false, true, n, W, C_, 1.0f, x, C_, params + off_wqkv_, C_, 0.0f, fresh, W,
           prec_.stored_activation());  // the new rows' qkv = x Wqkv^T, as attend()
  if (off_bqkv_ >= 0) be_.add_bias(fresh, params + off_bqkv_, n, W);
  shape_.B = 1;
  shape_.T = n;
  shape_.doc_start = nullptr;
  shape_.pos0 = pos;  // the new rows are positions pos..
  be_.rope_forward(fresh, shape_, theta_);
  prec_.store(be_, fresh, n * W);
  shape_.T = T;
  shape_.pos0 = 0;
  const float* att = buf_.att;
  if (n == 1) {  // one query row against the cache
    be_.attention_decode(buf_.att, cache, shape_);
  } else {  // a prefill: every row of the cache, its last n kept
    be_.attention_forward(buf_.att, buf_.lse, cache, shape_);
    att += pos * QW;
  }
  prec_.store(be_, buf_.att + (att - buf_.att), n * QW);
  be_.gemm(false, true, n, C_, QW, 1.0f, att, QW, params + off_wo_, QW, 0.0f, out, C_,
           prec_.stored_activation());  // out = att Wo^T
}

void AttentionLayer::backward(float* dx, const float* dout, const float* x, const float* params,
                              float* grads, int64_t B, int64_t T, const int32_t* doc_start) {
  const int64_t N = B * T;
  SY_CHECK(B == shape_.B && T == shape_.T,
           "attention backward: shape {}x{} differs from the last forward {}x{}", B, T, shape_.B,
           shape_.T);
  SY_CHECK(doc_start == shape_.doc_start,
           "attention backward: document starts differ from the last forward's");
  const int64_t W = shape_.qkv_width(), QW = shape_.q_width();
  const float* wqkv = params + off_wqkv_;
  const float* wo = params + off_wo_;
  be_.gemm(false, false, N, QW, C_, 1.0f, dout, C_, wo, QW, 0.0f, buf_.datt, QW,
           prec_.activation());  // datt = dout Wo
  be_.gemm(true, false, C_, QW, N, 1.0f, dout, C_, buf_.att, QW, 1.0f, grads + off_wo_, QW,
           prec_.weight_grad());  // dWo += dout^T att (dout fresh, att stored)
  be_.attention_backward(buf_.dqkv, buf_.datt, buf_.att, buf_.lse, buf_.qkv, shape_);
  be_.rope_backward(buf_.dqkv, shape_, theta_);
  prec_.store(be_, buf_.dqkv, N * W);  // feeds two GEMMs (and the bias gradient) in the compute dtype
  if (off_bqkv_ >= 0) be_.bias_backward(grads + off_bqkv_, buf_.dqkv, N, W);
  // dx before dWqkv: the transposed GEMM runs faster after dx has streamed dqkv through the cache
  be_.gemm(false, false, N, C_, W, 1.0f, buf_.dqkv, W, wqkv, C_, 0.0f, dx, C_,
           prec_.stored_activation());  // dx = dqkv Wqkv
  be_.gemm(true, false, W, C_, N, 1.0f, buf_.dqkv, W, x, C_, 1.0f, grads + off_wqkv_, C_,
           prec_.stored_weight_grad());  // dWqkv += dqkv^T x
}

}  // namespace switchyard::core
