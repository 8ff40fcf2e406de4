// launch/commands.h: the `eval` and `prepare` subcommands (train is in launch/train.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/choices.h"

namespace switchyard::launch {

struct EvalOptions {
  std::string init_from;    // Hugging Face folder
  std::string checkpoint;   // run folder written by `switchyard train`
  std::string data;         // token file
  std::string split;         // HDF5: train or valid (default valid); an llm.c shard has none
  int64_t seq_len = 0;      // 0: the model's max_seq_len
  int64_t batch = 8;
  int64_t max_windows = 0;  // 0: all
  core::Device device = core::Device::cpu;
  int threads = 0;           // CPU threads
  std::string dump_logits;  // optional: fp32 logits [windows*seq_len, vocab] to this file
  bool allow_nonfinite = false;  // evaluate weights holding inf/NaN instead of refusing them
};
// Prints {"loss": ..., "tokens": ...} as one JSON line; returns the exit code.
int run_eval(const EvalOptions& opts);

struct PrepareCommandOptions {
  std::vector<std::string> inputs;
  std::string output;
  double valid_fraction = 0.05;
  std::string format = "hdf5";  // or "megatron": PREFIX.bin + PREFIX.idx (+ PREFIX_valid.*)
  bool overwrite = false;       // replace an existing token file written by `prepare`
};
int run_prepare(const PrepareCommandOptions& opts);

}  // namespace switchyard::launch
