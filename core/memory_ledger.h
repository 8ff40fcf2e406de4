// core/memory_ledger.h: the accounting of a backend's allocations (live and peak bytes, which
// pointers it handed out), one implementation for every backend. Thread-safe.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>

#include "core/backend.h"
#include "core/error.h"

namespace switchyard::core {

class MemoryLedger {
 public:
  // After an allocation of `bytes` (as allocated, alignment included) at p.
  void add(void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    blocks_.emplace(p, bytes);
    live_ += static_cast<int64_t>(bytes);
    peak_ = std::max(peak_, live_);
  }
  // Before p is freed; an internal Error naming `backend` for a pointer add() never saw.
  void remove(void* p, const char* backend) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = blocks_.find(p);
    if (it == blocks_.end())
      throw_internal("{} backend: release of {} that alloc() did not return (or released twice)", backend, p);
    live_ -= static_cast<int64_t>(it->second);
    blocks_.erase(it);
  }
  MemoryStats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return MemoryStats{live_, peak_};
  }
  void reset_peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    peak_ = live_;
  }

 private:
  mutable std::mutex mutex_;
  std::unordered_map<void*, size_t> blocks_;
  int64_t live_ = 0, peak_ = 0;
};

}  // namespace switchyard::core
