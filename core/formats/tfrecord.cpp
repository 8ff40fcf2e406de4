// core/formats/tfrecord.cpp: see tfrecord.h.
#include "core/formats/tfrecord.h"

#include <bit>
#include <cstring>

#include "core/formats/crc32c.h"

namespace switchyard::core::formats {

uint32_t masked_crc32c(const void* data, size_t bytes) {
  const uint32_t crc = crc32c(data, bytes);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

std::string tfrecord_frame(std::string_view data) {
  static_assert(std::endian::native == std::endian::little, "a big-endian host needs a byte swap here");
  const uint64_t length = data.size();
  char len[8];
  std::memcpy(len, &length, 8);
  const uint32_t len_crc = masked_crc32c(len, 8), data_crc = masked_crc32c(data.data(), data.size());
  std::string out;
  out.reserve(data.size() + 16);
  out.append(len, 8);
  out.append(reinterpret_cast<const char*>(&len_crc), 4);
  out.append(data);
  out.append(reinterpret_cast<const char*>(&data_crc), 4);
  return out;
}

}  // namespace switchyard::core::formats
