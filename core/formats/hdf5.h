// core/formats/hdf5.h: the one wrapper of HDF5's C API that token files (data/hdf5_tokens.h) and
// checkpoints (launch/checkpoint.h) share: an owning handle, checks that turn a failed call into a
// usage Error naming the file and what failed (and a full disk, when that was the cause), and the
// library settings every entry point applies first.
#pragma once

#include <hdf5.h>

#include <string>
#include <utility>

namespace switchyard::core::formats {

// The 8 bytes every HDF5 file starts with (at offset 0 for the files Switchyard reads).
inline constexpr unsigned char kHdf5Signature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
// True when the file starts with kHdf5Signature (no file: false).
bool has_hdf5_signature(const std::string& path);

// Call before any other HDF5 call of an entry point: HDF5 prints its error stack to stderr by
// default (we report our own messages; the setting is per thread in thread-safe builds), and it
// registers an atexit cleanup that flushes and closes whatever is still open, which crashed inside
// HDF5 after a file whose close had failed on a full disk. Switchyard closes every file it writes
// itself, so that cleanup is turned off (effective only before the library's first use).
void hdf5_prepare();

// Whether the HDF5 library in use was built thread-safe (Debian's is): only then may a second
// thread (the data prefetch) call it while another does.
bool hdf5_threadsafe();

// Owns one hid_t and closes it with the matching H5*close function.
class H5Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  H5Handle() = default;
  H5Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  H5Handle(H5Handle&& o) noexcept : id_(std::exchange(o.id_, H5I_INVALID_HID)), closer_(o.closer_) {}
  H5Handle& operator=(H5Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, H5I_INVALID_HID);
      closer_ = o.closer_;
    }
    return *this;
  }
  H5Handle(const H5Handle&) = delete;
  H5Handle& operator=(const H5Handle&) = delete;
  ~H5Handle() { reset(); }

  void reset() {
    if (id_ >= 0 && closer_) closer_(id_);
    id_ = H5I_INVALID_HID;
  }
  // Closes and reports failure (for a file, where closing flushes data).
  bool close() {
    if (id_ < 0) return true;
    const herr_t r = closer_(id_);
    id_ = H5I_INVALID_HID;
    return r >= 0;
  }
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

// A returned hid_t as a handle; a negative id is a usage Error "FILE: HDF5 error: cannot WHAT".
H5Handle h5_checked(hid_t id, H5Handle::Closer closer, const std::string& file, const std::string& what);
// The same for a returned status.
void h5_check(herr_t r, const std::string& file, const std::string& what);
// After a failed write: "; no space left on the device ..." when that was the cause, else "".
std::string disk_full_note();

}  // namespace switchyard::core::formats
