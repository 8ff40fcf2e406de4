// launch/model_io.cpp: see model_io.h.
#include "launch/model_io.h"

#include <filesystem>

#include "core/error.h"
#include "core/formats/hf_model.h"
#include "launch/checkpoint.h"
#include "launch/outputs.h"
#include "launch/plan.h"

namespace switchyard::launch {
namespace fs = std::filesystem;

LoadedModel load_hf_model(const std::string& dir) {
  LoadedModel m;
  m.dir = dir;
  m.config = core::formats::read_hf_config(dir);
  const core::ParamTable table = core::make_param_table(m.config);
  require_host_memory(4.0 * static_cast<double>(table.total()), fmt::format("the model of {}/config.json", dir),
                      "is config.json the right one?");
  m.params.resize(static_cast<size_t>(table.total()));
  core::formats::load_hf_weights(dir, table, m.params.data());
  return m;
}

std::string resolve_model_dir(const std::string& folder) {
  if (fs::exists(fs::path(folder) / "model" / "config.json"))
    return (fs::path(folder) / "model").string();
  if (fs::exists(fs::path(folder) / "config.json")) return folder;
  throw_usage("{} is neither a run folder (with model/config.json) nor a model folder (with "
              "config.json); pass the folder `switchyard train` wrote (runs/<name>)",
              folder);
}

void save_hf_model(const std::string& dir, const core::ModelConfig& cfg, const core::ParamTable& table,
                   const float* host_params) {
  // the trainer's own folder: replaced when it wrote it, never over files of others (outputs.h)
  const std::vector<std::string> entries = {"model.safetensors*", "config.json*"};
  check_output_folder(dir, kWriterWeights, entries, /*overwrite=*/true, "the run's weights folder", "");
  require_writable_folder(dir, "the run's weights folder");
  core::formats::write_hf_model(dir, cfg, table, host_params);
  mark_folder(dir, kWriterWeights, entries);
}

ModelSource load_model_source(const std::string& folder, const std::string& what) {
  namespace fs = std::filesystem;
  const fs::path p(folder);
  if (!fs::is_directory(p))
    throw_usage("{} {}: no such folder (expected a checkpoint folder step-NNNNNN, a checkpoint directory with "
                "`latest`, or a run folder written by `switchyard train`)", what, folder);
  std::string ckpt;
  if (fs::exists(p / "manifest.json") || fs::exists(p / "latest")) ckpt = resolve_checkpoint(folder);
  else if (fs::exists(p / "checkpoints" / "latest")) ckpt = resolve_checkpoint((p / "checkpoints").string());
  if (!ckpt.empty()) {
    CheckpointParams c = load_checkpoint_params(ckpt);
    return {c.config.model, std::move(c.params), std::move(c.selection_bias), ckpt};
  }
  if (fs::exists(p / "model" / "config.json") || fs::exists(p / "config.json")) {
    LoadedModel m = load_hf_model(resolve_model_dir(folder));
    return {m.config, std::move(m.params), {}, m.dir};
  }
  throw_usage("{} {}: no checkpoint there (no manifest.json, `latest`, checkpoints/latest) and no model (no "
              "config.json, model/config.json)", what, folder);
}

ModelSource load_model_option(const std::string& init_from, const std::string& checkpoint,
                              const std::string& command) {
  if (init_from.empty() == checkpoint.empty())
    throw_usage("{}: give exactly one of --init-from DIR (Hugging Face folder) or --checkpoint DIR (checkpoint "
                "or run folder)", command);
  if (!checkpoint.empty()) return load_model_source(checkpoint, command + " --checkpoint");
  LoadedModel m = load_hf_model(init_from);
  return {m.config, std::move(m.params), {}, m.dir};
}

}  // namespace switchyard::launch
