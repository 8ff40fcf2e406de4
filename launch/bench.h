// launch/bench.h: `switchyard bench gemm`: the CPU backend's measured fp32 GEMM rate, the peak
// that benchmark scripts compare a training step against; `switchyard bench ops`: the training
// step's heavy kernels on a backend (bench_ops.cpp), each against its ceiling.
#pragma once

#include <string>

#include "core/choices.h"

namespace switchyard::launch {

struct BenchOpsOptions {
  core::Device device = core::Device::cpu;
  int threads = 0;    // CPU threads
  bool quick = false;  // small sizes (a smoke run)
  std::string json;    // also write the rows here
};
// Prints one table row per op; returns the exit code.
int run_bench_ops(const BenchOpsOptions& opts);

// Prints one JSON line per shape and a final {"peak_gflops": ...}; returns the exit code.
int run_bench_gemm(int threads, int repeats);

}  // namespace switchyard::launch
