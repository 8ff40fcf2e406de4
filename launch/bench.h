// launch/bench.h: `switchyard bench gemm`: the CPU backend's measured fp32 GEMM rate, the peak
// that benchmark scripts compare a training step against; `switchyard bench ops`: the training
// step's heavy kernels on a backend (bench_ops.cpp), each against its ceiling; `switchyard bench`
// with no subcommand: the benchmark suite, named scenarios from a GEMM to a whole training step,
// each against a ceiling measured in the same run (launch/bench_suite.h).
#pragma once

#include <string>
#include <vector>

#include "core/choices.h"
#include "parallel/mpi_context.h"

namespace switchyard::launch {

struct BenchOpsOptions {
  core::Device device = core::Device::cpu;
  int threads = 0;    // CPU threads
  bool quick = false;  // small sizes (a smoke run)
  std::string json;    // also write the rows here
};
// Prints one table row per op; returns the exit code.
int run_bench_ops(const BenchOpsOptions& opts);

struct BenchSuiteOptions {
  core::Device device = core::Device::cpu;
  int threads = 0;                 // CPU threads (0: OMP_NUM_THREADS or all cores)
  bool quick = false;              // small sizes: the whole suite in well under a minute
  std::vector<std::string> only;   // scenario names or families (`exchange`); empty: all
  std::string json;                // also write the rows here (rank 0)
  std::string configs = "configs"; // the folder of YAML configs the train_* scenarios run
  std::string dir;                 // where the file scenarios write (default: a temporary folder)
  bool list = false;               // print the scenario names and what each measures, run nothing
};
// Collective when run under mpirun (the exchange and all-reduce scenarios); rank 0 prints one
// table. Returns the exit code; unknown --only names are a usage error listing the valid ones.
int run_bench_suite(const BenchSuiteOptions& opts, const parallel::MpiContext& mpi);

// Prints one JSON line per shape and a final {"peak_gflops": ...}; returns the exit code.
int run_bench_gemm(int threads, int repeats);

}  // namespace switchyard::launch
