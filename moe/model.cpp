// moe/model.cpp: the MoE transformer's forward and backward over the backend.
#include "moe/model.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/ffn.h"
#include "core/rng.h"

namespace switchyard::moe {

using core::ParamKind;

struct Model::Layer {
  int index = 0;
  bool is_moe = false;
  int64_t off_ln1 = 0, off_ln2 = 0;
  int64_t off_gate_up = -1, off_down = -1;  // dense FFN only
  int64_t F = 0;                             // dense FFN width
  float *x_in = nullptr, *ln1 = nullptr, *rstd1 = nullptr, *x_mid = nullptr, *ln2 = nullptr,
        *rstd2 = nullptr;
  float *h = nullptr, *a = nullptr;            // dense FFN saved activations
  float *dh = nullptr, *da = nullptr;          // dense FFN scratch
  std::unique_ptr<core::AttentionLayer> attn;
  std::unique_ptr<MoeLayer> moe;
};

Model::Model(core::Backend& be, const core::ModelConfig& cfg, int64_t max_batch, int64_t max_seq,
             const ExpertParallel& ep, const ModelOptions& opts)
    : be_(be), cfg_(cfg), opts_(opts), table_(core::make_param_table(cfg, ep.rank, ep.size)),
      acts_(be, opts.recompute), max_tokens_(max_batch * max_seq) {
  using core::Keep;
  params_ = core::Arena(be_, table_.total());
  grads_ = core::Arena(be_, table_.total());
  if (opts_.precision.mixed()) compute_ = core::Arena(be_, table_.total());
  for (int l = 0; l < static_cast<int>(cfg.n_layers); ++l) {
    auto L = std::make_unique<Layer>();
    const std::string p = fmt::format("model.layers.{}.", l);
    L->index = l;
    L->is_moe = cfg.is_moe_layer(l);
    L->off_ln1 = table_.at(p + "input_layernorm.weight").offset;
    L->off_ln2 = table_.at(p + "post_attention_layernorm.weight").offset;
    if (!L->is_moe) {
      L->F = cfg.dense_ffn_size;
      L->off_gate_up = table_.at(p + "mlp.gate_proj.weight").offset;
      L->off_down = table_.at(p + "mlp.down_proj.weight").offset;
    }
    layers_.push_back(std::move(L));
  }
  const int64_t N = max_tokens_;
  add_buffers(
      acts_, cfg, N, layers_, bufs_,
      [&](int l) {
        layers_[l]->attn = std::make_unique<core::AttentionLayer>(be_, cfg, table_, l, N, acts_, opts_.precision);
      },
      [&](int l) {
        layers_[l]->moe = std::make_unique<MoeLayer>(be_, cfg, table_, l, N, ep, acts_, opts_.precision);
        ++n_moe_;
      });
  acts_.allocate();
}

void Model::add_buffers(core::ActivationStore& acts, const core::ModelConfig& cfg, int64_t max_tokens,
                        std::vector<std::unique_ptr<Layer>>& layers, Buffers& b,
                        const std::function<void(int)>& attention, const std::function<void(int)>& moe) {
  using core::Keep;
  const int64_t N = max_tokens, C = cfg.d_model, V = cfg.vocab_size, F = cfg.dense_ffn_size;
  for (int l = 0; l < static_cast<int>(cfg.n_layers); ++l) {
    Layer& L = *layers[static_cast<size_t>(l)];
    // the block input is all full checkpointing keeps; the residual after attention is needed
    // unless the attention output projection is recomputed; norm outputs are cheap to redo
    acts.add(l, "block.x_in", &L.x_in, N * C, Keep::always);
    acts.add(l, "block.ln1", &L.ln1, N * C, Keep::cheap);
    acts.add(l, "block.rstd1", &L.rstd1, N, Keep::cheap);
    acts.add(l, "block.x_mid", &L.x_mid, N * C, Keep::expensive);
    acts.add(l, "block.ln2", &L.ln2, N * C, Keep::cheap);
    acts.add(l, "block.rstd2", &L.rstd2, N, Keep::cheap);
    attention(l);
    if (cfg.is_moe_layer(l)) {
      moe(l);
    } else {
      acts.add(l, "ffn.h", &L.h, N * 2 * F, Keep::expensive);
      acts.add(l, "ffn.a", &L.a, N * F, Keep::cheap);
      acts.add(l, "ffn.dh", &L.dh, N * 2 * F, Keep::scratch);
      acts.add(l, "ffn.da", &L.da, N * F, Keep::scratch);
    }
  }
  acts.add(-1, "head.x_final", &b.x_final, N * C, Keep::always);
  acts.add(-1, "head.lnf", &b.lnf, N * C, Keep::always);
  acts.add(-1, "head.rstd", &b.lnf_rstd, N, Keep::always);
  acts.add(-1, "head.logits", &b.logits, N * V, Keep::always);
  acts.add(-1, "head.losses", &b.losses, N, Keep::always);
  acts.add(-1, "head.tokens", &b.tokens, N, Keep::always);
  acts.add(-1, "head.targets", &b.targets, N, Keep::always);
  acts.add(-1, "head.doc_start", &b.doc_start, N, Keep::always);
  acts.add(-1, "head.dlogits", &b.dlogits, N * V, Keep::scratch);
  acts.add(-1, "head.dloss", &b.dloss, N, Keep::scratch);
  acts.add(-1, "block.dresid", &b.dresid, N * C, Keep::scratch);
  acts.add(-1, "block.out", &b.dtmp, N * C, Keep::scratch);
  acts.add(-1, "block.dln", &b.dln, N * C, Keep::scratch);
}

void Model::register_activations(core::ActivationStore& layout, const core::ModelConfig& cfg, int64_t max_tokens,
                                 int64_t expert_rows, bool expert_parallel) {
  SY_CHECK(layout.is_layout(), "Model::register_activations: a layout store only");
  std::vector<std::unique_ptr<Layer>> layers;  // a layout never binds their pointers
  for (int64_t l = 0; l < cfg.n_layers; ++l) layers.push_back(std::make_unique<Layer>());
  Buffers unbound;
  add_buffers(
      layout, cfg, max_tokens, layers, unbound,
      [&](int l) { core::AttentionLayer::register_activations(layout, cfg, l, max_tokens); },
      [&](int l) { MoeLayer::register_activations(layout, cfg, l, max_tokens, expert_rows, expert_parallel); });
}

Model::~Model() { layers_.clear(); }

// Compute weights: the master weights rounded to the compute dtype, except the router weights
// (routing is decided in fp32; core/precision.h).
void Model::refresh_compute_weights() {
  compute_stale_ = false;
  if (!opts_.precision.mixed()) return;
  float* dst = compute_.data();
  const float* src = params_.data();
  for (const auto& p : table_.specs()) {
    const size_t bytes = static_cast<size_t>(p.numel) * sizeof(float);
    be_.copy(dst + p.offset, src + p.offset, bytes);
    if (p.kind != ParamKind::router) be_.round_to(opts_.precision.compute, dst + p.offset, p.numel);
  }
}

void Model::init_random(uint64_t seed) {
  std::vector<float> host(static_cast<size_t>(table_.total()));
  const double out_scale = 1.0 / std::sqrt(2.0 * static_cast<double>(cfg_.n_layers));
  for (const auto& p : table_.specs()) {
    float* dst = host.data() + p.offset;
    if (p.kind == ParamKind::norm) {
      std::fill(dst, dst + p.numel, 1.0f);
      continue;
    }
    if (p.kind == ParamKind::bias) {
      std::fill(dst, dst + p.numel, 0.0f);
      continue;
    }
    double std = cfg_.init_std;
    const bool output_proj = p.name.ends_with("o_proj.weight") || p.name.ends_with("down_proj.weight") ||
                             p.name.ends_with(".w2.weight");
    if (output_proj) std *= out_scale;
    const uint64_t key = core::rng_key(seed, core::name_key(p.name));
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < p.numel; ++i) dst[i] = static_cast<float>(std * core::rng_normal(key, static_cast<uint64_t>(i)));
  }
  set_params_from_host(host.data());
}

