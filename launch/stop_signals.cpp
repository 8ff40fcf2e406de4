#include "launch/stop_signals.h"

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <mutex>
#include <thread>

namespace switchyard::launch {

namespace {

std::atomic<int> g_recorded{0};
std::atomic<bool> g_recording{false};

sigset_t stop_set() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGUSR1);
  return set;
}

extern "C" void on_stop_signal(int sig) { g_recorded.store(sig); }

[[noreturn]] void take_loop() {
  const sigset_t set = stop_set();
  while (true) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    if (g_recording.load()) {
      g_recorded.store(sig);
      continue;
    }
    // not training: the default action, ending the process by that signal (no thread computes
    // on a frame it writes: this one takes it, alone)
    signal(sig, SIG_DFL);
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    pthread_sigmask(SIG_UNBLOCK, &one, nullptr);
    raise(sig);
  }
}

}  // namespace

void take_stop_signals() {
  static std::once_flag once;
  std::call_once(once, [] {
    const sigset_t set = stop_set();
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    std::thread(take_loop).detach();
  });
}

void record_stop_signals(bool on) {
  take_stop_signals();
  if (on) g_recorded.store(0);
  g_recording.store(on);
  struct sigaction sa = {};
  sa.sa_handler = on ? on_stop_signal : SIG_DFL;
  sa.sa_flags = SA_RESTART;  // interrupted system calls resume
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
}

int stop_signal() { return g_recorded.load(); }

}  // namespace switchyard::launch
