#include "launch/model_io.h"

#include "launch/outputs.h"
#include "launch/plan.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/formats/durable.h"
#include "core/hf_checkpoint.h"
#include "core/safetensors.h"
#include "launch/outputs.h"

namespace switchyard::launch {
namespace fs = std::filesystem;

LoadedModel load_hf_model(const std::string& dir) {
  LoadedModel m;
  m.dir = dir;
  m.config = core::read_hf_config(dir);
  const core::ParamTable table = core::make_param_table(m.config);
  require_host_memory(4.0 * static_cast<double>(table.total()), fmt::format("the model of {}/config.json", dir),
                      "is config.json the right one?");
  m.params.resize(static_cast<size_t>(table.total()));
  core::load_hf_weights(dir, table, m.params.data());
  return m;
}

std::string resolve_model_dir(const std::string& checkpoint_dir) {
  if (fs::exists(fs::path(checkpoint_dir) / "model" / "config.json"))
    return (fs::path(checkpoint_dir) / "model").string();
  if (fs::exists(fs::path(checkpoint_dir) / "config.json")) return checkpoint_dir;
  throw_usage("{} is neither a run folder (with model/config.json) nor a model folder (with "
              "config.json); pass the folder `switchyard train` wrote (runs/<name>)",
              checkpoint_dir);
}

nlohmann::json hf_config_json(const core::ModelConfig& c, const std::string& torch_dtype) {
  nlohmann::json j;
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
  j["torch_dtype"] = torch_dtype;
  j["bos_token_id"] = nullptr;
  j["eos_token_id"] = 0;
  if (qwen) {
    j["num_experts"] = c.moe.n_experts;
    j["moe_intermediate_size"] = c.moe.expert_size;
    j["shared_expert_intermediate_size"] = c.moe.shared_expert_size;
    j["intermediate_size"] = c.dense_ffn_size;
    j["norm_topk_prob"] = c.moe.normalize_topk;
    j["decoder_sparse_step"] = 1;
    nlohmann::json dense = nlohmann::json::array();
    for (int64_t l = 0; l < c.first_dense_layers; ++l) dense.push_back(l);
    j["mlp_only_layers"] = dense;
  } else {
    j["num_local_experts"] = c.moe.n_experts;
    j["intermediate_size"] = c.moe.expert_size;
    j["sliding_window"] = nullptr;
  }
  return j;
}

std::vector<HfTensor> hf_tensors(const core::ModelConfig& cfg, const core::ParamTable& table,
                                 const float* host_params) {
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

void save_hf_model(const std::string& dir, const core::ModelConfig& cfg, const core::ParamTable& table,
                   const float* host_params) {
  // the trainer's own folder: replaced when it wrote it, never over files of others (outputs.h)
  const std::vector<std::string> entries = {"model.safetensors*", "config.json*"};
  check_output_folder(dir, kWriterWeights, entries, /*overwrite=*/true, "the run's weights folder", "");
  require_writable_folder(dir, "the run's weights folder");
  const std::vector<HfTensor> hf = hf_tensors(cfg, table, host_params);
  std::vector<core::TensorWrite> tensors;
  for (const auto& t : hf) tensors.push_back({t.name, "F32", t.shape, t.data});
  core::write_safetensors((fs::path(dir) / "model.safetensors").string(), tensors, {{"format", "pt"}});
  core::formats::write_text_durable((fs::path(dir) / "config.json").string(), hf_config_json(cfg).dump(2) + "\n");
  mark_folder(dir, kWriterWeights, entries);
}

}  // namespace switchyard::launch
