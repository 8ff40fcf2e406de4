// core/formats/crc32c.h: CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of
// every dataset of a training checkpoint (launch/checkpoint.h). Our own table-driven loop: Debian 12
// packages no C/C++ CRC32C library (libcrc32c-dev is not in bookworm).
#pragma once

#include <cstddef>
#include <cstdint>

namespace switchyard::core::formats {

// `crc` is the value of the bytes so far (chaining: crc32c(b, n2, crc32c(a, n1)) == crc32c(a+b));
// crc32c("123456789", 9) == 0xE3069283.
uint32_t crc32c(const void* data, size_t bytes, uint32_t crc = 0);

}  // namespace switchyard::core::formats
