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

// What eval and export read a model from, `folder` being: a checkpoint (a step folder, a
// checkpoint directory with `latest`, or a run folder's checkpoints/latest: the run's config, its
// weights and its selection bias) or else a Hugging Face folder (a run folder's model/, or the
// folder itself). A run whose routing no Hugging Face layout expresses (sigmoid scoring, a bias,
// top-p) has only its checkpoints. `what` names the option in errors ("eval --checkpoint").
struct ModelSource {
  core::ModelConfig config;
  std::vector<float> params;          // make_param_table(config) order
  std::vector<float> selection_bias;  // [MoE layers * E]; empty without one
  std::string from;                   // the folder read
};
ModelSource load_model_source(const std::string& folder, const std::string& what);
// The model of a command taking exactly one of --init-from DIR (a Hugging Face folder) and
// --checkpoint DIR (load_model_source); `command` names it in errors ("eval").
ModelSource load_model_option(const std::string& init_from, const std::string& checkpoint,
                              const std::string& command);

// Writes dir/config.json and dir/model.safetensors (f32; core::formats::write_hf_model) into the
// run's weights folder, replacing only what an earlier save wrote there, and marks the folder.
void save_hf_model(const std::string& dir, const core::ModelConfig& cfg,
                   const core::ParamTable& table, const float* host_params);

}  // namespace switchyard::launch
