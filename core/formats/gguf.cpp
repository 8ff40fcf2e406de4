// core/formats/gguf.cpp: see gguf.h.
#include "core/formats/gguf.h"

#include <bit>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/formats/durable.h"
#include "core/formats/safetensors.h"

namespace switchyard::core::formats {

static_assert(std::endian::native == std::endian::little, "GGUF is written little-endian");

namespace {

enum : uint32_t { kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7, kString = 8, kArray = 9 };  // gguf_type
constexpr uint32_t kMagic = 0x46554747u;  // "GGUF" little-endian
constexpr uint32_t kVersion = 3;

template <class T> void put(std::vector<uint8_t>& b, T v) {
  const size_t at = b.size();
  b.resize(at + sizeof(T));
  std::memcpy(b.data() + at, &v, sizeof(T));
}

void put_str(std::vector<uint8_t>& b, const std::string& s) {
  put<uint64_t>(b, s.size());
  b.insert(b.end(), s.begin(), s.end());
}

uint64_t aligned(uint64_t n) { return (n + kGgufAlignment - 1) / kGgufAlignment * kGgufAlignment; }

size_t type_size(GgufType t) { return t == GgufType::F32 ? 4 : 2; }

// A tensor's values as stored (the same bytes as a safetensors tensor of that dtype).
void encode(const GgufTensor& t, std::vector<uint8_t>& out) {
  const char* dtype = t.type == GgufType::F32 ? "F32" : t.type == GgufType::F16 ? "F16" : "BF16";
  from_f32(t.data.data(), t.data.size(), dtype, out);
}

}  // namespace

void GgufMetadata::key(const std::string& k, uint32_t type) {
  put_str(bytes_, k);
  put(bytes_, type);
  ++count_;
}

void GgufMetadata::u32(const std::string& k, int64_t v) { key(k, kU32); put(bytes_, static_cast<uint32_t>(v)); }
void GgufMetadata::i32(const std::string& k, int64_t v) { key(k, kI32); put(bytes_, static_cast<int32_t>(v)); }
void GgufMetadata::f32(const std::string& k, double v) { key(k, kF32); put(bytes_, static_cast<float>(v)); }
void GgufMetadata::boolean(const std::string& k, bool v) { key(k, kBool); put(bytes_, static_cast<uint8_t>(v)); }
void GgufMetadata::str(const std::string& k, const std::string& v) { key(k, kString); put_str(bytes_, v); }

void GgufMetadata::strs(const std::string& k, const std::vector<std::string>& v) {
  key(k, kArray);
  put(bytes_, kString);
  put<uint64_t>(bytes_, v.size());
  for (const auto& s : v) put_str(bytes_, s);
}

void GgufMetadata::i32s(const std::string& k, const std::vector<int32_t>& v) {
  key(k, kArray);
  put(bytes_, kI32);
  put<uint64_t>(bytes_, v.size());
  for (int32_t x : v) put(bytes_, x);
}

uint64_t write_gguf(const std::string& path, const GgufMetadata& metadata, const std::vector<GgufTensor>& tensors) {
  // header, metadata, tensor infos, padded to the alignment; the data follows
  std::vector<uint8_t> h;
  put(h, kMagic);
  put(h, kVersion);
  put<uint64_t>(h, tensors.size());
  put<uint64_t>(h, metadata.count());
  h.insert(h.end(), metadata.bytes().begin(), metadata.bytes().end());
  uint64_t offset = 0;
  for (const GgufTensor& t : tensors) {
    put_str(h, t.name);
    put<uint32_t>(h, static_cast<uint32_t>(t.shape.size()));
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) put<uint64_t>(h, static_cast<uint64_t>(*it));
    put(h, static_cast<uint32_t>(t.type));
    put<uint64_t>(h, offset);
    offset += aligned(t.data.size() * type_size(t.type));
  }
  h.resize(aligned(h.size()), 0);

  write_file_durable(path, [&](std::FILE* f) {
    static const char zeros[kGgufAlignment] = {};
    bool ok = std::fwrite(h.data(), 1, h.size(), f) == h.size();
    std::vector<uint8_t> d;
    for (size_t i = 0; ok && i < tensors.size(); ++i) {
      encode(tensors[i], d);
      const size_t pad = aligned(d.size()) - d.size();
      ok = std::fwrite(d.data(), 1, d.size(), f) == d.size() && std::fwrite(zeros, 1, pad, f) == pad;
    }
    return ok;
  });
  return h.size() + offset;
}

bool is_gguf_file(const std::string& path) {
  char magic[4] = {};
  std::ifstream f(path, std::ios::binary);
  return std::filesystem::is_regular_file(path) && f.read(magic, 4) && std::memcmp(magic, "GGUF", 4) == 0;
}

}  // namespace switchyard::core::formats
