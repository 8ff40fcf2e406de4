// launch/model_io.cpp: see model_io.h.
#include "launch/model_io.h"

#include <filesystem>

#include "core/error.h"
#include "core/formats/hf_model.h"
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

}  // namespace switchyard::launch
