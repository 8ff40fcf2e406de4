// launch/export_gguf.cpp: see export_gguf.h.
#include "launch/export_gguf.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/formats/durable.h"
#include "core/half.h"
#include "core/params.h"

namespace switchyard::launch {
namespace {

namespace fs = std::filesystem;

enum : uint32_t { kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7, kString = 8, kArray = 9 };
constexpr uint64_t kAlign = 32;

struct Buf {
  std::vector<uint8_t> b;
  template <class T> void put(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof(T));
  }
  void str(const std::string& s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
  }
};

struct Meta {
  Buf buf;
  uint64_t count = 0;
  void key(const std::string& k, uint32_t type) {
    buf.str(k);
    buf.put(type);
    ++count;
  }
  void u32(const std::string& k, int64_t v) { key(k, kU32); buf.put(static_cast<uint32_t>(v)); }
  void i32(const std::string& k, int64_t v) { key(k, kI32); buf.put(static_cast<int32_t>(v)); }
  void f32(const std::string& k, double v) { key(k, kF32); buf.put(static_cast<float>(v)); }
  void boolean(const std::string& k, bool v) { key(k, kBool); buf.put(static_cast<uint8_t>(v)); }
  void str(const std::string& k, const std::string& v) { key(k, kString); buf.str(v); }
  void strs(const std::string& k, const std::vector<std::string>& v) {
    key(k, kArray);
    buf.put(kString);
    buf.put<uint64_t>(v.size());
    for (const auto& s : v) buf.str(s);
  }
  void i32s(const std::string& k, const std::vector<int32_t>& v) {
    key(k, kArray);
    buf.put(kI32);
    buf.put<uint64_t>(v.size());
    for (int32_t x : v) buf.put(x);
  }
};

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

struct Tensor {
  std::string name;
  std::vector<int64_t> shape;  // PyTorch order
  std::vector<float> data;
  bool f32 = false;            // forced F32
};

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

std::pair<size_t, uint64_t> write_gguf(const core::ModelConfig& c, const std::vector<float>& params,
                                       const std::string& path, const std::string& dtype) {
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

  std::vector<Tensor> ts;
  auto copy = [&](const std::string& hf, const std::string& name, std::vector<int64_t> shape, bool f32 = false) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const float* p = at(hf);
    ts.push_back({name, std::move(shape), std::vector<float>(p, p + n), f32});
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
      ts.push_back({b + "attn_q.weight", {c.n_heads * HD, C},
                    permute_rope(at(p + "self_attn.q_proj.weight"), c.n_heads, HD, C)});
      ts.push_back({b + "attn_k.weight", {c.n_kv_heads * HD, C},
                    permute_rope(at(p + "self_attn.k_proj.weight"), c.n_kv_heads, HD, C)});
    }
    copy(p + "self_attn.v_proj.weight", b + "attn_v.weight", {c.n_kv_heads * HD, C});
    if (qwen)
      for (const auto& [g, rows] : {std::pair{"q", c.n_heads * HD}, std::pair{"k", c.n_kv_heads * HD},
                                    std::pair{"v", c.n_kv_heads * HD}}) {
        const std::string name = fmt::format("{}attn_{}.bias", b, g);
        if (c.qkv_bias) copy(fmt::format("{}self_attn.{}_proj.bias", p, g), name, {rows}, true);
        else ts.push_back({name, {rows}, std::vector<float>(static_cast<size_t>(rows), 0.0f), true});
      }
    copy(p + "self_attn.o_proj.weight", b + "attn_output.weight", {C, c.n_heads * HD});
    copy(p + "post_attention_layernorm.weight", b + "ffn_norm.weight", {C}, true);
    copy(m + "gate.weight", b + "ffn_gate_inp.weight", {E, C}, true);
    for (const auto& [w, name, rows, cols] :
         {std::tuple{qwen ? "gate_proj" : "w1", "ffn_gate_exps", I, C},
          std::tuple{qwen ? "up_proj" : "w3", "ffn_up_exps", I, C},
          std::tuple{qwen ? "down_proj" : "w2", "ffn_down_exps", C, I}}) {
      Tensor t{b + name + ".weight", {E, rows, cols}, {}, false};
      t.data.reserve(static_cast<size_t>(E * rows * cols));
      for (int64_t e = 0; e < E; ++e) {
        const float* src = at(fmt::format("{}experts.{}.{}.weight", m, e, w));
        t.data.insert(t.data.end(), src, src + rows * cols);
      }
      ts.push_back(std::move(t));
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

  Meta m;
  const int ftype = dtype == "F32" ? 0 : dtype == "F16" ? 1 : 32;  // llama_ftype ALL_F32, MOSTLY_F16, MOSTLY_BF16
  const uint32_t gtype = dtype == "F32" ? 0 : dtype == "F16" ? 1 : 30;  // ggml_type F32, F16, BF16
  const std::string a = qwen ? "qwen2moe" : "llama";
  m.str("general.architecture", a);
  m.str("general.name", "switchyard");
  m.u32("general.alignment", kAlign);
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

  // header, tensor infos, padding, then each tensor's data at its aligned offset
  Buf h;
  h.put<uint32_t>(0x46554747u);  // "GGUF" little-endian
  h.put<uint32_t>(3);
  h.put<uint64_t>(ts.size());
  h.put<uint64_t>(m.count);
  h.b.insert(h.b.end(), m.buf.b.begin(), m.buf.b.end());
  std::vector<std::vector<uint8_t>> data(ts.size());
  uint64_t offset = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    const Tensor& t = ts[i];
    const bool f32 = t.f32 || t.shape.size() == 1 || dtype == "F32";
    std::vector<uint8_t>& d = data[i];
    if (f32) {
      d.resize(t.data.size() * 4);
      std::memcpy(d.data(), t.data.data(), d.size());
    } else {
      std::vector<uint16_t> half(t.data.size());
      if (dtype == "BF16") core::f32_to_bf16(t.data.data(), half.data(), half.size());
      else core::f32_to_f16(t.data.data(), half.data(), half.size());
      d.resize(half.size() * 2);
      std::memcpy(d.data(), half.data(), d.size());
    }
    h.str(t.name);
    h.put<uint32_t>(static_cast<uint32_t>(t.shape.size()));
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) h.put<uint64_t>(static_cast<uint64_t>(*it));
    h.put<uint32_t>(f32 ? 0u : gtype);
    h.put<uint64_t>(offset);
    offset += (d.size() + kAlign - 1) / kAlign * kAlign;
  }
  h.b.resize((h.b.size() + kAlign - 1) / kAlign * kAlign, 0);

  core::formats::write_file_durable(path, [&](std::FILE* f) {
    static const char zeros[kAlign] = {};
    bool ok = std::fwrite(h.b.data(), 1, h.b.size(), f) == h.b.size();
    for (const auto& d : data) {
      const size_t pad = (kAlign - d.size() % kAlign) % kAlign;
      ok = ok && std::fwrite(d.data(), 1, d.size(), f) == d.size() && std::fwrite(zeros, 1, pad, f) == pad;
    }
    return ok;
  });
  return {ts.size(), h.b.size() + offset};
}

}  // namespace switchyard::launch
