// launch/train.cpp: the training loop.
#include "launch/train.h"

#include <fmt/format.h>
#include <mpi.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/backend.h"
#include "core/cpu/cpu_backend.h"
#include "core/config.h"
#include "core/error.h"
#include "core/formats/hf_model.h"
#include "data/sampler.h"
#include "data/token_source.h"
#include "launch/checkpoint.h"
#include "launch/evaluate.h"
#include "launch/metrics.h"
#include "launch/model_io.h"
#include "launch/nonfinite.h"
#include "launch/outputs.h"
#include "launch/plan.h"
#include "moe/model.h"
#include "optim/adamw.h"
#include "optim/loss_scaler.h"
#include "optim/lr_schedule.h"
#include "parallel/watchdog.h"
#include "parallel/collectives.h"
#include "launch/param_sharding.h"
#include "parallel/mpi_communicator.h"
#include "parallel/process_groups.h"
#include "parallel/token_exchange.h"

namespace switchyard::launch {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

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
const std::vector<std::string> kRunEntries = {"config.yaml", "metrics.jsonl", "checkpoints", "model"};

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

// Collective. A usage error when the plan's per-rank memory is more than this machine has per rank
// (its physical memory over the ranks of its MPI shared-memory node).
void require_memory_fits(const PlanEstimate& e) {
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int local = 1;
  MPI_Comm_size(node, &local);
  MPI_Comm_free(&node);
  const double activations = static_cast<double>(e.activation_bytes[static_cast<int>(e.chosen)]),
               state = static_cast<double>(e.param_bytes + e.grad_bytes + e.optimizer_bytes + e.compute_weight_bytes);
  constexpr double GiB = 1 << 30;
  require_host_memory(state + activations,
                      fmt::format("the run ({:.1f} GiB of weights, gradients and optimizer state and {:.1f} GiB of "
                                  "activations per rank; `switchyard plan` details it)", state / GiB, activations / GiB),
                      "lower train.micro_batch (raising train.grad_accum), set train.activation_checkpointing, or "
                      "spread the experts with parallel.expert_parallel",
                      host_memory_bytes() / local);
}

// Set by SIGTERM / SIGUSR1 (preemption): the loop finishes its step, saves and exits 0.
std::atomic<int> g_stop_signal{0};
static_assert(std::atomic<int>::is_always_lock_free);
extern "C" void on_stop_signal(int sig) { g_stop_signal.store(sig); }

void install_stop_handlers() {
  g_stop_signal.store(0);
  struct sigaction sa = {};
  sa.sa_handler = on_stop_signal;
  sa.sa_flags = SA_RESTART;  // interrupted system calls (MPI, HDF5, file I/O) resume
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
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

// Test hook SWITCHYARD_TEST_OVERFLOW="RANK:STEP[,RANK:STEP...]": that rank writes +inf into a
// gradient of its last layer during backward of that step (1-based), as an fp16 overflow would.
bool inject_overflow(int rank, int64_t step) {
  const char* env = std::getenv("SWITCHYARD_TEST_OVERFLOW");
  if (!env) return false;
  std::string spec(env);
  size_t at = 0;
  while (at < spec.size()) {
    size_t end = spec.find(',', at);
    if (end == std::string::npos) end = spec.size();
    const std::string item = spec.substr(at, end - at);
    const size_t colon = item.find(':');
    if (colon != std::string::npos && std::atoi(item.substr(0, colon).c_str()) == rank &&
        std::atoll(item.substr(colon + 1).c_str()) == step)
      return true;
    at = end + 1;
  }
  return false;
}

// Peak resident memory of the process (VmHWM), bytes; 0 where /proc is missing.
int64_t resident_peak_bytes() {
  std::ifstream f("/proc/self/status");
  std::string key;
  while (f >> key) {
    if (key == "VmHWM:") {
      int64_t kb = 0;
      f >> kb;
      return kb * 1024;
    }
    f.ignore(1 << 20, '\n');
  }
  return 0;
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  if (!f) throw_usage("cannot write {}: check that the run folder is writable", path.string());
}

}  // namespace

int run_train(const TrainOptions& opts, const parallel::MpiContext& mpi) {
  install_stop_handlers();  // a preemption signal during start-up stops after the first step
  core::ExperimentConfig cfg = core::load_experiment_config(opts.config_path, opts.overrides);
  const bool rank0 = mpi.rank() == 0;
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

  // a rank that stops answering must not hang the others forever (parallel/watchdog.h)
  if (mpi.size() > 1) parallel::start_watchdog(cfg.parallel.timeout_s, mpi.rank());
  const fs::path dir = run_folder(cfg, opts);
  const fs::path ckpt_root = cfg.checkpoint.dir.empty() ? dir / "checkpoints" : fs::path(cfg.checkpoint.dir);
  if (rank0) prepare_outputs(dir, ckpt_root, opts);

  // activation checkpointing (auto: resolved against the memory budget), and what a rank will hold,
  // refused before any allocation when this machine's memory cannot hold it
  const PlanEstimate estimate = plan(cfg);
  require_memory_fits(estimate);

  const int threads = choose_threads(cfg.train, mpi.size());
  auto backend = core::make_cpu_backend(threads);
  // bf16 GEMMs: native (oneDNN bf16 matmul) only if every rank measured it faster, so that all
  // ranks compute alike
  std::string gemm_path;  // for the start-up line
  if (auto* cpu = dynamic_cast<core::CpuBackend*>(backend.get()); cpu && cfg.train.precision == "bf16") {
    const int here = std::string(cpu->bf16_gemm_path()) == "native" ? 1 : 0;
    int native = here;
    const parallel::WaitScope wait("the agreement on the bf16 GEMM path");
    MPI_Allreduce(MPI_IN_PLACE, &native, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (native != here) cpu->set_native_bf16(false, "native is not the faster path on every rank");
    gemm_path = fmt::format(" ({} bf16 GEMMs: {})", cpu->bf16_gemm_path(), cpu->bf16_gemm_why());
  }
  moe::ModelOptions model_opts;
  model_opts.precision = core::PrecisionPolicy::parse(cfg.train.precision);
  model_opts.recompute = estimate.chosen;
  optim::LossScaler scaler(cfg.train.loss_scaler, model_opts.precision.needs_loss_scaling());
  const int64_t B = cfg.train.micro_batch, T = cfg.train.seq_len, accum = cfg.train.grad_accum;

  // ---- data ----
  auto train_src = data::open_token_source(cfg.data.train, "train");
  std::unique_ptr<data::TokenSource> valid_src;
  if (!cfg.data.valid.empty()) valid_src = data::open_token_source(cfg.data.valid, "valid");
  else if (data::token_file_has_split(cfg.data.train, "valid")) valid_src = data::open_token_source(cfg.data.train, "valid");
  data::WindowSampler sampler(*train_src, T, cfg.model.vocab_size, static_cast<uint64_t>(cfg.train.seed),
                              mpi.rank(), mpi.size(), accum);

  // ---- process groups and the token exchange (expert parallelism) ----
  auto world = parallel::MpiCommunicator::world();
  parallel::ProcessGroups groups(*world, {cfg.parallel.expert_parallel, cfg.parallel.ranks_per_node});
  std::unique_ptr<parallel::TokenExchange> exchange;
  moe::ExpertParallel ep;
  if (cfg.parallel.expert_parallel > 1) {
    parallel::CostModel cost;
    cost.intra = {cfg.parallel.intra_latency_us * 1e-6, cfg.parallel.intra_bandwidth_gbs * 1e9};
    cost.inter = {cfg.parallel.inter_latency_us * 1e-6, cfg.parallel.inter_bandwidth_gbs * 1e9};
    exchange = parallel::make_token_exchange(parallel::parse_exchange_algorithm(cfg.parallel.token_exchange),
                                             groups.exchange_groups(), cost);
    ep = {exchange.get(), groups.expert().rank(), static_cast<int>(cfg.parallel.expert_parallel)};
  }

  // ---- model and optimizer ----
  const int64_t live_before_model = backend->memory_stats().live_bytes;
  moe::Model model(*backend, cfg.model, B, T, ep, model_opts);
  if (!opts.init_from.empty()) {
    // this rank's share: dense tensors and its own experts; other ranks' experts are skipped
    const core::ParamTable full = core::make_param_table(cfg.model);
    std::vector<float> host(static_cast<size_t>(model.num_params()));
    core::formats::load_hf_weights(opts.init_from, model.table(), host.data(), &full);
    model.set_params_from_host(host.data());
  } else {
    model.init_random(static_cast<uint64_t>(cfg.train.seed));
  }
  GradientReducer reducer(model.table(), groups, static_cast<int>(cfg.model.n_layers));
  optim::AdamW adamw(*backend, model.table(), cfg.optim);
  // what the model and optimizer hold besides activations (parameters, gradients, compute
  // weights, moments): the measured activation memory is the peak minus these
  const int64_t state_bytes =
      backend->memory_stats().live_bytes - live_before_model - model.activation_bytes();

  // ---- checkpoint to resume from ----
  int64_t start_step = 0, last_saved = -1;
  if (opts.resume) {
    const std::string folder = resolve_checkpoint(opts.resume_from.empty() ? ckpt_root.string() : opts.resume_from);
    const LoadedCheckpoint ck = load_checkpoint(folder, model, adamw);
    if (ck.has_loss_scaler && scaler.enabled()) scaler.set_state(ck.loss_scaler);
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
    MPI_Barrier(MPI_COMM_WORLD);
  }
  Progress progress(cfg.train.steps, cfg.train.log_interval);
  auto save = [&](int64_t step) {
    if (step == last_saved) return;
    require_finite_params(model, step);  // a diverged state is never saved
    const std::string where = save_checkpoint(ckpt_root.string(), step, cfg, model, adamw, groups,
                                              scaler.enabled() ? &scaler.state() : nullptr);
    last_saved = step;
    if (rank0) {
      progress.finish();
      fmt::print("switchyard train: checkpoint of step {} saved in {}\n", step, where);
      std::fflush(stdout);
    }
  };
  std::unique_ptr<MetricsWriter> metrics;
  if (rank0) metrics = std::make_unique<MetricsWriter>((dir / "metrics.jsonl").string());
  if (rank0) {
    fmt::print("switchyard train: {} parameters ({} layers, {} experts top-{}), {} rank(s) x {} "
               "thread(s), expert parallel {}{}, global batch {} x {} tokens, run folder {}\n",
               core::make_param_table(cfg.model).total(), cfg.model.n_layers, cfg.model.moe.n_experts,
               cfg.model.moe.top_k, mpi.size(), threads, cfg.parallel.expert_parallel,
               exchange ? fmt::format(" ({} token exchange)", cfg.parallel.token_exchange) : "",
               B * accum * mpi.size(), T, dir.string());
    fmt::print("switchyard train: precision {}{}{}, activation checkpointing {} ({:.1f} MiB of activations per "
               "rank planned{})\n",
               cfg.train.precision, gemm_path,
               scaler.enabled() ? fmt::format(" (loss scale {:g})", scaler.scale()) : "",
               core::recompute_name(estimate.chosen),
               static_cast<double>(estimate.activation_bytes[static_cast<int>(estimate.chosen)]) / (1 << 20),
               estimate.why.empty() ? "" : "; " + estimate.why);
    std::fflush(stdout);
  }

  auto run_eval = [&](int64_t step) {
    if (!valid_src) return;
    EvalResult e = evaluate(model, *valid_src, T, B, cfg.train.eval_windows);
    if (rank0) {
      fmt::print("eval step {}: loss {:.4f} over {} tokens\n", step, e.loss, e.tokens);
      metrics->write({{"step", step}, {"eval_loss", e.loss}, {"eval_tokens", e.tokens}});
    }
  };

  std::vector<int32_t> tokens(static_cast<size_t>(B * T)), targets(tokens.size());
  const int64_t E = cfg.model.moe.n_experts;
  double avg_step_s = 0;
  bool warned_budget = false;
  for (int64_t step = start_step; step < cfg.train.steps; ++step) {
    parallel::set_watchdog_step(step + 1);
    const auto t0 = Clock::now();
    if (step == start_step) backend->reset_peak_memory();
    model.zero_grads();
    // loss, ce, aux, z, tokens summed over the window and the ranks; [5]: ranks whose loss was
    // non-finite
    std::vector<double> sums(6, 0.0);
    std::vector<int64_t> counts(static_cast<size_t>(model.num_moe_layers() * E), 0);
    double fwd_s = 0, bwd_s = 0, expert_s = 0;
    bool local_loss_nonfinite = false;
    parallel::ExchangeStats traffic;
    // the loss scale is constant over the accumulation window
    const double loss_scale = scaler.scale();
    const bool inject = inject_overflow(mpi.rank(), step + 1);
    for (int64_t micro = 0; micro < accum; ++micro) {
      sampler.next_batch(step, micro, B, tokens.data(), targets.data());
      const auto tf = Clock::now();
      const auto f = model.forward(tokens.data(), targets.data(), B, T);
      const auto tb = Clock::now();
      // the last micro-batch of the window starts each layer's gradient reduction as soon as
      // backward has finished that layer (non-blocking; completed before the optimizer step)
      const bool last = micro + 1 == accum;
      const int last_layer = static_cast<int>(cfg.model.n_layers) - 1;
      model.backward(static_cast<float>(loss_scale / static_cast<double>(accum * mpi.size())),
                     last ? std::function<void(int)>([&](int layer) {
                       if (inject && layer == last_layer) {
                         const auto& ln = model.table().at(fmt::format("model.layers.{}.post_attention_layernorm.weight", layer));
                         const float inf = std::numeric_limits<float>::infinity();
                         backend->copy_from_host(model.grads() + ln.offset, &inf, sizeof(float));
                       }
                       reducer.start_bucket(model.grads(), layer);
                     })
                          : std::function<void(int)>());
      fwd_s += std::chrono::duration<double>(tb - tf).count();
      bwd_s += std::chrono::duration<double>(Clock::now() - tb).count();
      if (!std::isfinite(f.loss)) local_loss_nonfinite = true;
      sums[0] += f.loss; sums[1] += f.ce; sums[2] += f.aux; sums[3] += f.z;
      sums[4] += static_cast<double>(f.tokens);
      traffic += model.exchange_stats();
      expert_s += model.expert_seconds();
      const auto c = model.expert_counts();
      for (size_t l = 0; l < c.size(); ++l)
        for (int64_t e = 0; e < E; ++e) counts[l * E + e] += c[l][static_cast<size_t>(e)];
    }
    sums[5] = local_loss_nonfinite ? 1.0 : 0.0;
    // gradients reduced once per optimizer step (data parallel: every parameter is replicated)
    const auto t_reduce = Clock::now();
    reducer.finish(model.grads());
    parallel::allreduce_sum(sums.data(), 6, MPI_COMM_WORLD);
    parallel::allreduce_sum(counts.data(), static_cast<int64_t>(counts.size()), MPI_COMM_WORLD);
    const auto t_opt = Clock::now();
    // the norm covers every gradient of every rank, so every rank takes the same decision
    const double scaled_norm = reducer.global_norm(*backend, model.grads());
    const bool overflow = !std::isfinite(scaled_norm) || sums[5] > 0;
    const double grad_norm = scaled_norm / loss_scale;
    const double lr = optim::lr_at(cfg.optim, step, cfg.train.steps);
    const auto outcome = scaler.update(overflow);
    if (outcome == optim::LossScaler::Outcome::stop) {
      const std::string where = locate_nonfinite(model, local_loss_nonfinite);
      if (scaler.enabled())
        throw_usage("fp16 training stopped at step {}: {} step(s) in a row overflowed (inf/NaN) at the minimum "
                    "loss scale {:g}; {}. Lower optim.lr, use train.precision: bf16, or look at that layer's inputs",
                    step + 1, cfg.train.loss_scaler.max_overflows_at_min, scaler.scale(), where);
      throw_usage("training diverged at step {}: non-finite {} in {}; {}. Lower optim.lr or raise optim.warmup_steps",
                  step + 1, sums[5] > 0 ? "loss" : "gradients", cfg.train.precision, where);
    }
    const bool skipped = outcome == optim::LossScaler::Outcome::skip;
    if (!skipped) {  // the optimizer writes the compute weights of mixed precision in its pass
      const auto target = model.begin_update();
      adamw.step(target.master, model.grads(), lr,
                 optim::clip_coefficient(grad_norm, cfg.optim.grad_clip) / loss_scale, target.compute,
                 target.dtype);
      model.end_update();
    }
    const auto t_end = Clock::now();
    const double seconds = std::chrono::duration<double>(t_end - t0).count();
    const double reduce_s = std::chrono::duration<double>(t_opt - t_reduce).count();
    const double opt_s = std::chrono::duration<double>(t_end - t_opt).count();
    avg_step_s = step == start_step ? seconds : 0.9 * avg_step_s + 0.1 * seconds;
    // expert parallelism: skewed routing grows the expert-row buffers past the plan's balanced
    // estimate; say so once per rank when that crosses the activation budget
    if (cfg.train.activation_memory_mb > 0 && !warned_budget) {
      const double used_mb =
          static_cast<double>(backend->memory_stats().peak_bytes - live_before_model - state_bytes) / (1 << 20);
      if (used_mb > static_cast<double>(cfg.train.activation_memory_mb)) {
        warned_budget = true;
        fmt::print(stderr,
                   "switchyard train: warning: rank {} holds {:.1f} MiB of activations after step {}, over "
                   "train.activation_memory_mb = {} (the plan assumes balanced routing; skewed routing grew the "
                   "expert-row buffers)\n",
                   mpi.rank(), used_mb, step + 1, cfg.train.activation_memory_mb);
      }
    }

    const double n_mb = static_cast<double>(accum * mpi.size());
    const double loss = sums[0] / n_mb;
    const double tokens_per_s = sums[4] / seconds;
    if (rank0) {
      nlohmann::json load = nlohmann::json::array();
      for (int64_t l = 0; l < model.num_moe_layers(); ++l) {
        int64_t total = 0;
        for (int64_t e = 0; e < E; ++e) total += counts[l * E + e];
        nlohmann::json row = nlohmann::json::array();
        for (int64_t e = 0; e < E; ++e)
          row.push_back(total ? static_cast<double>(counts[l * E + e]) / static_cast<double>(total) : 0.0);
        load.push_back(row);
      }
      nlohmann::json rec = {{"step", step + 1}, {"loss", loss}, {"ce", sums[1] / n_mb}, {"aux_loss", sums[2] / n_mb},
                      {"z_loss", sums[3] / n_mb}, {"lr", lr}, {"grad_norm", grad_norm},
                      {"tokens_per_s", tokens_per_s}, {"step_ms", seconds * 1e3}, {"forward_ms", fwd_s * 1e3},
                      {"backward_ms", bwd_s * 1e3}, {"reduce_ms", reduce_s * 1e3}, {"optimizer_ms", opt_s * 1e3},
                      {"expert_ms", expert_s * 1e3}, {"exchange_ms", traffic.seconds * 1e3},
                      {"exchange_bytes_intra", traffic.intra_node.bytes},
                      {"exchange_bytes_inter", traffic.inter_node.bytes},
                      {"exchange_messages_inter", traffic.inter_node.messages},
                      {"expert_load", load}};
      if (scaler.enabled()) {
        rec["loss_scale"] = loss_scale;  // the scale this step ran with
        rec["skipped"] = skipped;
        rec["skipped_steps"] = scaler.state().skipped_steps;
      }
      if (step == start_step) {  // measured memory of the first step (activations: one micro-batch)
        const core::MemoryStats mem = backend->memory_stats();
        rec["memory_peak_mb"] = static_cast<double>(mem.peak_bytes) / (1 << 20);
        rec["activation_mb"] =
            static_cast<double>(mem.peak_bytes - live_before_model - state_bytes) / (1 << 20);
        rec["activation_plan_mb"] =
            static_cast<double>(estimate.activation_bytes[static_cast<int>(estimate.chosen)]) / (1 << 20);
        rec["rss_peak_mb"] = static_cast<double>(resident_peak_bytes()) / (1 << 20);
      }
      metrics->write(rec);
      if (step == 0 && exchange) {  // the exchange each MoE layer runs (auto: its choice)
        const auto plans = model.exchange_plans();
        for (size_t l = 0; l < plans.size(); ++l) fmt::print("token exchange, MoE layer {}: {}\n", l, plans[l]);
      }
      if (skipped) {
        progress.finish();
        fmt::print("switchyard train: step {} skipped: gradient overflow at loss scale {:g}; scale now {:g}\n",
                   step + 1, loss_scale, scaler.scale());
      }
      progress.update(step + 1, loss, lr, tokens_per_s, avg_step_s);
    }
    if (cfg.train.eval_interval > 0 && (step + 1) % cfg.train.eval_interval == 0 && step + 1 < cfg.train.steps) {
      progress.finish();
      run_eval(step + 1);
    }
    // a stop signal on any rank stops every rank after the same step
    int stop = g_stop_signal.load();
    {
      const parallel::WaitScope wait("the end-of-step agreement on stop signals");
      MPI_Allreduce(MPI_IN_PLACE, &stop, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    }
    const int64_t every = cfg.checkpoint.interval;
    if (stop || (every > 0 && (step + 1) % every == 0) || step + 1 == cfg.train.steps) save(step + 1);
    if (stop) {
      if (rank0)
        fmt::print("switchyard train: stopped by signal {} after step {}; resume with `switchyard train --resume` "
                   "(same config)\n", stop, step + 1);
      return 0;
    }
  }
  progress.finish();
  save(cfg.train.steps);
  run_eval(cfg.train.steps);
  // every rank of the first expert group contributes its experts; rank 0 writes the whole model
  const std::vector<float> full = gather_full_params(model, groups, cfg.model);
  if (rank0) {
    save_hf_model((dir / "model").string(), cfg.model, core::make_param_table(cfg.model), full.data());
    fmt::print("switchyard train: done; metrics in {}, weights in {}\n", (dir / "metrics.jsonl").string(),
               (dir / "model").string());
  }
  return 0;
}

}  // namespace switchyard::launch
