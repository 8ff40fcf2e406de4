// launch/bench.h: `switchyard bench gemm`: the backend's measured fp32 GEMM rate, the peak that
// benchmark scripts compare a training step against.
#pragma once

namespace switchyard::launch {

// Prints one JSON line per shape and a final {"peak_gflops": ...}; returns the exit code.
int run_bench_gemm(int threads, int repeats);

}  // namespace switchyard::launch