void Model::set_params_from_host(const float* host) {
  be_.copy_from_host(params_.data(), host, static_cast<size_t>(table_.total()) * sizeof(float));
  compute_stale_ = true;
}

void Model::params_to_host(float* host) const {
  be_.copy_to_host(host, params_.data(), static_cast<size_t>(table_.total()) * sizeof(float));
}

// Packed rows' document starts (Batch::doc_start), checked on the host: in each row, position t's
// value is t (a document begins) or position t-1's (the document goes on); so 0 <= value <= t and
// non-decreasing. The kernels rely on it and check nothing (core/backend.h).
static void check_doc_start(const int32_t* doc_start, int64_t B, int64_t T) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t i = b * T + t, d = doc_start[i];
      if (d != t && (t == 0 || d != doc_start[i - 1]))
        throw_internal("model forward: doc_start {} at row {} position {} is neither {} (a document "
                       "begins) nor the previous position's value (the document goes on)",
                       d, b, t, t);
    }
}

ForwardResult Model::forward(const Batch& batch) {
  const int32_t* tokens = batch.tokens;
  const int32_t* targets = batch.targets;
  const int64_t B = batch.B, T = batch.T;
  const int64_t N = B * T, V = cfg_.vocab_size;
  if (N > max_tokens_ || T > cfg_.max_seq_len)
    throw_internal("model forward: batch {}x{} exceeds the allocated {} tokens or max_seq_len {}",
                   B, T, max_tokens_, cfg_.max_seq_len);
  B_ = B;
  T_ = T;
  if (compute_stale_) refresh_compute_weights();
  const float* P = compute_weights();
  be_.copy_from_host(bufs_.tokens, tokens, static_cast<size_t>(N) * sizeof(int32_t));
  be_.copy_from_host(bufs_.targets, targets, static_cast<size_t>(N) * sizeof(int32_t));
  for (int64_t i = 0; i < N; ++i)
    if (tokens[i] < 0 || tokens[i] >= V)
      throw_usage("token {} at position {} is outside the model's vocabulary [0, {})", tokens[i], i, V);
  doc_start_ = nullptr;
  if (batch.doc_start) {
    check_doc_start(batch.doc_start, B, T);
    be_.copy_from_host(bufs_.doc_start, batch.doc_start, static_cast<size_t>(N) * sizeof(int32_t));
    doc_start_ = bufs_.doc_start;
  }

  decoding_ = false;
  run_rows(N, [&](Layer& L, size_t) { L.attn->forward(bufs_.dtmp, L.ln1, P, B, T, doc_start_); });
  ForwardResult r;
  be_.cross_entropy_forward(bufs_.losses, bufs_.logits, bufs_.targets, N, V);

  token_losses_.resize(static_cast<size_t>(N));
  be_.copy_to_host(token_losses_.data(), bufs_.losses, token_losses_.size() * sizeof(float));
  double sum = 0, wsum = 0;
  counted_ = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (targets[i] < 0) {
      token_losses_[static_cast<size_t>(i)] = 0.f;
      continue;
    }
    const double w = batch.weights ? batch.weights[i] : 1.0;
    if (!(w >= 0) || !std::isfinite(w))
      throw_internal("model forward: loss weight {} at position {} is not a finite value >= 0", w, i);
    sum += w * token_losses_[static_cast<size_t>(i)];
    wsum += w;
    ++counted_;
  }
  r.tokens = counted_;
  r.weight_sum = wsum;
  r.ce_sum = sum;
  r.ce = wsum > 0 ? sum / wsum : 0.0;
  // the CE part's denominator: its gradient is w_i / denominator for each counted position
  ce_denominator_ = batch.ce_norm > 0 ? 1.0 / batch.ce_norm : wsum;
  loss_weights_.assign(static_cast<size_t>(N), 0.f);
  for (int64_t i = 0; i < N; ++i)
    if (targets[i] >= 0) loss_weights_[static_cast<size_t>(i)] = batch.weights ? batch.weights[i] : 1.f;
  last_ = r;
  add_balance_losses(last_);
  return last_;
}

