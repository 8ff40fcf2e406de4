// launch/train_step.cpp: one optimizer step (train_step.h).
#include "launch/train_step.h"

#include <fmt/format.h>

#include <array>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "launch/balance_metrics.h"
#include "launch/nonfinite.h"
#include "launch/peak.h"
#include "optim/lr_schedule.h"
#include "parallel/watchdog.h"

namespace switchyard::launch {
using Clock = std::chrono::steady_clock;

namespace {

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
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

// What the micro-batches of one rank add up to; summed over the ranks in one allreduce.
struct WindowSums {
  double loss = 0, ce = 0, aux = 0, z = 0, tokens = 0;
  double nonfinite_ranks = 0;  // this rank: 1 when a loss of its window was inf/NaN
  double ce_sum = 0;           // sum of loss weight * cross-entropy over the window's targets
};

void allreduce_sums(WindowSums& s, parallel::Communicator& world) {
  std::array<double, 7> packed = {s.loss, s.ce, s.aux, s.z, s.tokens, s.nonfinite_ranks, s.ce_sum};
  world.allreduce_sum(packed.data(), static_cast<int64_t>(packed.size()));
  s = {packed[0], packed[1], packed[2], packed[3], packed[4], packed[5], packed[6]};
}

moe::Batch batch_of(const data::MicroBatch& mb, double ce_norm) {
  return moe::Batch{mb.tokens.data(), mb.targets.data(), mb.weights.empty() ? nullptr : mb.weights.data(),
                    mb.doc_start.empty() ? nullptr : mb.doc_start.data(), ce_norm, mb.B, mb.T};
}

// Every rank's sample visits of the step, in rank order (the same list on every rank).
std::vector<data::SampleLoss> gather_visits(const std::vector<data::SampleLoss>& local, parallel::Communicator& world) {
  int64_t most = static_cast<int64_t>(local.size());
  world.allreduce_max(&most, 1);
  std::vector<int64_t> send(static_cast<size_t>(3 * most), -1), recv(send.size() * static_cast<size_t>(world.size()));
  for (size_t i = 0; i < local.size(); ++i) {
    send[3 * i] = local[i].sample;
    send[3 * i + 1] = std::bit_cast<int32_t>(local[i].loss);
    send[3 * i + 2] = std::bit_cast<int32_t>(local[i].weight);
  }
  world.allgather(send.data(), recv.data(), 3 * most);
  std::vector<data::SampleLoss> all;
  for (size_t i = 0; i + 2 < recv.size(); i += 3)
    if (recv[i] >= 0)
      all.push_back({recv[i], std::bit_cast<float>(static_cast<int32_t>(recv[i + 1])),
                     std::bit_cast<float>(static_cast<int32_t>(recv[i + 2]))});
  return all;
}

// Document mode, after the step: the statistics take every rank's visits; what the step's data was.
StepData record_data(TrainContext& ctx, const data::StepBatches& batches,
                     const std::vector<data::SampleLoss>& local, int64_t step) {
  const std::vector<data::SampleLoss> all = gather_visits(local, *ctx.world);
  StepData d;
  d.median_loss = ctx.data->record(all, step);
  d.samples = static_cast<int64_t>(all.size());
  double w = 0, w2 = 0;
  for (const auto& v : all) w += v.weight, w2 += static_cast<double>(v.weight) * v.weight;
  d.effective_samples = w2 > 0 ? w * w / w2 : 0;
  int64_t noisy = 0;  // every rank drew with the same weights, so it knows every sample's flag
  if (batches.weights && !batches.weights->noisy.empty())
    for (const auto& v : all) noisy += batches.weights->noisy[static_cast<size_t>(v.sample)];
  d.noisy_drawn = all.empty() ? 0 : static_cast<double>(noisy) / static_cast<double>(all.size());
  const double S = static_cast<double>(ctx.data->index()->size());
  if (const auto& dw = batches.weights) {
    d.noisy_share = static_cast<double>(dw->noisy_count) / S;
    d.hard_share = static_cast<double>(dw->hard_count) / S;
    d.weight_min = dw->min_weight;
    d.weight_max = dw->max_weight;
  }
  int64_t pad = 0, n = 0;
  for (const auto& mb : batches.micro) {
    for (int32_t t : mb.targets) pad += t < 0;
    n += static_cast<int64_t>(mb.targets.size());
  }
  d.padding = n ? static_cast<double>(pad) / static_cast<double>(n) : 0;
  return d;
}

// Expert parallelism: skewed routing grows the expert-row buffers past the plan's balanced
// estimate; says so once per rank when that crosses the activation budget.
void warn_activation_budget(TrainContext& ctx, int64_t step) {
  const auto budget = ctx.cfg.train.activation_memory_mb;
  if (budget <= 0 || ctx.warned_activation_budget) return;
  const double used_mb = ctx.activation_mb();
  if (used_mb <= static_cast<double>(budget)) return;
  ctx.warned_activation_budget = true;
  fmt::print(stderr,
             "switchyard train: warning: rank {} holds {:.1f} MiB of activations after step {}, over "
             "train.activation_memory_mb = {} (the plan assumes balanced routing; skewed routing grew the "
             "expert-row buffers)\n",
             ctx.mpi.rank(), used_mb, step, budget);
}

// model.moe.balance.aux_scope global, the routing pre-pass: the forward of every micro-batch of
// the step, each MoE layer's counts summed over them and over every rank, handed to the layers.
// The last micro-batch's forward stays in place (the step runs its backward first, without a new
// forward); the others' are discarded and redone by the step (routing is deterministic, so they
// route the same). Leaves no statistic of the step touched (each forward resets the layers'
// stats). Returns this rank's counts, which the step's forwards must reproduce.
std::vector<int64_t> set_global_aux_counts(TrainContext& ctx, const data::StepBatches& batches, double ce_norm) {
  moe::Model& model = *ctx.model;
  const int64_t E = ctx.cfg.model.moe.n_experts, n = model.num_moe_layers() * E;
  std::vector<int64_t> counts(static_cast<size_t>(n + 1), 0);  // [n]: the tokens routed
  model.set_global_aux_counts({}, 0, 0);
  for (int64_t micro = 0; micro < ctx.accum; ++micro) {
    model.forward(batch_of(batches.micro[static_cast<size_t>(micro)], ce_norm));
    const auto c = model.expert_counts();
    for (size_t l = 0; l < c.size(); ++l)
      for (int64_t e = 0; e < E; ++e) counts[l * E + e] += c[l][static_cast<size_t>(e)];
    counts[static_cast<size_t>(n)] += ctx.B * ctx.T;
  }
  std::vector<int64_t> local(counts.begin(), counts.begin() + n);
  ctx.world->allreduce_sum(counts.data(), n + 1);
  model.set_global_aux_counts(std::vector<int64_t>(counts.begin(), counts.begin() + n), counts[static_cast<size_t>(n)],
                              ctx.accum * ctx.mpi.size());
  return local;
}

}  // namespace

StepRecord train_step(TrainContext& ctx, int64_t step) {
  moe::Model& model = *ctx.model;
  core::Backend& backend = *ctx.backend;
  const core::ExperimentConfig& cfg = ctx.cfg;
  const int64_t B = ctx.B, T = ctx.T, accum = ctx.accum, E = cfg.model.moe.n_experts;
  const int rank = ctx.mpi.rank(), ranks = ctx.mpi.size();

  StepRecord r;
  r.step = step + 1;
  r.n_experts = E;
  r.expert_counts.assign(static_cast<size_t>(model.num_moe_layers() * E), 0);
  r.dropped.assign(static_cast<size_t>(model.num_moe_layers()), 0);
  r.routed_tokens = B * T * accum * ranks;
  parallel::set_watchdog_step(r.step);
  const auto t0 = Clock::now();
  if (step == ctx.start_step) backend.reset_peak_memory();
  model.zero_grads();
  WindowSums sums;  // over the window, then over the ranks
  bool local_loss_nonfinite = false;
  // the loss scale is constant over the accumulation window
  r.loss_scaling = ctx.scaler->enabled();
  r.loss_scale = ctx.scaler->scale();
  const bool inject = inject_overflow(rank, r.step);
  const data::StepBatches batches = ctx.data->take(step);
  r.data_wait_s = batches.wait_s;
  // document mode: the cross-entropy is normalised by the whole step's loss weight over every
  // rank (a mean weight of 1 per counted target), not per micro-batch; windows keep the mean of
  // the micro-batch means (every micro-batch counts B * T targets)
  double ce_norm = 0, step_weight = 0;
  if (ctx.data->documents()) {
    for (const auto& mb : batches.micro) step_weight += mb.weight_sum();
    ctx.world->allreduce_sum(&step_weight, 1);
    ce_norm = step_weight > 0 ? static_cast<double>(accum * ranks) / step_weight : 0;
  }
  std::vector<data::SampleLoss> visits;
  // aux_scope global: every micro-batch's aux term needs the whole step's counts (accum - 1 extra
  // forwards; the pre-pass's forward of the last micro-batch is reused and goes first)
  const bool global_aux = cfg.model.moe.balance.aux_scope == core::AuxScope::global &&
                          cfg.model.moe.aux_loss_coef > 0 && model.num_moe_layers() > 0;
  std::vector<int64_t> prepass_counts;
  if (global_aux) {
    const auto tp = Clock::now();
    prepass_counts = set_global_aux_counts(ctx, batches, ce_norm);
    r.forward_s += seconds_between(tp, Clock::now());
  }
  for (int64_t i = 0; i < accum; ++i) {
    const bool reuse = global_aux && i == 0;  // the pre-pass's forward of micro-batch accum - 1
    const int64_t micro = global_aux ? (i + accum - 1) % accum : i;
    const data::MicroBatch& mb = batches.micro[static_cast<size_t>(micro)];
    const auto tf = Clock::now();
    const auto f = reuse ? model.last_forward() : model.forward(batch_of(mb, ce_norm));
    if (ctx.data->documents()) {
      const auto v = data::sample_losses(mb, model.token_losses());
      visits.insert(visits.end(), v.begin(), v.end());
    }
    const auto tb = Clock::now();
    // the last micro-batch of the window starts each layer's gradient reduction as soon as
    // backward has finished that layer (non-blocking; completed before the optimizer step)
    const bool last = i + 1 == accum;
    const int last_layer = static_cast<int>(cfg.model.n_layers) - 1;
    model.backward(static_cast<float>(r.loss_scale / static_cast<double>(accum * ranks)),
                   last ? std::function<void(int)>([&](int layer) {
                     if (inject && layer == last_layer) {
                       const auto& ln = model.table().at(fmt::format("model.layers.{}.post_attention_layernorm.weight", layer));
                       const float inf = std::numeric_limits<float>::infinity();
                       backend.copy_from_host(model.grads() + ln.offset, &inf, sizeof(float));
                     }
                     ctx.reducer->start_bucket(model.grads(), layer);
                   })
                        : std::function<void(int)>());
    r.forward_s += seconds_between(tf, tb);
    r.backward_s += seconds_between(tb, Clock::now());
    if (!std::isfinite(f.loss)) local_loss_nonfinite = true;
    sums.loss += f.loss; sums.ce += f.ce; sums.aux += f.aux; sums.z += f.z;
    sums.tokens += static_cast<double>(f.tokens);
    sums.ce_sum += f.ce_sum;
    r.exchange += model.exchange_stats();
    r.expert_s += model.expert_seconds();
    const auto c = model.expert_counts();
    for (size_t l = 0; l < c.size(); ++l)
      for (int64_t e = 0; e < E; ++e) r.expert_counts[l * E + e] += c[l][static_cast<size_t>(e)];
    for (int64_t l = 0; l < model.num_moe_layers(); ++l) r.dropped[static_cast<size_t>(l)] += model.moe_stats(l).dropped;
  }
  if (global_aux) {
    model.set_global_aux_counts({}, 0, 0);
    if (prepass_counts != r.expert_counts)
      throw_internal("step {}: the routing pre-pass of aux_scope global routed differently from the step", r.step);
  }
  sums.nonfinite_ranks = local_loss_nonfinite ? 1.0 : 0.0;
  // gradients reduced once per optimizer step (data parallel: every parameter is replicated)
  const auto t_reduce = Clock::now();
  ctx.reducer->finish(model.grads());
  allreduce_sums(sums, *ctx.world);
  ctx.world->allreduce_sum(r.expert_counts.data(), static_cast<int64_t>(r.expert_counts.size()));
  ctx.world->allreduce_sum(r.dropped.data(), static_cast<int64_t>(r.dropped.size()));
  const auto t_opt = Clock::now();
  // the norm covers every gradient of every rank, so every rank takes the same decision
  const double scaled_norm = ctx.reducer->global_norm(backend, model.grads());
  const bool overflow = !std::isfinite(scaled_norm) || sums.nonfinite_ranks > 0;
  r.grad_norm = scaled_norm / r.loss_scale;
  r.lr = optim::lr_at(cfg.optim, step, cfg.train.steps);
  const auto outcome = ctx.scaler->update(overflow);
  if (outcome == optim::LossScaler::Outcome::stop) {
    const std::string where = locate_nonfinite(model, local_loss_nonfinite, *ctx.world);
    if (ctx.scaler->enabled())
      throw_usage("fp16 training stopped at step {}: {} step(s) in a row overflowed (inf/NaN) at the minimum "
                  "loss scale {:g}; {}. Lower optim.lr, use train.precision: bf16, or look at that layer's inputs",
                  r.step, cfg.train.loss_scaler.max_overflows_at_min, ctx.scaler->scale(), where);
    throw_usage("training diverged at step {}: non-finite {} in {}; {}. Lower optim.lr or raise optim.warmup_steps",
                r.step, sums.nonfinite_ranks > 0 ? "loss" : "gradients", cfg.train.precision, where);
  }
  r.skipped = outcome == optim::LossScaler::Outcome::skip;
  if (ctx.expert_decay->dynamic()) {  // once per step, from the whole step's counts (all ranks)
    if (!r.skipped) {
      ctx.expert_decay->update(r.expert_counts);
      ctx.adamw->set_decay_multipliers(ctx.expert_decay->multipliers());
    }
    r.expert_decay = ctx.expert_decay->multiplier_ranges();
  }
  if (!r.skipped) {  // the optimizer writes the compute weights of mixed precision in its pass
    const auto target = model.begin_update();
    ctx.adamw->step(target.master, model.grads(), r.lr,
                    optim::clip_coefficient(r.grad_norm, cfg.optim.grad_clip) / r.loss_scale, target.compute,
                    target.dtype);
    model.end_update();
    // the selection bias moves once per optimizer step, from the counts of the whole step (all
    // micro-batches, all ranks: every rank takes the same step)
    model.update_selection_bias(r.expert_counts);
  }
  const std::vector<float> bias = model.selection_bias();
  r.selection_bias = per_layer_range(bias, E);
  if (ctx.data->documents()) r.data = record_data(ctx, batches, visits, step);  // in the step's time
  const auto t_end = Clock::now();
  r.seconds = seconds_between(t0, t_end);
  r.reduce_s = seconds_between(t_reduce, t_opt);
  r.optimizer_s = seconds_between(t_opt, t_end);
  r.skipped_steps = ctx.scaler->state().skipped_steps;

  const double n_mb = static_cast<double>(accum * ranks);
  r.loss = sums.loss / n_mb;
  r.ce = sums.ce / n_mb;
  if (ctx.data->documents() && step_weight > 0) {  // the weighted mean over the step (what the gradient follows)
    r.loss += sums.ce_sum / step_weight - r.ce;
    r.ce = sums.ce_sum / step_weight;
  }

  r.aux = sums.aux / n_mb;
  r.z = sums.z / n_mb;
  r.tokens = sums.tokens;
  r.nonfinite_ranks = static_cast<int>(sums.nonfinite_ranks);

  warn_activation_budget(ctx, r.step);
  if (step == ctx.start_step)  // measured memory of the first step (activations: one micro-batch)
    r.memory = StepMemory{ctx.activation_mb(),
                          ctx.planned_activation_mb(), static_cast<double>(resident_peak_bytes()) / (1 << 20)};
  const core::MemoryStats mem = backend.memory_stats();
  r.memory_mb = static_cast<double>(mem.live_bytes) / (1 << 20);
  r.memory_peak_mb = static_cast<double>(mem.peak_bytes) / (1 << 20);
  r.mfu = model_flops_utilisation(r.tokens_per_s(), ctx.estimate.flops_per_token_train[static_cast<int>(core::Recompute::none)],
                                  ctx.peak_flops, ranks);
  r.time = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  return r;
}

}  // namespace switchyard::launch
