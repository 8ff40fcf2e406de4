// core/formats/hdf5.cpp: see hdf5.h.
#include "core/formats/hdf5.h"

#include <cerrno>
#include <cstring>
#include <fstream>

#include "core/error.h"

namespace switchyard::core::formats {

bool has_hdf5_signature(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  unsigned char buf[8] = {};
  in.read(reinterpret_cast<char*>(buf), 8);
  return in.gcount() == 8 && std::memcmp(buf, kHdf5Signature, 8) == 0;
}

void hdf5_prepare() {
  static const bool no_atexit = [] {
    H5dont_atexit();  // fails harmlessly once the library is initialised
    return true;
  }();
  (void)no_atexit;
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

bool hdf5_threadsafe() {
  hbool_t safe = false;
  return H5is_library_threadsafe(&safe) >= 0 && safe;
}

std::string disk_full_note() {
  return errno == ENOSPC ? "; no space left on the device: free space and run again (what was written before is intact)"
                         : "";
}

H5Handle h5_checked(hid_t id, H5Handle::Closer closer, const std::string& file, const std::string& what) {
  if (id < 0) throw_usage("{}: HDF5 error: cannot {}{}", file, what, disk_full_note());
  return H5Handle(id, closer);
}

void h5_check(herr_t r, const std::string& file, const std::string& what) {
  if (r < 0) throw_usage("{}: HDF5 error: cannot {}{}", file, what, disk_full_note());
}

}  // namespace switchyard::core::formats
