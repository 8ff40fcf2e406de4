// launch/train_context.cpp: a training run's set-up and tear-down (train_context.h).
#include "launch/train_context.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/formats/hf_model.h"
#include "launch/checkpoint.h"
#include "launch/data_checkpoint.h"
#include "launch/evaluate.h"
#include "launch/model_io.h"
#include "launch/nonfinite.h"
#include "launch/outputs.h"
#include "launch/peak.h"
#include "parallel/device_communicator.h"
#include "parallel/watchdog.h"

namespace switchyard::launch {
namespace fs = std::filesystem;

namespace {

// The config with --set applied; with --init-from, the model comes from that folder's config.json.
core::ExperimentConfig load_config(const TrainOptions& opts) {
  core::ExperimentConfig cfg = core::load_experiment_config(opts.config_path, opts.overrides);
  if (opts.overwrite && opts.resume)
    throw_usage("train: give --resume (continue the run) or --overwrite (start it afresh), not both");
  if (!opts.init_from.empty() && opts.resume)
    throw_usage("train: give --init-from or --resume, not both (a resumed run takes its weights from the checkpoint)");
  if (!opts.init_from.empty()) {
    // The architecture comes from the checkpoint; balancing-loss coefficients from the config, so
    // an override of any other model key would be silently lost: refused.
    for (const std::string& ov : opts.overrides) {
      const std::string key = ov.substr(0, ov.find('='));
      if (key.rfind("model.", 0) == 0 && key != "model.moe.aux_loss_coef" && key != "model.moe.z_loss_coef")
        throw_usage("--set {}: with --init-from {} the model comes from its config.json; only "
                    "model.moe.aux_loss_coef and model.moe.z_loss_coef may be set", ov, opts.init_from);
    }
    const core::MoeConfig losses = cfg.model.moe;
    cfg.model = core::formats::read_hf_config(opts.init_from);
    cfg.model.moe.aux_loss_coef = losses.aux_loss_coef;
    cfg.model.moe.z_loss_coef = losses.z_loss_coef;
    core::validate(cfg, opts.config_path + " with --init-from " + opts.init_from);
  }
  return cfg;
}

int choose_threads(const core::TrainConfig& t, int world) {
  if (t.threads > 0) return static_cast<int>(t.threads);
  if (const char* env = std::getenv("OMP_NUM_THREADS"); env && std::atoi(env) > 0) return std::atoi(env);
  return std::max(1, omp_get_num_procs() / world);
}

std::string run_folder(const core::ExperimentConfig& cfg, const TrainOptions& opts) {
  if (!opts.run_dir.empty()) return opts.run_dir;
  if (!cfg.run.dir.empty()) return cfg.run.dir;
  return (fs::path("runs") / cfg.run.name).string();
}

// What a run folder holds that the trainer wrote (launch/outputs.h).
const std::vector<std::string> kRunEntries = {"config.yaml", "metrics.jsonl", "checkpoints", "model", "tensorboard"};

bool inside(const fs::path& p, const fs::path& dir) {
  const fs::path a = fs::weakly_canonical(p), b = fs::weakly_canonical(dir);
  return std::mismatch(b.begin(), b.end(), a.begin(), a.end()).first == b.end();
}

// Rank 0, before any work: a new run needs an empty run folder (and checkpoint.dir), or --overwrite
// (then the earlier run's files go, nobody else's); every output folder must be writable, so that
// a bad path fails now and not at the first save.
void prepare_outputs(const fs::path& dir, const fs::path& ckpt_root, const TrainOptions& opts) {
  const bool separate = !inside(ckpt_root, dir);
  if (!opts.resume) {
    check_output_folder(dir, kWriterRun, kRunEntries, opts.overwrite, "run folder",
                        "continue that run with --resume, or choose another --run-dir (or run.name)");
    if (separate)
      check_output_folder(ckpt_root, kWriterCheckpoints, kCheckpointEntries, opts.overwrite, "checkpoint.dir",
                          "continue that run with --resume, or choose another checkpoint.dir");
    if (folder_writer(dir) == kWriterRun) remove_owned(dir);
    if (separate && folder_writer(ckpt_root) == kWriterCheckpoints) remove_owned(ckpt_root);
  }
  require_writable_folder(dir, "run folder");
  mark_folder(dir, kWriterRun, kRunEntries);
  require_writable_folder(ckpt_root, "checkpoint.dir", /*keep=*/false);  // the first save makes it
}

// A usage error when the plan's per-rank memory is more than the rank has: the GPU's memory on a
// device backend, else this machine's physical memory over the `local_ranks` that share it.
void require_memory_fits(const PlanEstimate& e, const core::Backend& be, int local_ranks) {
  const double activations = static_cast<double>(e.activation_bytes[static_cast<int>(e.chosen)]),
               state = static_cast<double>(e.param_bytes + e.grad_bytes + e.optimizer_bytes + e.compute_weight_bytes);
  constexpr double GiB = 1 << 30;
  const std::string what = fmt::format("the run ({:.1f} GiB of weights, gradients and optimizer state and {:.1f} GiB "
                                       "of activations per rank; `switchyard plan` details it)", state / GiB, activations / GiB);
  const std::string fix = "lower train.micro_batch (raising train.grad_accum), set train.activation_checkpointing, or "
                          "spread the experts with parallel.expert_parallel";
  if (const auto gpu = static_cast<double>(be.memory_capacity()); gpu > 0) {
    if (state + activations > gpu)
      throw_usage("{} needs {:.1f} GiB, more than the {:.1f} GiB of its GPU ({}:{}); {}", what, (state + activations) / GiB,
                  gpu / GiB, be.name(), be.device(), fix);
    return;
  }
  require_host_memory(state + activations, what, fix, host_memory_bytes() / local_ranks);
}

// On resume: keeps the records of steps up to `step` (the ones the checkpoint includes).
void truncate_metrics(const fs::path& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::string kept, line;
  while (std::getline(in, line)) {
    const auto rec = nlohmann::json::parse(line, nullptr, false);
    if (!rec.is_discarded() && rec.is_object() && rec.value("step", int64_t{0}) <= step) kept += line + "\n";
  }
  in.close();
  std::ofstream(path, std::ios::trunc) << kept;
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  if (!f) throw_usage("cannot write {}: check that the run folder is writable", path.string());
}

}  // namespace

TrainContext::TrainContext(const TrainOptions& opts, const parallel::MpiContext& mpi_)
    : mpi(mpi_), cfg(load_config(opts)), rank0(mpi_.rank() == 0) {
  world = parallel::MpiCommunicator::world();
  // a rank that stops answering must not hang the others forever (parallel/watchdog.h)
  if (mpi.size() > 1) parallel::start_watchdog(cfg.parallel.timeout_s, mpi.rank());
  // the backend first: a device this process cannot use is refused before any file is written
  const auto local = world->split_shared_memory();  // the ranks of this machine
  threads = choose_threads(cfg.train, mpi.size());
  backend = core::make_backend(cfg.train.device, threads, local->rank());
  dir = run_folder(cfg, opts);
  ckpt_root = cfg.checkpoint.dir.empty() ? dir / "checkpoints" : fs::path(cfg.checkpoint.dir);
  if (rank0) {
    observers = make_observers({cfg, dir});  // a port in use is refused before any file is written
    prepare_outputs(dir, ckpt_root, opts);
  }

  // activation checkpointing (auto: resolved against the memory budget), and what a rank will hold,
  // refused before any allocation when this machine's memory cannot hold it
  estimate = plan(cfg);
  require_memory_fits(estimate, *backend, local->size());
  // a backend with a faster GEMM path for the compute dtype uses it only if every rank has it, so
  // that all ranks compute alike (the CPU's native bf16 matmul)
  if (const auto mine = backend->gemm_path(cfg.train.precision)) {
    int64_t fast = mine->fast ? 1 : 0;
    {
      const parallel::WaitScope wait("the agreement on the bf16 GEMM path");
      world->allreduce_min(&fast, 1);
    }
    if (mine->fast && !fast)
      backend->use_reference_gemm(cfg.train.precision, "native is not the faster path on every rank");
    const auto path = backend->gemm_path(cfg.train.precision);
    gemm_path = fmt::format(" ({} {} GEMMs: {})", path->name, cfg.train.precision, path->why);
  }
  model_opts.precision = {cfg.train.precision};
  model_opts.recompute = estimate.chosen;
  scaler = std::make_unique<optim::LossScaler>(cfg.train.loss_scaler, model_opts.precision.needs_loss_scaling());
  B = cfg.train.micro_batch;
  T = cfg.train.seq_len;
  accum = cfg.train.grad_accum;

  // ---- data ----
  data = std::make_unique<data::TrainData>(cfg, mpi.rank(), mpi.size(), B);
  // validation: data.valid, else the first training file's own validation split if it has one
  const std::string& first_train = cfg.data.train.items.at(0).path;
  if (!cfg.data.valid.empty()) valid_src = data::open_token_source(cfg.data.valid, "valid");
  else if (data::token_file_has_split(first_train, "valid")) valid_src = data::open_token_source(first_train, "valid");

  // ---- process groups and the token exchange (expert parallelism) ----
  // over NCCL when the backend is on a GPU (gradients and tokens travel in its memory)
  device_world = parallel::make_device_communicator(*world, *backend);
  groups = std::make_unique<parallel::ProcessGroups>(
      device_world ? *device_world : *world, parallel::ProcessGroupOptions{cfg.parallel.expert_parallel, cfg.parallel.ranks_per_node});
  if (cfg.parallel.expert_parallel > 1) {
    parallel::CostModel cost;
    cost.intra = {cfg.parallel.intra_latency_us * 1e-6, cfg.parallel.intra_bandwidth_gbs * 1e9};
    cost.inter = {cfg.parallel.inter_latency_us * 1e-6, cfg.parallel.inter_bandwidth_gbs * 1e9};
    exchange = parallel::make_token_exchange(cfg.parallel.token_exchange,
                                             groups->exchange_groups(), *backend, cost);
    ep = {exchange.get(), groups->expert().rank(), static_cast<int>(cfg.parallel.expert_parallel)};
  }

  // ---- model and optimizer ----
  live_before_model = backend->memory_stats().live_bytes;
  model = std::make_unique<moe::Model>(*backend, cfg.model, B, T, ep, model_opts);
  if (!opts.init_from.empty()) {
    // this rank's share: dense tensors and its own experts; other ranks' experts are skipped
    const core::ParamTable full = core::make_param_table(cfg.model);
    std::vector<float> host(static_cast<size_t>(model->num_params()));
    core::formats::load_hf_weights(opts.init_from, model->table(), host.data(), &full);
    model->set_params_from_host(host.data());
  } else {
    model->init_random(static_cast<uint64_t>(cfg.train.seed));
  }
  reducer = std::make_unique<GradientReducer>(model->table(), *groups, static_cast<int>(cfg.model.n_layers));
  adamw = std::make_unique<optim::AdamW>(*backend, model->table(), cfg.optim);
  expert_decay = std::make_unique<optim::ExpertDecay>(cfg.optim.expert_decay, model->num_moe_layers(),
                                                      cfg.model.moe.n_experts);
  // what the model and optimizer hold besides activations (parameters, gradients, compute
  // weights, moments): the measured activation memory is the peak minus these
  state_bytes = backend->memory_stats().live_bytes - live_before_model - model->activation_bytes();

  // ---- checkpoint to resume from ----
  if (opts.resume) {
    const std::string folder = resolve_checkpoint(opts.resume_from.empty() ? ckpt_root.string() : opts.resume_from);
    const LoadedCheckpoint ck = load_checkpoint(folder, *model, *adamw);
    if (ck.has_loss_scaler && scaler->enabled()) scaler->set_state(ck.loss_scaler);
    // dynamic expert decay: a checkpoint without loads (static run, older build) starts at 1/E
    if (expert_decay->dynamic() && !ck.expert_decay_loads.empty()) {
      expert_decay->set_loads(ck.expert_decay_loads);
      adamw->set_decay_multipliers(expert_decay->multipliers());
    }
    if (data->documents()) {  // the per-sample statistics and the draws resume exactly
      data::DataState ds = load_data_state(folder);
      if (ds.steps != ck.step)
        throw_usage("{}/{}: holds the data state of step {}, the checkpoint is of step {}; the folder is damaged",
                    folder, kDataStateFile, ds.steps, ck.step);
      data->restore(ds, folder + "/" + kDataStateFile);
    }
    if (ck.step > cfg.train.steps)
      throw_usage("{}: the checkpoint is at step {}, past train.steps = {}; raise train.steps to continue",
                  folder, ck.step, cfg.train.steps);
    start_step = last_saved = ck.step;
    if (rank0)
      fmt::print("switchyard train: resuming from {} at step {} (written by {} rank(s), expert parallel {})\n",
                 folder, ck.step, ck.world_size, ck.expert_parallel);
  }
  if (rank0) {
    write_text(dir / "config.yaml", core::to_yaml(cfg));
    if (opts.resume) truncate_metrics(dir / "metrics.jsonl", start_step);
  }
  {
    const parallel::WaitScope wait("the barrier after rank 0 prepared the run folder");
    world->barrier();
  }
  progress = std::make_unique<Progress>(cfg.train.steps, cfg.train.log_interval);
  // every rank at once, so that ranks sharing a machine's cores each measure their share
  peak_flops = cfg.observe.peak_tflops > 0 ? cfg.observe.peak_tflops * 1e12
                                           : measured_gemm_peak(*backend, model_opts.precision.stored_activation());
  if (!rank0) return;
  metrics = std::make_unique<MetricsWriter>((dir / "metrics.jsonl").string());
  for (auto& o : observers) o->start(start_step);
  const std::string per_rank = backend->device() >= 0
                                   ? fmt::format("one GPU each ({} between ranks)", device_world ? device_world->name() : "none")
                                   : fmt::format("{} thread(s)", threads);
  const auto& moe = cfg.model.moe;
  fmt::print("switchyard train: {} parameters ({} layers, {} experts {}), {} rank(s) x {}, expert "
             "parallel {}{}, global batch {} x {} tokens, run folder {}\n",
             core::make_param_table(cfg.model).total(), cfg.model.n_layers, moe.n_experts,
             moe.router.top_p > 0 ? fmt::format("top-p {:g} (k_max {})", moe.router.top_p, moe.router.k_max)
                                  : fmt::format("top-{}", moe.top_k),
             mpi.size(), per_rank, cfg.parallel.expert_parallel,
             exchange ? fmt::format(" ({} token exchange)", cfg.parallel.token_exchange) : "",
             B * accum * mpi.size(), T, dir.string());
  fmt::print("switchyard train: precision {}{}{}, activation checkpointing {} ({:.1f} MiB of activations per "
             "rank planned{})\n",
             cfg.train.precision, gemm_path,
             scaler->enabled() ? fmt::format(" (loss scale {:g})", scaler->scale()) : "",
             estimate.chosen, planned_activation_mb(),
             estimate.why.empty() ? "" : "; " + estimate.why);
  fmt::print("switchyard train: MFU against {:.4g} TFLOP/s per rank ({})\n", peak_flops / 1e12,
             cfg.observe.peak_tflops > 0 ? "observe.peak_tflops" : "a GEMM measured now; observe.peak_tflops sets it");
  std::fflush(stdout);
}

void TrainContext::save(int64_t step) {
  if (step == last_saved) return;
  require_finite_params(*model, step, *world);  // a diverged state is never saved
  const std::string where = save_checkpoint(ckpt_root.string(), step, cfg, *model, *adamw, *groups,
                                            scaler->enabled() ? &scaler->state() : nullptr, expert_decay.get(), data.get());
  last_saved = step;
  if (rank0) {
    progress->finish();
    fmt::print("switchyard train: checkpoint of step {} saved in {}\n", step, where);
    std::fflush(stdout);
  }
}

void TrainContext::evaluate(int64_t step) {
  if (!valid_src) return;
  const EvalResult e = launch::evaluate(*model, *valid_src, T, B, cfg.train.eval_windows, {}, world.get());
  if (rank0) {
    fmt::print("eval step {}: loss {:.4f} over {} tokens\n", step, e.loss, e.tokens);
    record_eval(eval_json(step, e));
  }
}

void TrainContext::finish() {
  progress->finish();
  save(cfg.train.steps);
  evaluate(cfg.train.steps);
  for (auto& o : observers) o->close();
  // every rank of the first expert group contributes its experts; rank 0 writes the whole model
  const std::vector<float> full = gather_full_params(*model, *groups, cfg.model);
  const std::string unsupported = core::formats::hf_routing_unsupported(cfg.model);
  if (rank0 && !unsupported.empty())  // never a weights folder that routes differently
    fmt::print(stderr, "switchyard train: done; no weights folder: the Hugging Face layouts cannot express {}; "
               "the checkpoints in {} hold the model\n", unsupported, ckpt_root.string());
  else if (rank0) {
    save_hf_model((dir / "model").string(), cfg.model, core::make_param_table(cfg.model), full.data());
    fmt::print("switchyard train: done; metrics in {}, weights in {}\n", (dir / "metrics.jsonl").string(),
               (dir / "model").string());
  }
}

double TrainContext::activation_mb() const {
  return static_cast<double>(backend->memory_stats().peak_bytes - live_before_model - state_bytes) / (1 << 20);
}

void TrainContext::record_step(const nlohmann::json& record) {
  metrics->write(record);
  for (auto& o : observers) o->step(record);
}

void TrainContext::record_eval(const nlohmann::json& record) {
  metrics->write(record);
  for (auto& o : observers) o->eval(record);
}

double TrainContext::planned_activation_mb() const {
  return static_cast<double>(estimate.activation_bytes[static_cast<int>(estimate.chosen)]) / (1 << 20);
}

}  // namespace switchyard::launch
