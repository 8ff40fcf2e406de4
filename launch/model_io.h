// launch/model_io.h: reading and writing model weights in the Hugging Face layout
// (config.json + safetensors), used by --init-from, eval and the trainer's final save.
#pragma once

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

// Writes dir/config.json and dir/model.safetensors (f32) atomically enough for a final save:
// files are written to temporaries and renamed.
void save_hf_model(const std::string& dir, const core::ModelConfig& cfg,
                   const core::ParamTable& table, const float* host_params);

}  // namespace switchyard::launch
