// launch/train_context.h: what a training run sets up before its first step and does after its
// last. Set-up: the config (and --init-from), the watchdog, the run folder and checkpoint.dir, the
// plan and its memory check, the backend (and the ranks' agreement on bf16 GEMMs), the data and
// the sampler, the process groups and the token exchange, the model, gradient reducer, optimizer
// and loss scaler, the checkpoint to resume from, the start-up lines. Tear-down: the last
// checkpoint, the last evaluation and the Hugging Face model folder.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/config.h"
#include "data/train_data.h"
#include "data/token_source.h"
#include "launch/metrics.h"
#include "launch/observers.h"
#include "launch/param_sharding.h"
#include "launch/plan.h"
#include "launch/train.h"
#include "moe/model.h"
#include "optim/adamw.h"
#include "optim/expert_decay.h"
#include "optim/loss_scaler.h"
#include "parallel/mpi_communicator.h"
#include "parallel/process_groups.h"
#include "parallel/token_exchange.h"

namespace switchyard::launch {

class TrainContext {
 public:
  // Collective. Throws switchyard::Error on bad input (usage errors before any allocation).
  TrainContext(const TrainOptions& opts, const parallel::MpiContext& mpi);
  TrainContext(const TrainContext&) = delete;
  TrainContext& operator=(const TrainContext&) = delete;

  // Collective. A checkpoint of `step` steps, unless the last one saved is of that step.
  void save(int64_t step);
  // Collective. The validation loss (when there is a validation split); rank 0 prints and records it.
  void evaluate(int64_t step);
  // Collective, after the last step: the last checkpoint and evaluation, then rank 0 writes the
  // whole model to <run folder>/model.
  void finish();
  // Rank 0: a metrics.jsonl record (step_json / eval_json), written, then handed to the observers.
  void record_step(const nlohmann::json& record);
  void record_eval(const nlohmann::json& record);
  // Activation memory measured since the last reset of the peak: the backend's peak minus what
  // the model and optimizer hold (MiB).
  double activation_mb() const;
  // What the plan estimated for the chosen activation checkpointing (MiB).
  double planned_activation_mb() const;

  const parallel::MpiContext& mpi;
  core::ExperimentConfig cfg;
  bool rank0 = false;
  std::filesystem::path dir;        // the run folder
  std::filesystem::path ckpt_root;  // checkpoint.dir, or <run folder>/checkpoints
  PlanEstimate estimate;            // activation checkpointing resolved, memory per rank
  int threads = 1;
  std::unique_ptr<core::Backend> backend;
  std::string gemm_path;  // bf16: " (native bf16 GEMMs: why)", for the start-up line
  moe::ModelOptions model_opts;
  std::unique_ptr<optim::LossScaler> scaler;
  int64_t B = 0, T = 0, accum = 0;  // micro-batch, sequence length, micro-batches per step

  std::unique_ptr<data::TrainData> data;              // data.train: sources, sampling, statistics, prefetch
  std::unique_ptr<data::TokenSource> valid_src;        // null without a validation split

  std::unique_ptr<parallel::MpiCommunicator> world;  // host values: metrics, agreements, stop signals
  std::unique_ptr<parallel::Communicator> device_world;  // the backend's memory (NCCL); null: world
  std::unique_ptr<parallel::ProcessGroups> groups;  // split from device_world, else world
  std::unique_ptr<parallel::TokenExchange> exchange;  // expert parallelism only
  moe::ExpertParallel ep;

  int64_t live_before_model = 0;  // backend bytes before the model
  std::unique_ptr<moe::Model> model;
  std::unique_ptr<GradientReducer> reducer;
  std::unique_ptr<optim::AdamW> adamw;
  std::unique_ptr<optim::ExpertDecay> expert_decay;  // loads and multipliers (dynamic mode updates them)
  int64_t state_bytes = 0;  // parameters, gradients, compute weights, moments

  int64_t start_step = 0;   // the checkpoint's step on resume
  int64_t last_saved = -1;
  bool warned_activation_budget = false;
  std::unique_ptr<MetricsWriter> metrics;  // rank 0
  std::vector<std::unique_ptr<RunObserver>> observers;  // rank 0: observe.* (launch/observers.h)
  double peak_flops = 0;  // one device's GEMM peak for MFU (launch/peak.h), FLOP/s
  std::unique_ptr<Progress> progress;
};

}  // namespace switchyard::launch
