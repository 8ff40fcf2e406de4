// core/device_check_registry.cpp: the checker's regions (mmap + mprotect) and the argument checks.
#include "core/device_check_registry.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace switchyard::core {
namespace {

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

}  // namespace

DeviceCheckRegistry::DeviceCheckRegistry() {
  const long page = sysconf(_SC_PAGESIZE);
  if (page > 0) page_ = static_cast<size_t>(page);
}

DeviceCheckRegistry::~DeviceCheckRegistry() {
  for (auto& [base, r] : regions_) munmap(r.map, r.pages + page_);
}

void* DeviceCheckRegistry::allocate(size_t bytes) {
  const size_t rounded = round_up(bytes == 0 ? 1 : bytes, 64);
  const size_t pages = round_up(rounded, page_);
  // Anonymous mappings are zero-filled; the whole mapping starts inaccessible.
  void* map = mmap(nullptr, pages + page_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (map == MAP_FAILED)
    throw_internal("device-check: out of memory mapping {} bytes: {}", bytes, std::strerror(errno));
  Region r{bytes, static_cast<char*>(map), pages, 0};
  char* base = r.map + pages - rounded;
  std::lock_guard<std::mutex> lock(mutex_);
  if (held_ > 0) open_pages(r);
  regions_.emplace(reinterpret_cast<uintptr_t>(base), r);
  return base;
}

void DeviceCheckRegistry::deallocate(void* p) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = regions_.find(reinterpret_cast<uintptr_t>(p));
  if (it == regions_.end())
    throw_internal("device-check: release of {} that alloc() did not return (or released twice)", p);
  if (it->second.open > 0)
    throw_internal("device-check: release of {} ({} bytes) while a kernel or collective uses it (an "
                   "asynchronous collective not waited for?)", p, it->second.bytes);
  munmap(it->second.map, it->second.pages + page_);
  regions_.erase(it);
}

DeviceCheckRegistry::Regions::const_iterator DeviceCheckRegistry::find(uintptr_t p) const {
  auto it = regions_.upper_bound(p);
  if (it != regions_.end() && p >= reinterpret_cast<uintptr_t>(it->second.map)) return it;
  if (it == regions_.begin()) return regions_.end();
  --it;
  const auto end = reinterpret_cast<uintptr_t>(it->second.map) + it->second.pages + page_;
  return p < end ? it : regions_.end();
}

bool DeviceCheckRegistry::is_device(const void* p, size_t bytes) const {
  const auto a = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = find(a);
  return it != regions_.end() && a >= it->first && a - it->first <= it->second.bytes &&
         bytes <= it->second.bytes - (a - it->first);
}

bool DeviceCheckRegistry::overlaps_device(const void* p, size_t bytes) const {
  const auto a = reinterpret_cast<uintptr_t>(p), e = a + (bytes == 0 ? 1 : bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = regions_.upper_bound(a);
  if (it != regions_.begin()) --it;
  // Mappings are disjoint and ordered like their bases: the first that can overlap is the last
  // one starting at or before a.
  for (; it != regions_.end() && reinterpret_cast<uintptr_t>(it->second.map) < e; ++it)
    if (reinterpret_cast<uintptr_t>(it->second.map) + it->second.pages + page_ > a) return true;
  return false;
}

bool DeviceCheckRegistry::accessible(const void* p) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = find(reinterpret_cast<uintptr_t>(p));
  return it != regions_.end() && (held_ > 0 || it->second.open > 0);
}

size_t DeviceCheckRegistry::live_regions() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return regions_.size();
}

bool DeviceCheckRegistry::protect(const Region& r, bool accessible) const noexcept {
  return mprotect(r.map, r.pages, accessible ? PROT_READ | PROT_WRITE : PROT_NONE) == 0;
}

void DeviceCheckRegistry::open_pages(const Region& r) const {
  if (!protect(r, true))
    throw_internal("device-check: mprotect of {} bytes at {} failed: {}", r.pages,
                   static_cast<void*>(r.map), std::strerror(errno));
}

void DeviceCheckRegistry::hold_open() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (held_ == 0)
    for (auto& [base, r] : regions_)
      if (r.open == 0) open_pages(r);
  ++held_;
}

void DeviceCheckRegistry::release_open() {
  std::lock_guard<std::mutex> lock(mutex_);
  SY_CHECK(held_ > 0, "device-check: release_open() without hold_open()");
  if (--held_ > 0) return;
  for (auto& [base, r] : regions_)
    if (r.open == 0) protect(r, false);  // a failure leaves the region open: checks less, breaks nothing
}

void DeviceCheckRegistry::open_region(uintptr_t base) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = regions_.find(base);
  SY_CHECK(it != regions_.end(), "device-check: region {} vanished", reinterpret_cast<void*>(base));
  if (it->second.open == 0 && held_ == 0) open_pages(it->second);
  ++it->second.open;
}

void DeviceCheckRegistry::close_region(uintptr_t base) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = regions_.find(base);
  if (it == regions_.end()) return;  // deallocate() refuses open regions: unreachable
  if (--it->second.open == 0 && held_ == 0) protect(it->second, false);
}

// ---------------------------------------------------------------- Access

DeviceCheckRegistry::Access::Access(DeviceCheckRegistry& registry, const char* method, const char* callee)
    : registry_(registry), method_(method), callee_(callee) {}

DeviceCheckRegistry::Access::~Access() { close(); }

DeviceCheckRegistry::Access& DeviceCheckRegistry::Access::device(const char* arg, const void* p, size_t bytes) {
  if (!p) return *this;
  const auto a = reinterpret_cast<uintptr_t>(p);
  uintptr_t base = 0;
  size_t size = 0;
  {
    std::lock_guard<std::mutex> lock(registry_.mutex_);
    auto it = registry_.find(a);
    if (it == registry_.regions_.end() || a < it->first || a - it->first > it->second.bytes)
      throw_internal("device-check: {}: {} ({}) is not device memory (a host pointer passed to {})",
                     method_, arg, p, callee_);
    base = it->first;
    size = it->second.bytes;
  }
  if (bytes > size - (a - base))
    throw_internal("device-check: {}: {} ({}, {} bytes) runs past the end of its device allocation ({}, {} bytes)",
                   method_, arg, p, bytes, reinterpret_cast<void*>(base), size);
  bases_.push_back(base);
  return *this;
}

DeviceCheckRegistry::Access& DeviceCheckRegistry::Access::host(const char* arg, const void* p, size_t bytes) {
  if (p && registry_.overlaps_device(p, bytes))
    throw_internal("device-check: {}: {} ({}, {} bytes) overlaps device memory (a device pointer where "
                   "host memory belongs)", method_, arg, p, bytes);
  return *this;
}

void DeviceCheckRegistry::Access::open() {
  if (open_) return;
  size_t opened = 0;
  try {
    for (; opened < bases_.size(); ++opened) registry_.open_region(bases_[opened]);
  } catch (...) {
    for (size_t i = 0; i < opened; ++i) registry_.close_region(bases_[i]);
    throw;
  }
  open_ = true;
}

void DeviceCheckRegistry::Access::close() {
  if (!open_) return;
  open_ = false;
  for (uintptr_t base : bases_) registry_.close_region(base);
}

}  // namespace switchyard::core
