// launch/export_gguf.cpp: see export_gguf.h.
#include "launch/export_gguf.h"

#include <fmt/format.h>

#include <cstring>

#include "core/error.h"
#include "core/formats/gguf.h"
#include "core/params.h"

namespace switchyard::launch {
namespace {

using core::formats::GgufMetadata;
using core::formats::GgufTensor;
using core::formats::GgufType;

// GPT-2's bytes_to_unicode: byte -> the UTF-8 of its printable stand-in character.
std::vector<std::string> byte_tokens() {
  std::vector<int> cp(256, -1);
  for (int b = 0; b < 256; ++b)
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) cp[b] = b;
  int n = 0;
  for (int b = 0; b < 256; ++b)
    if (cp[b] < 0) cp[b] = 256 + n++;
  std::vector<std::string> out;
  for (int c : cp) {
    std::string s;
    if (c < 0x80) s += static_cast<char>(c);
    else {
      s += static_cast<char>(0xC0 | (c >> 6));
      s += static_cast<char>(0x80 | (c & 0x3F));
    }
    out.push_back(s);
  }
  return out;
}

// HF q or k rows (heads of d rows, rotate-half) -> llama.cpp's interleaved order.
std::vector<float> permute_rope(const float* w, int64_t heads, int64_t d, int64_t cols) {
  std::vector<float> out(static_cast<size_t>(heads * d * cols));
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < d / 2; ++i)
      for (int64_t j = 0; j < 2; ++j)
        std::memcpy(&out[static_cast<size_t>((h * d + 2 * i + j) * cols)], w + (h * d + j * (d / 2) + i) * cols,
                    static_cast<size_t>(cols) * sizeof(float));
  return out;
}

}  // namespace

