// core/formats/gguf.h: the GGUF v3 container of llama.cpp, written: header ("GGUF", version 3,
// tensor count, metadata count), the key-value metadata, one info per tensor (name, dims innermost
// first, ggml type, data offset), then each tensor's data at an offset aligned to kGgufAlignment.
// Everything little-endian. Which tensors, names, metadata and types a model gets is the caller's
// (launch/export_gguf.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace switchyard::core::formats {

// The data alignment the writer uses; write it as general.alignment.
inline constexpr uint64_t kGgufAlignment = 32;

// ggml_type of a tensor's data.
enum class GgufType : uint32_t { F32 = 0, F16 = 1, BF16 = 30 };

// Key-value metadata, written in the order added.
class GgufMetadata {
 public:
  void u32(const std::string& key, int64_t v);
  void i32(const std::string& key, int64_t v);
  void f32(const std::string& key, double v);
  void boolean(const std::string& key, bool v);
  void str(const std::string& key, const std::string& v);
  void strs(const std::string& key, const std::vector<std::string>& v);
  void i32s(const std::string& key, const std::vector<int32_t>& v);

  uint64_t count() const { return count_; }
  const std::vector<uint8_t>& bytes() const { return bytes_; }

 private:
  void key(const std::string& k, uint32_t type);
  std::vector<uint8_t> bytes_;
  uint64_t count_ = 0;
};

// One tensor: shape in PyTorch order (outermost first; GGUF's ne is its reverse), fp32 values in C
// order, stored as `type` (F16 and BF16 rounded to nearest even, core/half.h).
struct GgufTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> data;
  GgufType type = GgufType::F32;
};

// Writes `path` by the protocol of formats/durable.h; returns the file size.
uint64_t write_gguf(const std::string& path, const GgufMetadata& metadata, const std::vector<GgufTensor>& tensors);

// True when `path` is a regular file that starts with the GGUF magic.
bool is_gguf_file(const std::string& path);

}  // namespace switchyard::core::formats
