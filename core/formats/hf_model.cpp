// core/formats/hf_model.cpp: see hf_model.h. Reading, then writing.
#include "core/formats/hf_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "core/formats/durable.h"
#include "core/formats/safetensors.h"

namespace switchyard::core::formats {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json read_json(const fs::path& p, const char* what) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw_usage("{}: cannot open {} (no such file, or not readable)", p.string(), what);
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::exception& e) {
    throw_usage("{}: invalid JSON: {}", p.string(), e.what());
  }
}

// Typed access to config.json keys; null counts as absent (as in transformers).
struct Keys {
  const json& j;
  std::string file;

  bool has(const char* k) const { return j.contains(k) && !j[k].is_null(); }
  [[noreturn]] void missing(const char* k) const {
    throw_usage("{}: missing key '{}' (model_type {})", file, k, j.value("model_type", "?"));
  }
  int64_t integer(const char* k) const {
    if (!has(k)) missing(k);
    const json& v = j[k];
    if (!v.is_number_integer())
      throw_usage("{}: key '{}' must be an integer, got {}", file, k, v.dump());
    return v.get<int64_t>();
  }
  int64_t integer(const char* k, int64_t def) const { return has(k) ? integer(k) : def; }
  double number(const char* k) const {
    if (!has(k)) missing(k);
    const json& v = j[k];
    if (!v.is_number()) throw_usage("{}: key '{}' must be a number, got {}", file, k, v.dump());
    return v.get<double>();
  }
  double number(const char* k, double def) const { return has(k) ? number(k) : def; }
  bool boolean(const char* k, bool def) const {
    if (!has(k)) return def;
    const json& v = j[k];
    if (!v.is_boolean()) throw_usage("{}: key '{}' must be true or false, got {}", file, k, v.dump());
    return v.get<bool>();
  }
};

void read_common(const Keys& k, ModelConfig& m, double def_theta, double def_eps, int64_t def_max_pos) {
  if (k.has("hidden_act") &&
      (!k.j["hidden_act"].is_string() || k.j["hidden_act"].get<std::string>() != "silu"))
    throw_usage("{}: hidden_act {} is not supported (only silu, the SwiGLU experts of Mixtral and "
                "Qwen2-MoE)",
                k.file, k.j["hidden_act"].dump());
  if (k.has("rope_scaling"))
    throw_usage("{}: rope_scaling {} is not supported (only plain RoPE); remove it or set it to null",
                k.file, k.j["rope_scaling"].dump());
  m.d_model = k.integer("hidden_size");
  m.n_layers = k.integer("num_hidden_layers");
  m.n_heads = k.integer("num_attention_heads");
  m.n_kv_heads = k.integer("num_key_value_heads", m.n_heads);
  m.head_dim = k.integer("head_dim", 0);
  m.vocab_size = k.integer("vocab_size");
  m.max_seq_len = k.integer("max_position_embeddings", def_max_pos);
  m.rope_theta = k.number("rope_theta", def_theta);
  m.rms_norm_eps = k.number("rms_norm_eps", def_eps);
  m.tie_embeddings = k.boolean("tie_word_embeddings", false);
  m.init_std = k.number("initializer_range", m.init_std);
  m.moe.z_loss_coef = 0.0;
}

}  // namespace

