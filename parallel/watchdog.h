// parallel/watchdog.h: the collective watchdog. A rank that stops answering (a stopped process, a
// hung or dead node, a lost link) makes every other rank wait forever in its next collective, as
// NCCL's and PyTorch's watchdogs know. Every blocking MPI wait of Switchyard runs inside a
// WaitScope naming the operation; once the watchdog is started (parallel.timeout_s > 0, by the
// trainer), a thread checks the open wait every second, and one that passes the timeout ends this
// process at once with one line naming this rank, the operation, the step and how long it waited,
// and exit code 3. mpirun or srun then end every other rank of the job.
//
// The state is per process (MPI's is too): one open wait at a time, from the thread that calls MPI
// (nested scopes count as the outermost).
#pragma once

#include <cstdint>

namespace switchyard::parallel {

// Exit code of a process the watchdog ended.
inline constexpr int kWatchdogExitCode = 3;

class WaitScope {
 public:
  explicit WaitScope(const char* operation);  // a string literal: it is read by the watchdog thread
  ~WaitScope();
  WaitScope(const WaitScope&) = delete;
  WaitScope& operator=(const WaitScope&) = delete;
};

// Starts the watchdog thread (once per process; a later call only changes the timeout). `rank` is
// this process's world rank, for the message. timeout_s <= 0 stops watching.
void start_watchdog(double timeout_s, int rank);
// The training step the next waits belong to (1-based; 0: start-up), for the message.
void set_watchdog_step(int64_t step);

}  // namespace switchyard::parallel
