// launch/train.cpp: the training loop. The set-up and tear-down are train_context.h's, one
// optimizer step is train_step.h's, its metrics record metrics.h's; this file holds the step
// schedule and the stop signals.
#include "launch/train.h"

#include <fmt/format.h>


#include "launch/balance_metrics.h"
#include "launch/metrics.h"
#include "launch/stop_signals.h"
#include "launch/train_context.h"
#include "launch/train_step.h"
#include "parallel/watchdog.h"

namespace switchyard::launch {

namespace {

// Collective: a stop signal (SIGTERM / SIGUSR1, launch/stop_signals.h) on any rank stops every
// rank after the same step: it finishes the step, saves and exits 0 (0: none).
int agree_on_stop_signal(parallel::Communicator& world) {
  int64_t stop = stop_signal();
  const parallel::WaitScope wait("the end-of-step agreement on stop signals");
  world.allreduce_max(&stop, 1);
  return static_cast<int>(stop);
}

// Rank 0: the step's metrics record, the first step's exchange choices, a skipped step, the
// progress line.
void report_step(TrainContext& ctx, const StepRecord& r, double avg_step_s) {
  ctx.record_step(step_json(r));
  if (r.step == 1 && ctx.exchange) {  // the exchange each MoE layer runs (auto: its choice)
    const auto plans = ctx.model->exchange_plans();
    for (size_t l = 0; l < plans.size(); ++l) fmt::print("token exchange, MoE layer {}: {}\n", l, plans[l]);
  }
  if (r.skipped) {
    ctx.progress->finish();
    fmt::print("switchyard train: step {} skipped: gradient overflow at loss scale {:g}; scale now {:g}\n",
               r.step, r.loss_scale, ctx.scaler->scale());
  }
  std::string summary = balance_summary(layer_balances(r.expert_counts, r.n_experts, r.dropped, r.routed_tokens));
  if (r.data && (ctx.cfg.data.noise.enabled || ctx.cfg.data.mining.enabled))  // the data layer's flags
    summary += fmt::format("{}noisy {:.1f}% hard {:.1f}%", summary.empty() ? "" : " | ", 100 * r.data->noisy_share,
                           100 * r.data->hard_share);
  ctx.progress->update(r.step, r.loss, r.lr, r.tokens_per_s(), avg_step_s, summary);
}

}  // namespace

int run_train(const TrainOptions& opts, const parallel::MpiContext& mpi) {
  record_stop_signals(true);  // a preemption signal during start-up stops after the first step
  TrainContext ctx(opts, mpi);
  const int64_t steps = ctx.cfg.train.steps, eval_every = ctx.cfg.train.eval_interval,
                save_every = ctx.cfg.checkpoint.interval;
  double avg_step_s = 0;
  for (int64_t step = ctx.start_step; step < steps; ++step) {
    const StepRecord r = train_step(ctx, step);
    avg_step_s = step == ctx.start_step ? r.seconds : 0.9 * avg_step_s + 0.1 * r.seconds;
    if (ctx.rank0) report_step(ctx, r, avg_step_s);
    if (eval_every > 0 && r.step % eval_every == 0 && r.step < steps) {
      ctx.progress->finish();
      ctx.evaluate(r.step);
    }
    const int stop = agree_on_stop_signal(*ctx.world);
    if (stop || (save_every > 0 && r.step % save_every == 0) || r.step == steps) ctx.save(r.step);
    if (stop) {
      if (ctx.rank0)
        fmt::print("switchyard train: stopped by signal {} after step {}; resume with `switchyard train --resume` "
                   "(same config)\n", stop, r.step);
      return 0;
    }
  }
  ctx.finish();
  return 0;
}

}  // namespace switchyard::launch