std::pair<size_t, uint64_t> export_gguf(const core::ModelConfig& c, const std::vector<float>& params,
                                        const std::string& path, core::Dtype dtype) {
  const bool qwen = c.qwen_layout();
  if (qwen && c.first_dense_layers > 0)
    throw_usage("export --format gguf: llama.cpp's qwen2moe has no dense-MLP layers (this model has "
                "first_dense_layers = {}); export it with --format hf", c.first_dense_layers);
  if (qwen && c.moe.shared_expert_size == 0)
    throw_usage("export --format gguf: llama.cpp's qwen2moe always applies a shared expert (this qwen2_moe-"
                "layout model has shared_expert_size = 0); export it with --format hf");
  if (qwen && c.moe.normalize_topk)
    throw_usage("export --format gguf: llama.cpp's qwen2moe never renormalises the top-k gates (this "
                "qwen2_moe-layout model has normalize_topk = true); export it with --format hf");
  const core::ParamTable table = core::make_param_table(c);
  auto at = [&](const std::string& name) { return params.data() + table.at(name).offset; };
  const int64_t C = c.d_model, HD = c.hd(), E = c.moe.n_experts, I = c.moe.expert_size;
  const int64_t S = c.moe.shared_expert_size;

  // norms, biases (1-D) and the routers in F32, the rest in --dtype
  const GgufType wtype = dtype == core::Dtype::f32 ? GgufType::F32 : dtype == core::Dtype::f16 ? GgufType::F16 : GgufType::BF16;
  std::vector<GgufTensor> ts;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, std::vector<float> data, bool f32 = false) {
    const GgufType type = f32 || shape.size() == 1 ? GgufType::F32 : wtype;
    ts.push_back({name, std::move(shape), std::move(data), type});
  };
  auto copy = [&](const std::string& hf, const std::string& name, std::vector<int64_t> shape, bool f32 = false) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const float* p = at(hf);
    add(name, std::move(shape), std::vector<float>(p, p + n), f32);
  };
  copy("model.embed_tokens.weight", "token_embd.weight", {c.vocab_size, C});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l), b = fmt::format("blk.{}.", l);
    const std::string m = p + (qwen ? "mlp." : "block_sparse_moe.");
    copy(p + "input_layernorm.weight", b + "attn_norm.weight", {C}, true);
    if (qwen) {  // NEOX rope (rotate-half, as HF): q/k rows unpermuted
      copy(p + "self_attn.q_proj.weight", b + "attn_q.weight", {c.n_heads * HD, C});
      copy(p + "self_attn.k_proj.weight", b + "attn_k.weight", {c.n_kv_heads * HD, C});
    } else {
      add(b + "attn_q.weight", {c.n_heads * HD, C}, permute_rope(at(p + "self_attn.q_proj.weight"), c.n_heads, HD, C));
      add(b + "attn_k.weight", {c.n_kv_heads * HD, C},
          permute_rope(at(p + "self_attn.k_proj.weight"), c.n_kv_heads, HD, C));
    }
    copy(p + "self_attn.v_proj.weight", b + "attn_v.weight", {c.n_kv_heads * HD, C});
    if (qwen)
      for (const auto& [g, rows] : {std::pair{"q", c.n_heads * HD}, std::pair{"k", c.n_kv_heads * HD},
                                    std::pair{"v", c.n_kv_heads * HD}}) {
        const std::string name = fmt::format("{}attn_{}.bias", b, g);
        if (c.qkv_bias) copy(fmt::format("{}self_attn.{}_proj.bias", p, g), name, {rows}, true);
        else add(name, {rows}, std::vector<float>(static_cast<size_t>(rows), 0.0f), true);
      }
    copy(p + "self_attn.o_proj.weight", b + "attn_output.weight", {C, c.n_heads * HD});
    copy(p + "post_attention_layernorm.weight", b + "ffn_norm.weight", {C}, true);
    copy(m + "gate.weight", b + "ffn_gate_inp.weight", {E, C}, true);
    for (const auto& [w, name, rows, cols] :
         {std::tuple{qwen ? "gate_proj" : "w1", "ffn_gate_exps", I, C},
          std::tuple{qwen ? "up_proj" : "w3", "ffn_up_exps", I, C},
          std::tuple{qwen ? "down_proj" : "w2", "ffn_down_exps", C, I}}) {
      std::vector<float> stacked;
      stacked.reserve(static_cast<size_t>(E * rows * cols));
      for (int64_t e = 0; e < E; ++e) {
        const float* src = at(fmt::format("{}experts.{}.{}.weight", m, e, w));
        stacked.insert(stacked.end(), src, src + rows * cols);
      }
      add(b + name + ".weight", {E, rows, cols}, std::move(stacked));
    }
    if (qwen) {
      copy(m + "shared_expert_gate.weight", b + "ffn_gate_inp_shexp.weight", {C}, true);  // HF [1, C]
      copy(m + "shared_expert.gate_proj.weight", b + "ffn_gate_shexp.weight", {S, C});
      copy(m + "shared_expert.up_proj.weight", b + "ffn_up_shexp.weight", {S, C});
      copy(m + "shared_expert.down_proj.weight", b + "ffn_down_shexp.weight", {C, S});
    }
  }
  copy("model.norm.weight", "output_norm.weight", {C}, true);
  if (!c.tie_embeddings) copy("lm_head.weight", "output.weight", {c.vocab_size, C});

  GgufMetadata m;
  const int ftype = dtype == core::Dtype::f32 ? 0 : dtype == core::Dtype::f16 ? 1 : 32;  // llama_ftype ALL_F32, MOSTLY_F16, MOSTLY_BF16
  const std::string a = qwen ? "qwen2moe" : "llama";
  m.str("general.architecture", a);
  m.str("general.name", "switchyard");
  m.u32("general.alignment", core::formats::kGgufAlignment);
  m.u32("general.file_type", ftype);
  m.u32(a + ".block_count", c.n_layers);
  m.u32(a + ".context_length", c.max_seq_len);
  m.u32(a + ".embedding_length", C);
  m.u32(a + ".feed_forward_length", I);
  m.u32(a + ".attention.head_count", c.n_heads);
  m.u32(a + ".attention.head_count_kv", c.n_kv_heads);
  m.u32(a + ".attention.key_length", HD);
  m.u32(a + ".attention.value_length", HD);
  m.u32(a + ".rope.dimension_count", HD);
  m.f32(a + ".rope.freq_base", c.rope_theta);
  m.f32(a + ".attention.layer_norm_rms_epsilon", c.rms_norm_eps);
  m.u32(a + ".expert_count", E);
  m.u32(a + ".expert_used_count", c.moe.top_k);
  if (qwen) {
    m.u32(a + ".expert_feed_forward_length", I);
    m.u32(a + ".expert_shared_feed_forward_length", S);
    m.boolean(a + ".expert_weights_norm", false);
  }
  m.u32(a + ".vocab_size", c.vocab_size);
  std::vector<std::string> tokens = byte_tokens();
  tokens.resize(std::min<size_t>(tokens.size(), static_cast<size_t>(c.vocab_size)));
  for (int64_t id = 256; id < c.vocab_size; ++id) tokens.push_back(fmt::format("<unused_{}>", id));
  std::vector<int32_t> types(tokens.size(), 1);  // NORMAL
  for (size_t id = 256; id < types.size(); ++id) types[id] = 5;  // UNUSED
  m.str("tokenizer.ggml.model", "gpt2");
  m.str("tokenizer.ggml.pre", "default");
  m.strs("tokenizer.ggml.tokens", tokens);
  m.i32s("tokenizer.ggml.token_type", types);
  m.strs("tokenizer.ggml.merges", {});
  m.u32("tokenizer.ggml.eos_token_id", 0);
  m.u32("tokenizer.ggml.padding_token_id", 0);
  m.boolean("tokenizer.ggml.add_bos_token", false);

  return {ts.size(), core::formats::write_gguf(path, m, ts)};
}

}  // namespace switchyard::launch
