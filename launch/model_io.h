// launch/model_io.h: reading and writing model weights in the Hugging Face layout
// (config.json + safetensors), used by --init-from, eval and the trainer's final save.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/params.h"

namespace switchyard::launch {

struct LoadedModel {
  core::ModelConfig config;
  std::vector<float> params;  // host, in make_param_table(config) order
  std::string dir;            // the folder the weights came from
};

// dir holds config.json + model.safetensors (or a sharded index).
LoadedModel load_hf_model(const std::string& dir);
// A run folder written by `switchyard train` (its model/ subfolder) or a Hugging Face folder.
std::string resolve_model_dir(const std::string& checkpoint_dir);

// config.json of the Hugging Face layout: mixtral / MixtralForCausalLM, or qwen2_moe /
// Qwen2MoeForCausalLM when cfg.qwen_layout(); torch_dtype "float32", "bfloat16" or "float16".
nlohmann::json hf_config_json(const core::ModelConfig& cfg, const std::string& torch_dtype = "float32");

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
std::vector<HfTensor> hf_tensors(const core::ModelConfig& cfg, const core::ParamTable& table,
                                 const float* host_params);

// Writes dir/config.json and dir/model.safetensors (f32) atomically enough for a final save:
// files are written to temporaries and renamed.
void save_hf_model(const std::string& dir, const core::ModelConfig& cfg,
                   const core::ParamTable& table, const float* host_params);

}  // namespace switchyard::launch
