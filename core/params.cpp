// core/params.cpp: parameter spec table, the model's Hugging Face names, and arenas.
#include "core/params.h"

#include <cmath>

#include <fmt/format.h>

#include <utility>

#include "core/error.h"

namespace switchyard::core {

int ParamTable::add(std::string name, std::vector<int64_t> shape, ParamKind kind, int layer,
                    int expert) {
  SY_CHECK(!index_.count(name), "duplicate parameter {}", name);
  ParamSpec p;
  p.name = std::move(name);
  p.shape = std::move(shape);
  p.numel = 1;
  for (int64_t d : p.shape) p.numel *= d;
  p.offset = total_;
  p.kind = kind;
  p.layer = layer;
  p.expert = expert;
  total_ += p.numel;
  int i = static_cast<int>(specs_.size());
  index_[p.name] = i;
  specs_.push_back(std::move(p));
  return i;
}

int64_t first_nonfinite_param(const ParamTable& table, const float* host) {
  for (size_t i = 0; i < table.size(); ++i) {
    const float* p = host + table[i].offset;
    bool finite = true;
#pragma omp simd reduction(&& : finite)
    for (int64_t k = 0; k < table[i].numel; ++k) finite = finite && std::isfinite(p[k]);
    if (!finite) return static_cast<int64_t>(i);
  }
  return -1;
}

int ParamTable::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? -1 : it->second;
}

const ParamSpec& ParamTable::at(const std::string& name) const {
  int i = find(name);
  if (i < 0) throw_internal("no parameter named {}", name);
  return specs_[static_cast<size_t>(i)];
}

bool param_decays(const ParamSpec& p, const OptimConfig& cfg) {
  switch (p.kind) {
    case ParamKind::embedding: return cfg.decay_embeddings;
    case ParamKind::norm: return cfg.decay_norms;
    case ParamKind::bias: return cfg.decay_biases;
    case ParamKind::router: return cfg.decay_router;
    case ParamKind::linear:
    case ParamKind::expert: return true;
  }
  return true;
}

ExpertRange local_experts(const ModelConfig& cfg, int ep_rank, int ep_size) {
  SY_CHECK(ep_size >= 1 && ep_rank >= 0 && ep_rank < ep_size && cfg.moe.n_experts % ep_size == 0,
           "expert parallel rank {} of {} with {} experts", ep_rank, ep_size, cfg.moe.n_experts);
  const int64_t count = cfg.moe.n_experts / ep_size;
  return {ep_rank * count, count};
}

ExpertOwner expert_owner(const ModelConfig& cfg, int64_t expert, int ep_size) {
  SY_CHECK(expert >= 0 && expert < cfg.moe.n_experts, "expert {} of {}", expert, cfg.moe.n_experts);
  const int64_t count = local_experts(cfg, 0, ep_size).count;
  return {static_cast<int32_t>(expert / count), static_cast<int32_t>(expert % count)};
}

ParamTable make_param_table(const ModelConfig& c, int ep_rank, int ep_size) {
  const ExpertRange mine = local_experts(c, ep_rank, ep_size);
  const int local_experts = static_cast<int>(mine.count);
  const int first_expert = static_cast<int>(mine.first);
  using K = ParamKind;
  ParamTable t;
  const int64_t C = c.d_model, HD = c.hd(), NH = c.n_heads, NKV = c.n_kv_heads;
  const bool qwen = c.qwen_layout();
  t.add("model.embed_tokens.weight", {c.vocab_size, C}, K::embedding);
  for (int l = 0; l < static_cast<int>(c.n_layers); ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    t.add(p + "input_layernorm.weight", {C}, K::norm, l);
    // q, k, v adjacent: one [qkv_width, C] matrix
    t.add(p + "self_attn.q_proj.weight", {NH * HD, C}, K::linear, l);
    t.add(p + "self_attn.k_proj.weight", {NKV * HD, C}, K::linear, l);
    t.add(p + "self_attn.v_proj.weight", {NKV * HD, C}, K::linear, l);
    if (c.qkv_bias) {
      t.add(p + "self_attn.q_proj.bias", {NH * HD}, K::bias, l);
      t.add(p + "self_attn.k_proj.bias", {NKV * HD}, K::bias, l);
      t.add(p + "self_attn.v_proj.bias", {NKV * HD}, K::bias, l);
    }
    t.add(p + "self_attn.o_proj.weight", {C, NH * HD}, K::linear, l);
    t.add(p + "post_attention_layernorm.weight", {C}, K::norm, l);
    if (!c.is_moe_layer(l)) {
      const int64_t F = c.dense_ffn_size;
      t.add(p + "mlp.gate_proj.weight", {F, C}, K::linear, l);
      t.add(p + "mlp.up_proj.weight", {F, C}, K::linear, l);
      t.add(p + "mlp.down_proj.weight", {C, F}, K::linear, l);
      continue;
    }
    const int64_t I = c.moe.expert_size;
    const std::string m = p + (qwen ? "mlp." : "block_sparse_moe.");
    t.add(m + "gate.weight", {c.moe.n_experts, C}, K::router, l);
    for (int e = first_expert; e < first_expert + local_experts; ++e) {
      const std::string x = fmt::format("{}experts.{}.", m, e);
      t.add(x + (qwen ? "gate_proj.weight" : "w1.weight"), {I, C}, K::expert, l, e);
      t.add(x + (qwen ? "up_proj.weight" : "w3.weight"), {I, C}, K::expert, l, e);
      t.add(x + (qwen ? "down_proj.weight" : "w2.weight"), {C, I}, K::expert, l, e);
    }
    if (c.moe.shared_expert_size > 0) {
      const int64_t S = c.moe.shared_expert_size;
      t.add(m + "shared_expert.gate_proj.weight", {S, C}, K::linear, l);
      t.add(m + "shared_expert.up_proj.weight", {S, C}, K::linear, l);
      t.add(m + "shared_expert.down_proj.weight", {C, S}, K::linear, l);
      t.add(m + "shared_expert_gate.weight", {1, C}, K::linear, l);
    }
  }
  t.add("model.norm.weight", {C}, K::norm);
  if (!c.tie_embeddings) t.add("lm_head.weight", {c.vocab_size, C}, K::linear);
  return t;
}

Arena::Arena(Backend& be, int64_t numel) : be_(&be), numel_(numel) {
  data_ = static_cast<float*>(be.alloc(static_cast<size_t>(numel) * sizeof(float)));
}
Arena::~Arena() {
  if (be_ && data_) be_->release(data_);
}
Arena::Arena(Arena&& o) noexcept { *this = std::move(o); }
Arena& Arena::operator=(Arena&& o) noexcept {
  if (this != &o) {
    if (be_ && data_) be_->release(data_);
    be_ = std::exchange(o.be_, nullptr);
    data_ = std::exchange(o.data_, nullptr);
    numel_ = std::exchange(o.numel_, 0);
  }
  return *this;
}
void Arena::zero() {
  if (data_) be_->zero(data_, static_cast<size_t>(numel_) * sizeof(float));
}

}  // namespace switchyard::core
