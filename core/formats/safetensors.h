// core/formats/safetensors.h: reading (mmap, validated) and writing (durable: formats/durable.h) of
// safetensors files.
// Format: u64 little-endian header size N, N bytes of JSON, then the tensors' data back to back
// (see /work/shared/FORMATS.md). Every problem with a file is a usage Error naming the file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/choices.h"

namespace switchyard::core::formats {

// Bytes per element of a safetensors dtype ("F32", "BF16", ...); 0 for an unknown dtype.
size_t safetensors_dtype_size(const std::string& dtype);
// The safetensors name of a compute dtype: "F32", "BF16", "F16".
std::string safetensors_dtype(Dtype dtype);

// One tensor of an open file; `data` points into the mapping (valid while the file is open,
// not necessarily aligned: read it with memcpy or to_f32).
struct TensorView {
  std::string name;
  std::string dtype;           // "F32", "BF16", "F16", "F64", "I64", ...
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  std::string file;            // the file it lives in (for messages)

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// "[8, 256]"
std::string shape_str(const std::vector<int64_t>& shape);

// Converts an F32, BF16, F16 or F64 tensor to fp32 (out holds numel() floats); another dtype is a
// usage Error naming the tensor and its file.
void to_f32(const TensorView& t, float* out);
// The reverse: n fp32 values as the little-endian bytes of dtype F32, BF16 or F16 (rounded to
// nearest even, core/half.h); another dtype is an internal Error.
void from_f32(const float* src, size_t n, const std::string& dtype, std::vector<uint8_t>& out);

// A safetensors file, memory-mapped read-only and validated on open: header size sane (at most
// 100 MB, within the file), valid JSON, known dtypes, non-negative shapes, offsets contiguous from
// 0 without gaps or overlaps, end - begin == numel * dtype size, total size == file size, no
// duplicate names.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  SafetensorsFile(SafetensorsFile&& o) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& o) noexcept;

  const std::string& path() const { return path_; }
  // In the order of their data in the file.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* find(const std::string& name) const;  // nullptr if absent
  const TensorView& at(const std::string& name) const;    // usage Error naming the file if absent
  // The optional "__metadata__" map.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  void close();
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  std::vector<TensorView> tensors_;
  std::unordered_map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: `data` holds numel(shape) * dtype size bytes, little-endian, C order.
struct TensorWrite {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};

// Writes `tensors` (data in the given order) to `path` by the protocol of formats/durable.h. The
// JSON header is padded with spaces to a multiple of 8 bytes. Invalid input (unknown dtype,
// duplicate name) is an internal Error; an I/O failure is a usage Error naming the path.
void write_safetensors(const std::string& path, const std::vector<TensorWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace switchyard::core::formats
