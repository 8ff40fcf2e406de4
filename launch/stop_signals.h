// launch/stop_signals.h: SIGTERM and SIGUSR1 (a scheduler's preemption notice: save and stop),
// taken by one thread of their own and never by a thread that computes.
//
// Why: oneDNN 2.x's JIT GEMM kernels (Debian 12 ships 2.7) point rsp into the heap while they run
// (oneDNN issue #4845, fixed in 3.11); a signal handled on a thread inside one writes its frame
// there and corrupts the heap. A SIGTERM mid-step crashed 2 to 3 runs in 10 instead of saving.
// So main() blocks them right after MPI starts (MPI's own threads and the processes it forks keep
// them; they run no GEMM) and before OpenMP and oneDNN start any thread: every thread main()
// starts inherits the mask. One thread takes them with sigwait(). Outside training it ends the
// process as the default action would; while training, it records the signal (so does a handler,
// for a signal the kernel hands to one of MPI's threads), and the step loop saves and stops after
// the current step (launch/train.cpp).
#pragma once

namespace switchyard::launch {

// Blocks SIGTERM and SIGUSR1 in the calling thread (and so in every thread it starts afterwards)
// and starts the thread that takes them. Idempotent; main() calls it after MPI_Init.
void take_stop_signals();
// While on, a stop signal is recorded (stop_signal()) instead of ending the process; turning it on
// clears the record.
void record_stop_signals(bool on);
// The stop signal recorded since record_stop_signals(true), 0 if none.
int stop_signal();

}  // namespace switchyard::launch