ModelConfig read_hf_config(const std::string& dir) {
  const fs::path path = fs::path(dir) / "config.json";
  if (!fs::exists(path))
    throw_usage("{}: not found (expected a Hugging Face model directory with config.json and "
                "model.safetensors or model.safetensors.index.json)",
                path.string());
  const json j = read_json(path, "the model config");
  const Keys k{j, path.string()};
  if (!j.is_object()) throw_usage("{}: expected a JSON object", k.file);
  if (!j.contains("model_type") || !j["model_type"].is_string())
    throw_usage("{}: no model_type (supported: mixtral, qwen2_moe)", k.file);
  const std::string type = j["model_type"].get<std::string>();
  ModelConfig m;
  if (type == "mixtral") {
    read_common(k, m, 1e6, 1e-5, 4096 * 32);
    m.moe.n_experts = k.integer("num_local_experts");
    m.moe.top_k = k.integer("num_experts_per_tok", 2);
    m.moe.expert_size = k.integer("intermediate_size");
    m.moe.normalize_topk = true;
    m.moe.shared_expert_size = 0;
    m.moe.aux_loss_coef = k.number("router_aux_loss_coef", 0.001);
    m.qkv_bias = false;
    m.first_dense_layers = 0;
    if (k.has("sliding_window")) {
      const int64_t w = k.integer("sliding_window");
      if (w <= 0) throw_usage("{}: sliding_window must be positive or null, got {}", k.file, w);
      m.max_seq_len = std::min(m.max_seq_len, w);
    }
  } else if (type == "qwen2_moe") {
    read_common(k, m, 10000.0, 1e-6, 32768);
    m.moe.n_experts = k.integer("num_experts");
    m.moe.top_k = k.integer("num_experts_per_tok", 4);
    m.moe.expert_size = k.integer("moe_intermediate_size");
    m.moe.shared_expert_size = k.integer("shared_expert_intermediate_size", 5632);
    m.dense_ffn_size = k.integer("intermediate_size", 5632);
    m.moe.normalize_topk = k.boolean("norm_topk_prob", false);
    m.moe.aux_loss_coef = k.number("router_aux_loss_coef", 0.001);
    m.qkv_bias = true;
    if (k.boolean("use_sliding_window", false))
      throw_usage("{}: use_sliding_window = true is not supported (full causal attention only)",
                  k.file);
    const int64_t step = k.integer("decoder_sparse_step", 1);
    if (step != 1)
      throw_usage("{}: decoder_sparse_step = {} is not supported: Switchyard models have dense "
                  "layers only at the start (mlp_only_layers = [0, ..., n-1]) and MoE layers "
                  "after them, i.e. decoder_sparse_step = 1",
                  k.file, step);
    std::vector<int64_t> dense;
    if (k.has("mlp_only_layers")) {
      const json& v = j["mlp_only_layers"];
      if (!v.is_array()) throw_usage("{}: mlp_only_layers must be a list of layer indices", k.file);
      for (const json& x : v) {
        if (!x.is_number_integer())
          throw_usage("{}: mlp_only_layers must be a list of layer indices, got {}", k.file, v.dump());
        dense.push_back(x.get<int64_t>());
      }
    }
    std::sort(dense.begin(), dense.end());
    for (size_t i = 0; i < dense.size(); ++i) {
      if (dense[i] != static_cast<int64_t>(i))
        throw_usage("{}: mlp_only_layers {} is not supported: Switchyard supports dense layers only "
                    "as a prefix, mlp_only_layers = [0, 1, ..., n-1] (the first n layers dense, the "
                    "rest MoE)",
                    k.file, j["mlp_only_layers"].dump());
    }
    m.first_dense_layers = static_cast<int64_t>(dense.size());
  } else {
    throw_usage("{}: model_type '{}' is not supported (supported: mixtral, qwen2_moe)", k.file, type);
  }
  validate(m, k.file);
  return m;
}