// Embedding, the blocks and the LM head over the N rows in bufs_.tokens, into bufs_.logits; each
// block's attention is `attention` (the whole batch's in forward, the cached one in decode).
void Model::run_rows(int64_t N, const std::function<void(Layer&, size_t)>& attention) {
  const int64_t C = cfg_.d_model, V = cfg_.vocab_size;
  const auto& prec = opts_.precision;
  const float* P = compute_weights();
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  const float* w_final_norm = P + table_.at("model.norm.weight").offset;
  be_.embedding_forward(layers_.empty() ? bufs_.x_final : layers_[0]->x_in, bufs_.tokens,
                        P + table_.at("model.embed_tokens.weight").offset, N, C);
  // Every residual add is fused with the RMSNorm that reads its result (add_rmsnorm_forward):
  // x_mid = x_in + attn -> ln2; x_out = x_mid + ffn -> the next layer's ln1 (or the final norm).
  // Norm outputs are stored in the compute dtype: every consumer is a GEMM (core/precision.h).
  if (layers_.empty()) {
    be_.rmsnorm_forward(bufs_.lnf, bufs_.lnf_rstd, bufs_.x_final, w_final_norm, N, C, eps);
    prec.store(be_, bufs_.lnf, N * C);
  } else {
    be_.rmsnorm_forward(layers_[0]->ln1, layers_[0]->rstd1, layers_[0]->x_in,
                        P + layers_[0]->off_ln1, N, C, eps);
    prec.store(be_, layers_[0]->ln1, N * C);
  }
  for (size_t li = 0; li < layers_.size(); ++li) {
    Layer& L = *layers_[li];
    attention(L, li);
    be_.add_rmsnorm_forward(L.x_mid, L.ln2, L.rstd2, L.x_in, bufs_.dtmp, P + L.off_ln2, N, C, eps);
    prec.store(be_, L.ln2, N * C);
    if (L.is_moe) {
      L.moe->forward(bufs_.dtmp, L.ln2, P, N);
    } else {
      core::ffn_forward(be_, bufs_.dtmp, L.h, L.a, L.ln2, N, C, L.F, P + L.off_gate_up, P + L.off_down,
                        prec);
    }
    if (li + 1 < layers_.size()) {
      Layer& next = *layers_[li + 1];
      be_.add_rmsnorm_forward(next.x_in, next.ln1, next.rstd1, L.x_mid, bufs_.dtmp, P + next.off_ln1,
                              N, C, eps);
      prec.store(be_, next.ln1, N * C);
    } else {
      be_.add_rmsnorm_forward(bufs_.x_final, bufs_.lnf, bufs_.lnf_rstd, L.x_mid, bufs_.dtmp, w_final_norm, N, C, eps);
      prec.store(be_, bufs_.lnf, N * C);
    }
  }
  const float* w_head = P + table_.at(cfg_.tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight").offset;
  be_.gemm(false, true, N, V, C, 1.0f, bufs_.lnf, C, w_head, C, 0.0f, bufs_.logits, V, prec.stored_activation());
}

void Model::decode_reset() {
  decode_pos_ = 0;
  decoding_ = true;
}

const float* Model::decode(const int32_t* tokens, int64_t n) {
  if (!decoding_) decode_reset();  // after a forward(): a new sequence
  const int64_t cap = decode_capacity(), V = cfg_.vocab_size, pos = decode_pos_;
  if (n < 1 || decode_pos_ + n > cap)
    throw_internal("model decode: positions {}..{} exceed the {} the model holds", decode_pos_, decode_pos_ + n, cap);
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= V)
      throw_usage("token {} at position {} is outside the model's vocabulary [0, {})", tokens[i], pos + i, V);
  if (kv_cache_.empty())
    for (const auto& L : layers_) kv_cache_.emplace_back(be_, cap * L->attn->qkv_width());
  if (compute_stale_) refresh_compute_weights();
  be_.copy_from_host(bufs_.tokens, tokens, static_cast<size_t>(n) * sizeof(int32_t));
  B_ = 1;
  T_ = n;
  doc_start_ = nullptr;
  const float* P = compute_weights();
  run_rows(n, [&](Layer& L, size_t li) { L.attn->decode(bufs_.dtmp, L.ln1, P, kv_cache_[li].data(), pos, n); });
  decode_pos_ += n;
  return bufs_.logits;
}

