// launch/bench_suite.h: what the scenarios of `switchyard bench` share. A scenario measures one
// thing (a GEMM, a MoE layer's backward, a checkpoint save, a training step of a config) and adds
// one row: its time per run, its rate and the ceiling that rate is compared with, in the same unit,
// measured in the same run on the same machine:
//   GEMM peak          the best square GEMM (fp32, bf16) of this run: GEMM-like work (attention,
//                      MoE layers, training steps, eval) in FLOP/s
//   memory bandwidth   an in-place triad a += b*c moving the same bytes as the row
//                      (OpenMP, the suite's threads; on a GPU a device copy): memory-bound work
//                      (AdamW; data loading against the host's)
//   raw communicator   the communicator's own alltoallv / allreduce of the same bytes (MPI, no
//                      packing): the token exchange and the gradient reduction
//   write+fsync        a plain write of the same bytes into the same folder, then fsync:
//                      checkpoint save and export; a plain read of the same files: checkpoint load
// The scenario table (names, families, what each measures) is bench_suite.cpp's; the scenarios
// live by kind: bench_kernels.cpp (GEMM, attention, MoE layer, AdamW, data), bench_comm.cpp
// (exchange, all-reduce), bench_runs.cpp (training steps, eval, checkpoint, export).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "core/config.h"
#include "launch/bench.h"
#include "parallel/mpi_communicator.h"

namespace switchyard::launch {

struct BenchRow {
  std::string scenario, shape;
  double seconds = 0;        // per run
  double rate = 0;           // work per second, in `unit`
  std::string unit;          // "GFLOP/s" or "GB/s"
  double ceiling = 0;        // the same unit
  std::string ceiling_what;  // what the ceiling is
  std::string note;          // e.g. tokens/s, a scaled-down config
};

// The run's shared state: options, the backend, the world, the ceilings (each measured once, on
// first use), a scratch folder removed at the end and the rows.
class BenchSuite {
 public:
  BenchSuite(const BenchSuiteOptions& opts, const parallel::MpiContext& mpi);
  ~BenchSuite();
  BenchSuite(const BenchSuite&) = delete;
  BenchSuite& operator=(const BenchSuite&) = delete;

  const BenchSuiteOptions& opts;
  const parallel::MpiContext& mpi;
  bool quick() const { return opts.quick; }
  core::Backend& backend() { return *backend_; }
  parallel::MpiCommunicator& world() { return *world_; }
  // Seconds per run of `work` (backend calls) on the backend's clock (Backend::seconds_per_run):
  // the best of a few batches of runs (--quick: 3 of 2, else 2 of 3), so that one hiccup of a
  // shared machine does not make the row.
  double seconds_per_run(const std::function<void()>& work);

  // FLOP/s of the best square GEMM of this run (fp32 and bf16 rounding, launch/peak.h).
  double gemm_peak();
  double gemm_rate(bool bf16);  // FLOP/s of one of them
  // Bytes/s of the backend's memory for work moving `bytes_moved` bytes: on the host an in-place
  // triad moving the same bytes (a += b * c, OpenMP; caches make a small working set faster), on a
  // GPU a device-to-device copy of 1 GiB (2 bytes moved per byte copied).
  double memory_bandwidth(double bytes_moved);
  // Bytes/s of host memory (the triad of that size) whatever the backend: work the host does.
  double host_memory_bandwidth(double bytes_moved);
  // Bytes/s of writing `bytes` into a new file in `folder` and fsyncing it (the file is removed).
  double write_fsync_rate(const std::filesystem::path& folder, int64_t bytes);
  // Bytes/s of reading every regular file under `folder` once, plainly.
  double plain_read_rate(const std::filesystem::path& folder);

  std::filesystem::path scratch() const { return scratch_; }
  // A synthetic byte-level token file with a validation split (made once, in the scratch folder).
  const std::string& token_file();
  // <configs>/<name>.yaml, or "" when the configs folder has no such file.
  std::string config_path(const std::string& name) const;
  // Overrides that make a config of the configs folder run here for `scenario`: data from
  // token_file(), the suite's device and threads, the run folder and checkpoints in
  // <scratch>/<scenario>, no observers, the suite's GEMM peak for MFU (nothing measured at start).
  std::vector<std::string> run_overrides(const std::string& scenario);
  // <configs>/<config>.yaml with run_overrides(scenario), then `extra`.
  core::ExperimentConfig run_config(const std::string& config, const std::string& scenario,
                                    const std::vector<std::string>& extra = {});

  void add(BenchRow row);
  void skip(const std::string& scenario, const std::string& reason);

  struct Skipped {
    std::string scenario, reason;
  };
  const std::vector<BenchRow>& rows() const { return rows_; }
  const std::vector<Skipped>& skipped() const { return skipped_; }
  // Rows and skips in the order they came: (skipped?, index in rows() or skipped()).
  const std::vector<std::pair<bool, size_t>>& order() const { return order_; }

 private:
  std::unique_ptr<core::Backend> backend_;
  std::unique_ptr<parallel::MpiCommunicator> world_;
  std::filesystem::path scratch_;
  std::string token_file_;
  double gemm_fp32_ = 0, gemm_bf16_ = 0, memory_bandwidth_ = 0;
  std::map<int64_t, double> host_bandwidth_;  // stream triad by floats per array
  std::vector<BenchRow> rows_;
  std::vector<Skipped> skipped_;
  std::vector<std::pair<bool, size_t>> order_;
};

// Silences this process's stdout (file descriptor 1) while alive: the start-up lines of the
// commands a scenario runs in-process (training context, export).
class QuietStdout {
 public:
  QuietStdout();
  ~QuietStdout();
  QuietStdout(const QuietStdout&) = delete;
  QuietStdout& operator=(const QuietStdout&) = delete;

 private:
  int saved_ = -1;
};

// Bytes of every regular file under `path` (or of the file itself).
int64_t bytes_under(const std::filesystem::path& path);

// ---- the scenarios (each adds one row, or skips with the reason) ----
void bench_gemm_fp32(BenchSuite& s);
void bench_gemm_bf16(BenchSuite& s);
void bench_attention_fwd(BenchSuite& s);
void bench_attention_bwd(BenchSuite& s);
void bench_moe_fwd_balanced(BenchSuite& s);
void bench_moe_bwd_balanced(BenchSuite& s);
void bench_moe_fwd_skewed(BenchSuite& s);
void bench_moe_bwd_skewed(BenchSuite& s);
void bench_adamw(BenchSuite& s);
void bench_data_loading(BenchSuite& s);
void bench_exchange_flat(BenchSuite& s);
void bench_exchange_hierarchical(BenchSuite& s);
void bench_allreduce(BenchSuite& s);
void bench_train_config(BenchSuite& s, const std::string& config);  // train_<config>
void bench_eval(BenchSuite& s);
void bench_checkpoint_save(BenchSuite& s);
void bench_checkpoint_load(BenchSuite& s);
void bench_export(BenchSuite& s);

}  // namespace switchyard::launch
