// core/formats/tfrecord.h: TFRecord framing, the container of TensorBoard event files
// (launch/tensorboard.h). Each record is: the data's length as a little-endian uint64, the masked
// CRC-32C of those 8 bytes, the data, the masked CRC-32C of the data. The mask (from TensorFlow's
// lib/hash/crc32c.h) is ((crc >> 15) | (crc << 17)) + 0xa282ead8, so that a CRC of bytes that
// themselves hold CRCs stays well distributed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace switchyard::core::formats {

// The masked CRC-32C (core/formats/crc32c.h) of `bytes` bytes at `data`.
uint32_t masked_crc32c(const void* data, size_t bytes);

// `data` framed as one TFRecord.
std::string tfrecord_frame(std::string_view data);

}  // namespace switchyard::core::formats
