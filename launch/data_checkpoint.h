// launch/data_checkpoint.h: the data layer's part of a checkpoint (data.sample: document).
//
// `data.h5` in the checkpoint folder, written by world rank 0 before the manifest (so a folder
// with a manifest has it), read by every rank on resume and by `switchyard data-report`:
//   /              attributes: format = "switchyard-data-state", version = 1 (int64),
//                  steps (int64: steps recorded), samples (int64: S), world_size (int64)
//   /stats         uint16 [S, 5]: data::SampleStats::to_table() after `steps` steps
//   /lagged_cumulative  float64 [S]: the draw weights' cumulative sums of the table after
//                  steps - 1 (data::DrawWeights; absent when those draws were uniform)
//   /lagged_noisy  uint8 [S]: its noisy flags; /lagged_summary float64 [4]: its noisy and hard
//                  counts, smallest and largest draw weight
//   /drawn         int64 [world_size]: each rank's draws taken
//   /pool          int64 [world_size, P]: each rank's packing pool (draw order), -1 padded
// Each dataset carries a `crc32c` attribute (uint32, over its bytes). Errors reading it are usage
// errors naming the file and the dataset.
#pragma once

#include <string>

#include "data/train_data.h"
#include "parallel/communicator.h"

namespace switchyard::launch {

inline constexpr const char* kDataStateFile = "data.h5";

// Collective over `world`: gathers every rank's draw state; rank 0 writes `folder`/data.h5 and
// fsyncs it. Writes nothing in window mode.
void save_data_state(const std::string& folder, const data::TrainData& data, parallel::Communicator& world);

// `folder`/data.h5, every rank's part.
data::DataState load_data_state(const std::string& folder);

}  // namespace switchyard::launch
