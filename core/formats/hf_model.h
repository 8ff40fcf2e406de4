// core/formats/hf_model.h: a model folder in the Hugging Face layout (Mixtral / Qwen2-MoE), read
// and written: config.json <-> ModelConfig, and the weights as safetensors (formats/safetensors.h).
// ("Checkpoint" in Switchyard means only the HDF5 training checkpoint of launch/checkpoint.h.)
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/params.h"

namespace switchyard::core::formats {

// ---- reading ----

// Reads dir/config.json (model_type "mixtral" or "qwen2_moe") into a validated ModelConfig.
// - mixtral: normalize_topk = true, no qkv bias, no shared expert, no dense layers. A non-null
//   sliding_window smaller than max_position_embeddings caps max_seq_len at the window (full
//   causal attention equals sliding-window attention up to that length).
// - qwen2_moe: qkv_bias = true, norm_topk_prob -> normalize_topk (default false),
//   shared_expert_intermediate_size -> shared_expert_size (0: none), intermediate_size ->
//   dense_ffn_size; supported only with decoder_sparse_step = 1 and mlp_only_layers = [0..n-1]
//   (-> first_dense_layers = n).
// The size keys (hidden_size, num_hidden_layers, num_attention_heads, vocab_size, the expert
// count and expert size) are required; other keys default as in transformers. rope_scaling,
// qwen2_moe's use_sliding_window and a hidden_act other than silu are rejected. Any problem is a
// usage Error naming the file and key.
ModelConfig read_hf_config(const std::string& dir);

// Fills host_params (table.total() floats, in arena order) from dir/model.safetensors or, when
// dir/model.safetensors.index.json exists, from the shards named in its weight_map. Every tensor
// of the table must be present with its exact shape; a tensor of the folder the table does
// not know is an error, except "*rotary_emb.inv_freq" buffers, zero-element tensors (with the
// shared_expert_gate of a zero-sized shared expert) and lm_head.weight when the embeddings are
// tied. F32/BF16/F16/F64 data is converted to fp32. Problems are usage Errors naming the tensor
// and the file. `also_known` (optional): tensors it names are skipped without error — the routed
// experts other ranks hold when the table is one expert-parallel rank's share.
void load_hf_weights(const std::string& dir, const ParamTable& table, float* host_params,
                     const ParamTable* also_known = nullptr);

// ---- writing ----

// What the model's routing needs that the mixtral and qwen2_moe layouts cannot express (their
// routers are a softmax top-k without a selection bias): "" when nothing, else a phrase naming
// the config keys (sigmoid scoring, the aux-loss-free selection bias, top-p routing). Writers refuse such a
// model rather than change its routing.
std::string hf_routing_unsupported(const ModelConfig& cfg);

// config.json of the Hugging Face layout: mixtral / MixtralForCausalLM, or qwen2_moe /
// Qwen2MoeForCausalLM when cfg.qwen_layout(); torch_dtype: the weights' dtype.
nlohmann::json hf_config_json(const ModelConfig& cfg, Dtype weights = Dtype::f32);

// One fp32 tensor of the Hugging Face layout; `data` points into the caller's parameters or into
// `owned` (the zero q/k/v biases Qwen2-MoE requires when the model has none).
struct HfTensor {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;
  std::vector<float> owned;
};
// Every tensor to write for the model, in parameter-table order (then the zero biases). Do not copy
// the result after taking `data` pointers of owned tensors elsewhere.
std::vector<HfTensor> hf_tensors(const ModelConfig& cfg, const ParamTable& table, const float* host_params);

// Writes dir/model.safetensors (F32, metadata format = pt) and dir/config.json, each by the
// protocol of formats/durable.h. The folder must exist.
void write_hf_model(const std::string& dir, const ModelConfig& cfg, const ParamTable& table,
                    const float* host_params);

}  // namespace switchyard::core::formats
