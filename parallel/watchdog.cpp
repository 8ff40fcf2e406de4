// parallel/watchdog.cpp: see watchdog.h.
#include "parallel/watchdog.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

namespace switchyard::parallel {
namespace {

struct State {
  std::atomic<int> depth{0};
  std::atomic<const char*> operation{nullptr};
  std::atomic<int64_t> since_ns{0};
  std::atomic<int64_t> step{0};
  std::atomic<double> timeout_s{0};
  std::atomic<int> rank{0};
  std::atomic<bool> started{false};
};

State& state() {
  static State s;  // process-wide, like MPI's own state
  return s;
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

[[noreturn]] void fire(State& s, double waited) {
  const int64_t step = s.step.load();
  std::fprintf(stderr,
               "switchyard: error on rank %d: waited %.0f s in %s (%s%lld) for the other ranks, more than "
               "parallel.timeout_s = %g: a rank stopped answering (a stopped process, a hung or dead node, a lost "
               "link); ending the job. The ranks that did not report this waited elsewhere or are the stuck ones\n",
               s.rank.load(), waited, s.operation.load(), step > 0 ? "step " : "start-up, step ",
               static_cast<long long>(step), s.timeout_s.load());
  std::fflush(stderr);
  ::_exit(kWatchdogExitCode);
}

void watch() {
  State& s = state();
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    const double timeout = s.timeout_s.load();
    if (timeout <= 0 || s.depth.load() == 0) continue;
    const double waited = static_cast<double>(now_ns() - s.since_ns.load()) * 1e-9;
    if (waited > timeout && s.depth.load() > 0) fire(s, waited);
  }
}

}  // namespace

WaitScope::WaitScope(const char* operation) {
  State& s = state();
  if (s.depth.load(std::memory_order_relaxed) == 0) {
    s.operation.store(operation);
    s.since_ns.store(now_ns());
  }
  s.depth.fetch_add(1);
}

WaitScope::~WaitScope() { state().depth.fetch_sub(1); }

void start_watchdog(double timeout_s, int rank) {
  State& s = state();
  s.timeout_s.store(timeout_s);
  s.rank.store(rank);
  if (timeout_s > 0 && !s.started.exchange(true)) std::thread(watch).detach();
}

void set_watchdog_step(int64_t step) { state().step.store(step); }

}  // namespace switchyard::parallel
