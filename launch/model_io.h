// launch/model_io.h: the commands' side of model folders in the Hugging Face layout (the format
// itself is core/formats/hf_model.h): loading one for --init-from, eval and export, finding it in a
// run folder, and the trainer's final save under the ownership rule of launch/outputs.h.
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
std::string resolve_model_dir(const std::string& folder);

// Writes dir/config.json and dir/model.safetensors (f32; core::formats::write_hf_model) into the
// run's weights folder, replacing only what an earlier save wrote there, and marks the folder.
void save_hf_model(const std::string& dir, const core::ModelConfig& cfg,
                   const core::ParamTable& table, const float* host_params);

}  // namespace switchyard::launch