void load_hf_weights(const std::string& dir, const ParamTable& table, float* host_params,
                     const ParamTable* also_known) {
  const fs::path d(dir);
  const fs::path index_path = d / "model.safetensors.index.json";
  const fs::path single = d / "model.safetensors";

  // The shard files, and which file the index says holds each tensor.
  std::vector<std::string> files;
  std::unordered_map<std::string, std::string> weight_map;
  const bool sharded = fs::exists(index_path);
  if (sharded) {
    const json idx = read_json(index_path, "the checkpoint index");
    if (!idx.is_object() || !idx.contains("weight_map") || !idx["weight_map"].is_object())
      throw_usage("{}: no weight_map object", index_path.string());
    std::set<std::string> seen;
    for (auto it = idx["weight_map"].begin(); it != idx["weight_map"].end(); ++it) {
      if (!it.value().is_string())
        throw_usage("{}: weight_map entry '{}' is not a file name", index_path.string(), it.key());
      const std::string f = it.value().get<std::string>();
      const fs::path fp(f);
      if (f.empty() || fp.is_absolute() ||
          std::any_of(fp.begin(), fp.end(), [](const fs::path& c) { return c == ".."; }))
        throw_usage("{}: weight_map entry '{}' names '{}', expected a file name inside {}",
                    index_path.string(), it.key(), f, dir);
      const std::string full = (d / fp).string();
      weight_map[it.key()] = full;
      if (seen.insert(full).second) files.push_back(full);
    }
  } else if (fs::exists(single)) {
    files.push_back(single.string());
  } else {
    throw_usage("{}: neither model.safetensors nor model.safetensors.index.json found (a Hugging "
                "Face checkpoint in safetensors format is expected; convert PyTorch .bin "
                "checkpoints first)",
                dir);
  }

  std::vector<SafetensorsFile> shards;
  shards.reserve(files.size());
  std::unordered_map<std::string, const TensorView*> found;
  std::vector<const TensorView*> all;
  for (const std::string& f : files) {
    shards.emplace_back(f);
    for (const TensorView& t : shards.back().tensors()) {
      auto [it, inserted] = found.emplace(t.name, &t);
      if (!inserted)
        throw_usage("{}: tensor '{}' is stored twice, in {} and {}", dir, t.name, it->second->file,
                    t.file);
      all.push_back(&t);
    }
  }
  const std::string where_all = sharded ? index_path.string() : single.string();

  // The index and the shards must agree.
  for (const auto& [name, file] : weight_map) {
    auto it = found.find(name);
    if (it == found.end())
      throw_usage("{}: the index maps tensor '{}' to {}, which does not contain it",
                  index_path.string(), name, file);
    if (it->second->file != file)
      throw_usage("{}: the index maps tensor '{}' to {}, but it is in {}", index_path.string(), name,
                  file, it->second->file);
  }

  // Every parameter present with its shape.
  std::vector<std::string> missing;
  for (const ParamSpec& p : table.specs()) {
    auto it = found.find(p.name);
    if (it == found.end()) {
      missing.push_back(fmt::format("'{}' {}", p.name, shape_str(p.shape)));
      continue;
    }
    const TensorView& t = *it->second;
    if (t.shape != p.shape)
      throw_usage("{}: tensor '{}' has shape {}, expected {} for the model config", t.file, p.name,
                  shape_str(t.shape), shape_str(p.shape));
    if (t.dtype == "I8") {  // int8 weight-only export (launch/export_int8.h): needs its scales
      auto s = found.find(p.name + "_scale");
      if (s == found.end())
        throw_usage("{}: tensor '{}' is I8 but there is no '{}_scale' tensor to dequantize it", t.file, p.name,
                    p.name);
      if (s->second->dtype != "F32" || s->second->shape != std::vector<int64_t>{p.shape[0]})
        throw_usage("{}: tensor '{}_scale' must be F32 of shape [{}], got {} {}", s->second->file, p.name,
                    p.shape[0], s->second->dtype, shape_str(s->second->shape));
    } else if (t.dtype != "F32" && t.dtype != "BF16" && t.dtype != "F16" && t.dtype != "F64") {
      throw_usage("{}: tensor '{}' has dtype {}; expected F32, BF16, F16 (or I8 with '{}_scale')", t.file,
                  p.name, t.dtype, p.name);
    }
  }
  if (!missing.empty()) {
    const size_t show = std::min<size_t>(missing.size(), 5);
    throw_usage("{}: missing tensor{} {}{} (the checkpoint does not match the model config)",
                where_all, missing.size() > 1 ? "s" : "",
                fmt::join(missing.begin(), missing.begin() + static_cast<long>(show), ", "),
                missing.size() > show ? fmt::format(" and {} more", missing.size() - show) : "");
  }

  // Tensors the model does not know.
  auto ends_with = [](const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  std::vector<std::string> unknown;
  size_t n_unknown = 0;
  for (const TensorView* t : all) {
    if (table.find(t->name) >= 0) continue;
    if (also_known && also_known->find(t->name) >= 0) continue;
    if (ends_with(t->name, "rotary_emb.inv_freq")) continue;
    if (ends_with(t->name, "_scale")) {  // the scales of an I8 parameter
      auto q = found.find(t->name.substr(0, t->name.size() - 6));
      if (q != found.end() && q->second->dtype == "I8" && table.find(q->first) >= 0) continue;
    }
    if (t->numel() == 0) continue;  // e.g. a zero-sized qwen2_moe shared expert
    if (t->name == "lm_head.weight" && table.find("model.embed_tokens.weight") >= 0) continue;  // tied
    if (ends_with(t->name, ".shared_expert_gate.weight")) {
      const std::string base = t->name.substr(0, t->name.size() - std::string("_gate.weight").size());
      auto g = found.find(base + ".gate_proj.weight");
      if (g == found.end() || g->second->numel() == 0) continue;  // gate of an absent expert
    }
    ++n_unknown;
    if (unknown.size() < 5) unknown.push_back(fmt::format("'{}' (in {})", t->name, t->file));
  }
  if (n_unknown > 0)
    throw_usage("{}: {} tensor{} of the checkpoint {} not part of the model described by the "
                "config: {}{} (is the config.json the one of these weights?)",
                dir, n_unknown, n_unknown > 1 ? "s" : "", n_unknown > 1 ? "are" : "is",
                fmt::join(unknown, ", "),
                n_unknown > unknown.size() ? fmt::format(" and {} more", n_unknown - unknown.size())
                                           : "");

  for (const ParamSpec& p : table.specs()) {
    const TensorView& t = *found.at(p.name);
    if (t.dtype != "I8") {
      to_f32(t, host_params + p.offset);
      continue;
    }
    // dequantize: w[r, j] = q[r, j] * scale[r] (fp32)
    const TensorView& s = *found.at(p.name + "_scale");
    std::vector<float> scale(static_cast<size_t>(p.shape[0]));
    std::memcpy(scale.data(), s.data, scale.size() * sizeof(float));
    const int64_t cols = t.numel() / std::max<int64_t>(p.shape[0], 1);
    float* dst = host_params + p.offset;
    for (int64_t r = 0; r < p.shape[0]; ++r)
      for (int64_t j = 0; j < cols; ++j)
        dst[r * cols + j] =
            static_cast<float>(static_cast<int8_t>(t.data[r * cols + j])) * scale[static_cast<size_t>(r)];
  }
}

namespace {
// transformers' name of a dtype (config.json's torch_dtype)
const char* torch_dtype_name(Dtype d) {
  switch (d) {
    case Dtype::f32: return "float32";
    case Dtype::bf16: return "bfloat16";
    case Dtype::f16: return "float16";
  }
  return "float32";
}
}  // namespace

std::string hf_routing_unsupported(const ModelConfig& cfg) {
  std::string what;
  if (cfg.moe.router.scoring != RouterScoring::softmax)
    what = fmt::format("{} router scoring (model.moe.router.scoring)", name_of(cfg.moe.router.scoring));
  if (cfg.moe.balance.bias_rate > 0)
    what += std::string(what.empty() ? "" : " and ") +
            "the aux-loss-free selection bias (model.moe.balance.bias_rate > 0, DeepSeek-V3's "
            "e_score_correction_bias)";
  if (cfg.moe.router.top_p > 0)
    what += std::string(what.empty() ? "" : " and ") +
            "top-p routing (model.moe.router.top_p > 0: experts per token vary)";
  return what;
}

nlohmann::json hf_config_json(const ModelConfig& c, Dtype weights) {
  json j;
  const bool qwen = c.qwen_layout();
  j["architectures"] = {qwen ? "Qwen2MoeForCausalLM" : "MixtralForCausalLM"};
  j["model_type"] = qwen ? "qwen2_moe" : "mixtral";
  j["hidden_size"] = c.d_model;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  j["head_dim"] = c.hd();
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_seq_len;
  j["rope_theta"] = c.rope_theta;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["tie_word_embeddings"] = c.tie_embeddings;
  j["num_experts_per_tok"] = c.moe.top_k;
  j["router_aux_loss_coef"] = c.moe.aux_loss_coef;
  j["hidden_act"] = "silu";
  j["initializer_range"] = c.init_std;
  j["torch_dtype"] = torch_dtype_name(weights);
  j["bos_token_id"] = nullptr;
  j["eos_token_id"] = 0;
  if (qwen) {
    j["num_experts"] = c.moe.n_experts;
    j["moe_intermediate_size"] = c.moe.expert_size;
    j["shared_expert_intermediate_size"] = c.moe.shared_expert_size;
    j["intermediate_size"] = c.dense_ffn_size;
    j["norm_topk_prob"] = c.moe.normalize_topk;
    j["decoder_sparse_step"] = 1;
    json dense = json::array();
    for (int64_t l = 0; l < c.first_dense_layers; ++l) dense.push_back(l);
    j["mlp_only_layers"] = dense;
  } else {
    j["num_local_experts"] = c.moe.n_experts;
    j["intermediate_size"] = c.moe.expert_size;
    j["sliding_window"] = nullptr;
  }
  return j;
}

std::vector<HfTensor> hf_tensors(const ModelConfig& cfg, const ParamTable& table, const float* host_params) {
  std::vector<HfTensor> out;
  for (const auto& p : table.specs()) out.push_back({p.name, p.shape, host_params + p.offset, {}});
  // Qwen2-MoE always has q/k/v biases: a model without them is written with zero biases, which
  // computes the same function in every engine.
  if (cfg.qwen_layout() && !cfg.qkv_bias) {
    for (int64_t l = 0; l < cfg.n_layers; ++l)
      for (const char* proj : {"q_proj", "k_proj", "v_proj"}) {
        const auto& w = table.at("model.layers." + std::to_string(l) + ".self_attn." + proj + ".weight");
        out.push_back({"model.layers." + std::to_string(l) + ".self_attn." + proj + ".bias", {w.shape[0]},
                       nullptr, std::vector<float>(static_cast<size_t>(w.shape[0]), 0.0f)});
      }
  }
  for (auto& t : out)
    if (!t.data) t.data = t.owned.data();
  return out;
}

void write_hf_model(const std::string& dir, const ModelConfig& cfg, const ParamTable& table,
                    const float* host_params) {
  const std::vector<HfTensor> hf = hf_tensors(cfg, table, host_params);
  std::vector<TensorWrite> tensors;
  for (const auto& t : hf) tensors.push_back({t.name, "F32", t.shape, t.data});
  write_safetensors((fs::path(dir) / "model.safetensors").string(), tensors, {{"format", "pt"}});
  write_text_durable((fs::path(dir) / "config.json").string(), hf_config_json(cfg).dump(2) + "\n");
}

}  // namespace switchyard::core::formats
