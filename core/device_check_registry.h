// core/device_check_registry.h: the "device memory" of the device-discipline checker
// (core/device_check_backend.h, parallel/device_check_communicator.h). Every region is its own
// mmap, kept inaccessible (PROT_NONE) except while a kernel or collective that was handed it runs,
// so host code that dereferences device memory dies with SIGSEGV, as it would on a GPU machine
// with an illegal address; and it answers "is this pointer device memory, with this extent?" for
// the checks of every argument.
//
// Layout of a region: its bytes end at the end of their pages (64-byte aligned start), followed by
// a guard page that is never accessible, so a kernel reading or writing past the allocation's
// 64-byte rounding faults too.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace switchyard::core {

class DeviceCheckRegistry {
 public:
  DeviceCheckRegistry();
  ~DeviceCheckRegistry();  // unmaps every region still live
  DeviceCheckRegistry(const DeviceCheckRegistry&) = delete;
  DeviceCheckRegistry& operator=(const DeviceCheckRegistry&) = delete;

  // A new region of `bytes` (zero-filled, 64-byte aligned; a distinct pointer for 0 bytes).
  void* allocate(size_t bytes);
  // Unmaps a region allocate() returned; an internal Error for any other pointer, and for a region
  // that a kernel or collective still uses (an asynchronous collective in flight).
  void deallocate(void* p);

  // [p, p + bytes) lies inside one live region (bytes 0: p inside it or one past its end).
  bool is_device(const void* p, size_t bytes) const;
  // [p, p + max(bytes, 1)) overlaps the mapping of any live region.
  bool overlaps_device(const void* p, size_t bytes) const;
  // Whether host code may read p now (its region open, or every region held open); false for a
  // pointer outside every region.
  bool accessible(const void* p) const;
  size_t live_regions() const;

  // Every region accessible while held (a counter: nested holds; the last release protects again).
  // For whatever touches device memory outside a checked call, e.g. a debugger's inspection.
  void hold_open();
  void release_open();

  // One checked call: each argument is checked (device() or host()) and device arguments are
  // remembered; open() makes their regions accessible until close() or destruction. Regions have
  // their own open counters, so calls nest and overlap (an asynchronous collective holds its
  // buffer's region open until its wait). A failed check throws an internal Error:
  //   device-check: <method>: <arg> (0x...) is not device memory (a host pointer passed to <callee>)
  class Access {
   public:
    // `callee`: what the call hands memory to, for messages ("a kernel", "a stream-ordered collective").
    Access(DeviceCheckRegistry& registry, const char* method, const char* callee);
    ~Access();
    Access(const Access&) = delete;
    Access& operator=(const Access&) = delete;
    // [p, p + bytes) must lie inside one live region; null p is not checked.
    Access& device(const char* arg, const void* p, size_t bytes);
    // [p, p + bytes) must not overlap any region; null p is not checked.
    Access& host(const char* arg, const void* p, size_t bytes);
    void open();
    void close();

   private:
    DeviceCheckRegistry& registry_;
    const char* method_;
    const char* callee_;
    std::vector<uintptr_t> bases_;  // regions of the device arguments
    bool open_ = false;
  };

 private:
  struct Region {
    size_t bytes = 0;       // as asked
    char* map = nullptr;    // the mapping: accessible pages, then the guard page
    size_t pages = 0;       // bytes of the accessible pages
    int open = 0;           // open Accesses
  };
  using Regions = std::map<uintptr_t, Region>;  // by the pointer allocate() returned
  // The region whose mapping contains p, or end() (mutex held).
  Regions::const_iterator find(uintptr_t p) const;
  // mprotect of a region's pages (mutex held): protect() reports failure, open_pages() throws.
  bool protect(const Region& r, bool accessible) const noexcept;
  void open_pages(const Region& r) const;
  void open_region(uintptr_t base);
  void close_region(uintptr_t base);

  mutable std::mutex mutex_;
  Regions regions_;
  int held_ = 0;  // hold_open() count
  size_t page_ = 4096;
};

}  // namespace switchyard::core
