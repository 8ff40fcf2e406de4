// parallel/exchange_memory.h: the token exchange's memory in the backend (not a public header).
//   Staging     a grow-only buffer in the backend's memory, owned by an exchange and reused by
//               every call (the payload rows it packs, sends, receives and sums)
//   PlanArrays  a plan's index arrays in the backend's memory: built on the host, packed into one
//               block and uploaded with ONE alloc and ONE copy_from_host when the plan is made,
//               released with the plan
// Both go through core::Backend only (alloc, copy_from_host, release), so they are host memory on
// the CPU backend and device memory on the CUDA backend; host code never reads them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <span>
#include <vector>

#include "core/backend.h"

namespace switchyard::parallel::detail {

class Staging {
 public:
  explicit Staging(core::Backend& be) : be_(be) {}
  ~Staging() { be_.release(data_); }
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;

  // At least `bytes` bytes (contents undefined: not kept when it grows; null while nothing was
  // asked). Grows by at least half its size, so that routing that varies a little between
  // micro-batches does not reallocate each time (on CUDA a release waits for the device).
  std::byte* get(int64_t bytes);

 private:
  core::Backend& be_;
  std::byte* data_ = nullptr;
  int64_t size_ = 0;
};

class PlanArrays {
 public:
  PlanArrays() = default;
  ~PlanArrays();
  PlanArrays(const PlanArrays&) = delete;
  PlanArrays& operator=(const PlanArrays&) = delete;

  // Copies `host` into the pack (64-byte aligned); upload() points `where` at its copy in the
  // backend's memory. `where` must stay at its address until then (a member of the plan).
  template <class T>
  void add(std::span<const T> host, const T*& where) {
    const size_t bytes = host.size_bytes(), offset = (pack_.size() + 63) / 64 * 64;
    pack_.resize(offset + bytes);
    if (bytes > 0) std::memcpy(pack_.data() + offset, host.data(), bytes);
    fixups_.push_back([&where, offset](const std::byte* base) { where = reinterpret_cast<const T*>(base + offset); });
  }
  template <class T>
  void add(const std::vector<T>& host, const T*& where) {
    add(std::span<const T>(host), where);
  }
  // One alloc and one copy of the whole pack into `be`'s memory; the host pack is freed. Once.
  void upload(core::Backend& be);

 private:
  std::vector<std::byte> pack_;
  std::vector<std::function<void(const std::byte*)>> fixups_;
  core::Backend* be_ = nullptr;
  void* block_ = nullptr;
};

}  // namespace switchyard::parallel::detail