// aux and z: the means over the MoE layers of their last forward's values; loss = ce + both weighted.
void Model::add_balance_losses(ForwardResult& r) const {
  r.aux = r.z = 0;
  for (const auto& L : layers_)
    if (L->is_moe) {
      r.aux += L->moe->stats().aux_loss;
      r.z += L->moe->stats().z_loss;
    }
  if (n_moe_ > 0) {
    r.aux /= static_cast<double>(n_moe_);
    r.z /= static_cast<double>(n_moe_);
  }
  r.loss = r.ce + cfg_.moe.aux_loss_coef * r.aux + cfg_.moe.z_loss_coef * r.z;
}

void Model::backward(float grad_scale, const std::function<void(int)>& on_grads_ready) {
  const int64_t N = B_ * T_, C = cfg_.d_model, V = cfg_.vocab_size;
  SY_CHECK(N > 0, "backward() without a forward()");
  SY_CHECK(!decoding_, "backward() after decode(): decoding keeps nothing for backward");
  SY_CHECK(!compute_stale_, "backward(): the weights changed since the last forward()");
  const auto& prec = opts_.precision;
  const float* P = compute_weights();
  float* G = grads_.data();

  // d(CE part)/d(loss_i) = w_i / denominator for counted targets (the CE kernel ignores the
  // others); unweighted that is grad_scale / counted
  std::vector<float> dloss(static_cast<size_t>(N), 0.f);
  const float denom = static_cast<float>(ce_denominator_);
  if (denom > 0)
    for (int64_t i = 0; i < N; ++i) dloss[static_cast<size_t>(i)] = grad_scale * loss_weights_[static_cast<size_t>(i)] / denom;
  be_.copy_from_host(bufs_.dloss, dloss.data(), dloss.size() * sizeof(float));
  be_.cross_entropy_backward(bufs_.dlogits, bufs_.logits, bufs_.targets, bufs_.dloss, N, V);

  const auto& head = table_.at(cfg_.tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
  be_.gemm(false, false, N, C, V, 1.0f, bufs_.dlogits, V, P + head.offset, C, 0.0f, bufs_.dln, C,
           prec.activation());
  be_.gemm(true, false, V, C, N, 1.0f, bufs_.dlogits, V, bufs_.lnf, C, 1.0f, G + head.offset, C,
           prec.weight_grad());
  const int64_t off_norm = table_.at("model.norm.weight").offset;
  be_.rmsnorm_backward(bufs_.dresid, G + off_norm, bufs_.dln, bufs_.x_final, P + off_norm, bufs_.lnf_rstd, N, C);

  const float d_aux = n_moe_ ? static_cast<float>(cfg_.moe.aux_loss_coef / n_moe_) * grad_scale : 0.f;
  const float d_z = n_moe_ ? static_cast<float>(cfg_.moe.z_loss_coef / n_moe_) * grad_scale : 0.f;
  for (size_t li = layers_.size(); li-- > 0;) {
    Layer& L = *layers_[li];
    if (opts_.recompute != core::Recompute::none) recompute_block(L, P, B_, T_);
    // x_out = x_mid + ffn(ln2(x_mid)); dresid holds d x_out
    if (L.is_moe) {
      L.moe->backward(bufs_.dln, bufs_.dresid, L.ln2, P, G, N, d_aux, d_z);
    } else {
      core::ffn_backward(be_, bufs_.dln, false, G + L.off_gate_up, G + L.off_down, bufs_.dresid, L.ln2, L.h,
                         L.a, N, C, L.F, P + L.off_gate_up, P + L.off_down, L.dh, L.da, prec);
    }
    // d x_mid = d x_out + ln2's input gradient
    be_.rmsnorm_backward_accumulate(bufs_.dresid, G + L.off_ln2, bufs_.dln, L.x_mid, P + L.off_ln2, L.rstd2,
                                    N, C);
    // x_mid = x_in + attn(ln1(x_in))
    L.attn->backward(bufs_.dln, bufs_.dresid, L.ln1, P, G, B_, T_, doc_start_);
    // d x_in = d x_mid + ln1's input gradient
    be_.rmsnorm_backward_accumulate(bufs_.dresid, G + L.off_ln1, bufs_.dln, L.x_in, P + L.off_ln1, L.rstd1,
                                    N, C);
    if (on_grads_ready) on_grads_ready(L.index);
  }
  be_.embedding_backward(G + table_.at("model.embed_tokens.weight").offset, bufs_.dresid, bufs_.tokens, N, C);
  if (on_grads_ready) on_grads_ready(-1);
}

// Rebuilds what the checkpointing policy did not keep for block L, from its input x_in (and,
// under selective, the kept residual x_mid and GEMM outputs), with the kernels and weights the
// forward used: the result is bit-identical. MoE layers replay their saved routing plan.
void Model::recompute_block(Layer& L, const float* P, int64_t B, int64_t T) {
  const int64_t N = B * T, C = cfg_.d_model;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  const auto& prec = opts_.precision;
  be_.rmsnorm_forward(L.ln1, L.rstd1, L.x_in, P + L.off_ln1, N, C, eps);
  prec.store(be_, L.ln1, N * C);
  if (opts_.recompute == core::Recompute::full) {
    L.attn->forward(bufs_.dtmp, L.ln1, P, B, T, doc_start_);
    be_.add_rmsnorm_forward(L.x_mid, L.ln2, L.rstd2, L.x_in, bufs_.dtmp, P + L.off_ln2, N, C, eps);
    prec.store(be_, L.ln2, N * C);
    if (L.is_moe)
      L.moe->recompute(L.ln2, P, N);
    else
      core::ffn_forward(be_, bufs_.dtmp, L.h, L.a, L.ln2, N, C, L.F, P + L.off_gate_up,
                        P + L.off_down, prec);
    return;
  }
  // selective: norm outputs and SwiGLU products
  be_.rmsnorm_forward(L.ln2, L.rstd2, L.x_mid, P + L.off_ln2, N, C, eps);
  prec.store(be_, L.ln2, N * C);
  if (L.is_moe) {
    L.moe->recompute(L.ln2, P, N);
  } else {
    be_.swiglu_forward(L.a, L.h, N, L.F);
    prec.store(be_, L.a, N * L.F);
  }
}

Model::UpdateTarget Model::begin_update() {
  compute_stale_ = true;
  return {params_.data(), opts_.precision.mixed() ? compute_.data() : nullptr, opts_.precision.compute};
}

void Model::end_update() {
  if (!opts_.precision.mixed()) return;  // stays stale: refresh_compute_weights() is a no-op then
  for (const auto& p : table_.specs())
    if (p.kind == ParamKind::router)
      be_.copy(compute_.data() + p.offset, params_.data() + p.offset, static_cast<size_t>(p.numel) * sizeof(float));
  compute_stale_ = false;
}

int64_t Model::first_nonfinite_block() const {
  const int64_t n = B_ * T_ * cfg_.d_model;
  auto bad = [&](const float* x) { return !std::isfinite(be_.sum_squares(x, n)); };
  const int64_t L = static_cast<int64_t>(layers_.size());
  if (L > 0 && bad(layers_[0]->x_in)) return -1;
  for (int64_t l = 0; l < L; ++l)
    if (bad(l + 1 < L ? layers_[static_cast<size_t>(l + 1)]->x_in : bufs_.x_final)) return l;
  return L;
}

parallel::ExchangeStats Model::exchange_stats() const {
  parallel::ExchangeStats s;
  for (const auto& L : layers_)
    if (L->is_moe) s += L->moe->stats().exchange;
  return s;
}

std::vector<std::string> Model::exchange_plans() const {
  std::vector<std::string> out;
  for (const auto& L : layers_)
    if (L->is_moe) out.push_back(L->moe->stats().exchange_plan);
  return out;
}

double Model::expert_seconds() const {
  double s = 0;
  for (const auto& L : layers_)
    if (L->is_moe) s += L->moe->stats().expert_seconds;
  return s;
}

std::vector<std::vector<int64_t>> Model::expert_counts() const {
  std::vector<std::vector<int64_t>> out;
  for (const auto& L : layers_)
    if (L->is_moe) out.push_back(L->moe->stats().expert_counts);
  return out;
}

const MoeStats& Model::moe_stats(int64_t i) const {
  int64_t k = i;
  for (const auto& L : layers_)
    if (L->is_moe && k-- == 0) return L->moe->stats();
  throw_internal("Model::moe_stats: no MoE layer {} (the model has {})", i, n_moe_);
}

std::vector<float> Model::selection_bias() const {
  std::vector<float> out;
  for (const auto& L : layers_)
    if (L->is_moe) {
      const auto& b = L->moe->selection_bias();
      out.insert(out.end(), b.begin(), b.end());
    }
  return out;
}

void Model::set_selection_bias(const std::vector<float>& bias) {
  const int64_t E = cfg_.moe.n_experts;
  const bool on = cfg_.moe.balance.bias_rate > 0;
  SY_CHECK(static_cast<int64_t>(bias.size()) == (on ? n_moe_ * E : 0),
           "set_selection_bias: {} values for {} MoE layers of {} experts (bias {})", bias.size(),
           n_moe_, E, on ? "on" : "off");
  int64_t l = 0;
  for (const auto& L : layers_)
    if (L->is_moe && on) L->moe->set_selection_bias(bias.data() + E * l++);
}

void Model::set_global_aux_counts(const std::vector<int64_t>& counts, int64_t tokens, int64_t micro_batches) {
  const int64_t E = cfg_.moe.n_experts;
  SY_CHECK(counts.empty() || static_cast<int64_t>(counts.size()) == n_moe_ * E,
           "set_global_aux_counts: {} counts for {} MoE layers of {} experts", counts.size(), n_moe_, E);
  int64_t l = 0;
  for (const auto& L : layers_)
    if (L->is_moe) L->moe->set_aux_counts(counts.empty() ? nullptr : counts.data() + E * l++, tokens, micro_batches);
  add_balance_losses(last_);
}

void Model::update_selection_bias(const std::vector<int64_t>& load) {
  const int64_t E = cfg_.moe.n_experts;
  const double rate = cfg_.moe.balance.bias_rate;
  if (rate <= 0) return;
  SY_CHECK(static_cast<int64_t>(load.size()) == n_moe_ * E,
           "update_selection_bias: {} counts for {} MoE layers of {} experts", load.size(), n_moe_, E);
  int64_t l = 0;
  for (const auto& L : layers_)
    if (L->is_moe) L->moe->update_selection_bias(load.data() + E * l++, rate);
}

}  // namespace switchyard::moe
