// launch/checkpoint.h: training checkpoints (HDF5) that never lose work and load on any layout.
//
// A checkpoint is a folder `step-000123/` under the checkpoint root (checkpoint.dir, default
// <run folder>/checkpoints):
//   rank-XXXXX.h5   one file per rank of the first expert group (world ranks 0..E-1): its routed
//                   experts (named by global id) and, for world rank 0 only, every dense tensor.
//                   Per tensor three fp32 datasets, `param/<HF name>`, `exp_avg/<HF name>`,
//                   `exp_avg_sq/<HF name>`, each with a `crc32c` attribute (uint32, over its bytes;
//                   core/formats/crc32c.h).
//   manifest.json   written last by rank 0: format, version, step, optimizer steps_taken, the
//                   loss scaler's state (scale and counters; fp16 runs only, optim/loss_scaler.h), the
//                   dynamic expert decay's loads (`expert_decay.loads`, [MoE layer][expert], doubles
//                   written with round-trip precision; dynamic runs only, optim/expert_decay.h), the
//                   layout it was written from (world_size, expert_parallel), the resolved config
//                   (YAML), for every tensor its file and shape, and with model.moe.balance.bias_rate
//                   > 0 `selection_bias`: every MoE layer's aux-loss-free bias, [MoE layers * E] in
//                   layer order (moe/router.h; every rank holds the same, so rank 0's is saved;
//                   JSON numbers give the fp32 values back exactly).
//   data.h5         data.sample: document only: the per-sample statistics and every rank's draw
//                   state (launch/data_checkpoint.h), written by rank 0 before the manifest.
// The root also holds `latest` (one line: the folder name of the newest complete checkpoint), and
// the ownership marker of launch/outputs.h listing kCheckpointEntries.
//
// Atomicity: files are written into `step-000123.tmp-<pid>/`, fsynced with the folder, renamed to
// `step-000123/`, then `latest` is replaced (temp file + rename) and older checkpoints beyond
// checkpoint.keep_last are pruned (the most recently saved are kept: save order, from the manifest's
// saved_at_ns, not step order). A SIGKILL at any moment leaves the previous checkpoint loadable.
// Test hook: SWITCHYARD_TEST_HOLD_SAVE=STEP:files holds every writing rank of the save of STEP
// after writing its file (inside the temporary folder); STEP:renamed holds rank 0 after the rename,
// before `latest` moves. Held until killed, so tests kill a job exactly at those points.
//
// Loading reads every tensor of this rank's table by name from the file the manifest names (any
// layout loads any checkpoint) and verifies shapes and CRCs; errors are usage errors naming the
// file and the tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/config.h"
#include "data/train_data.h"
#include "moe/model.h"
#include "optim/adamw.h"
#include "optim/expert_decay.h"
#include "optim/loss_scaler.h"
#include "parallel/process_groups.h"

namespace switchyard::launch {

// "step-000123"
std::string checkpoint_folder_name(int64_t step);

// What a checkpoint root holds that saves wrote: `latest` and step folders, with their temporaries.
inline const std::vector<std::string> kCheckpointEntries = {"latest*", "step-*"};

// Collective over the world. Writes the checkpoint of `step` under `root` as described above and
// returns its folder.
std::string save_checkpoint(const std::string& root, int64_t step, const core::ExperimentConfig& cfg,
                            const moe::Model& model, const optim::AdamW& adamw,
                            parallel::ProcessGroups& groups, const optim::LossScalerState* scaler = nullptr,
                            const optim::ExpertDecay* expert_decay = nullptr,
                            const data::TrainData* data = nullptr);

// A checkpoint folder (has manifest.json) as is, or a checkpoint root: the folder `latest` names.
std::string resolve_checkpoint(const std::string& path);

struct LoadedCheckpoint {
  std::string folder;
  int64_t step = 0;         // optimizer steps completed; training continues with step + 1
  int64_t steps_taken = 0;  // AdamW's counter
  int64_t world_size = 0, expert_parallel = 0;  // the layout it was written from
  bool has_loss_scaler = false;  // only runs with a loss scaler (fp16) save its state
  optim::LossScalerState loss_scaler;
  std::vector<double> expert_decay_loads;  // [MoE layer * n_experts + expert]; empty: none saved
};

// Every rank: restores its parameters, both AdamW moments and the step counter.
LoadedCheckpoint load_checkpoint(const std::string& folder, moe::Model& model, optim::AdamW& adamw);

// The full model's fp32 parameters (every expert, make_param_table(config.model) order) and the
// resolved config of a checkpoint folder, read in one process whatever layout wrote it (`export`).
struct CheckpointParams {
  std::string folder;
  int64_t step = 0;
  core::ExperimentConfig config;
  std::vector<float> params;
  std::vector<float> selection_bias;  // [MoE layers * E]; empty when the run had none
};
CheckpointParams load_checkpoint_params(const std::string& folder);

// The resolved config a checkpoint folder was written with (its manifest's), and its step.
std::pair<core::ExperimentConfig, int64_t> load_checkpoint_config(const std::string& folder);

}  // namespace switchyard::launch
