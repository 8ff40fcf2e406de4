// core/formats/safetensors.cpp: validated mmap reader and durable writer of safetensors files.
#include "core/formats/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "core/error.h"
#include "core/formats/durable.h"
#include "core/half.h"

namespace switchyard::core::formats {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

namespace {

constexpr uint64_t kMaxHeader = 100ull * 1000 * 1000;  // the reference implementation's limit

// Element count of a shape, or -1 on overflow.
int64_t checked_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return -1;
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) return -1;
    n *= d;
  }
  return n;
}

}  // namespace

size_t safetensors_dtype_size(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "BOOL" || d == "U8" || d == "I8" || d == "F8_E5M2" || d == "F8_E4M3") return 1;
  return 0;
}

std::string safetensors_dtype(Dtype dtype) {
  switch (dtype) {
    case Dtype::f32: return "F32";
    case Dtype::bf16: return "BF16";
    case Dtype::f16: return "F16";
  }
  throw_internal("no safetensors name for dtype {}", static_cast<int>(dtype));
}

std::string shape_str(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

void to_f32(const TensorView& t, float* out) {
  const int64_t n = t.numel();
  const uint8_t* p = t.data;
  if (t.dtype == "F32") {
    if (n > 0) std::memcpy(out, p, static_cast<size_t>(n) * 4);
    return;
  }
  if (t.dtype != "BF16" && t.dtype != "F16" && t.dtype != "F64")
    throw_usage("{}: tensor '{}' has dtype {}, which cannot be converted to fp32 (supported: F32, "
                "BF16, F16, F64)",
                t.file, t.name, t.dtype);
  const int kind = t.dtype == "BF16" ? 0 : t.dtype == "F16" ? 1 : 2;
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    if (kind == 2) {
      double d;
      std::memcpy(&d, p + i * 8, 8);
      out[i] = static_cast<float>(d);
    } else {
      uint16_t h;
      std::memcpy(&h, p + i * 2, 2);
      out[i] = kind == 0 ? bf16_to_f32(h) : f16_to_f32(h);
    }
  }
}

void from_f32(const float* src, size_t n, const std::string& dtype, std::vector<uint8_t>& out) {
  SY_CHECK(dtype == "F32" || dtype == "BF16" || dtype == "F16", "from_f32: dtype {} is not F32, BF16 or F16", dtype);
  if (dtype == "F32") {
    out.resize(n * 4);
    if (n > 0) std::memcpy(out.data(), src, n * 4);
    return;
  }
  std::vector<uint16_t> h(n);
  if (dtype == "BF16") f32_to_bf16(src, h.data(), n);
  else f32_to_f16(src, h.data(), n);
  out.resize(n * 2);
  if (n > 0) std::memcpy(out.data(), h.data(), n * 2);
}

// ---- reader ----

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    throw_usage("{}: cannot open the safetensors file: {}", path, std::strerror(err));
  }
  struct stat st{};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw_usage("{}: not a regular file", path);
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ < 8) {
    ::close(fd);
    throw_usage("{}: {} bytes is too small for a safetensors file (at least an 8-byte header size)",
                path, size_);
  }
  void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);
  if (m == MAP_FAILED) throw_usage("{}: cannot map the file: {}", path, std::strerror(map_err));
  map_ = m;
  try {
    const auto* base = static_cast<const uint8_t*>(map_);
    uint64_t n = 0;
    std::memcpy(&n, base, 8);
    if (n > kMaxHeader)
      throw_usage("{}: header size {} is larger than 100 MB: not a safetensors file, or corrupted",
                  path, n);
    if (n > size_ - 8)
      throw_usage("{}: header size {} runs past the end of the {}-byte file (truncated or not a "
                  "safetensors file)",
                  path, n, size_);
    const char* hb = reinterpret_cast<const char*>(base + 8);
    using nlohmann::json;
    std::set<std::string> seen;
    std::string duplicate;
    json::parser_callback_t cb = [&](int depth, json::parse_event_t ev, json& parsed) {
      if (ev == json::parse_event_t::key && depth == 1 && parsed.is_string()) {
        const std::string& k = parsed.get_ref<const std::string&>();
        if (!seen.insert(k).second && duplicate.empty()) duplicate = k;
      }
      return true;
    };
    json h;
    try {
      h = json::parse(hb, hb + n, cb);
    } catch (const json::exception& e) {
      throw_usage("{}: the {}-byte JSON header is invalid: {}", path, n, e.what());
    }
    if (!duplicate.empty()) throw_usage("{}: tensor '{}' appears twice in the header", path, duplicate);
    if (!h.is_object()) throw_usage("{}: the JSON header is not an object", path);

    struct Entry {
      uint64_t begin, end;
      size_t i;
    };
    std::vector<Entry> entries;
    const uint8_t* data = base + 8 + n;
    const uint64_t data_size = size_ - 8 - n;
    for (auto it = h.begin(); it != h.end(); ++it) {
      const std::string& name = it.key();
      const json& v = it.value();
      if (name == "__metadata__") {
        if (!v.is_object()) throw_usage("{}: __metadata__ is not an object", path);
        for (auto m2 = v.begin(); m2 != v.end(); ++m2) {
          if (!m2.value().is_string())
            throw_usage("{}: __metadata__ value of '{}' is not a string", path, m2.key());
          metadata_[m2.key()] = m2.value().get<std::string>();
        }
        continue;
      }
      if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") ||
          !v.contains("data_offsets"))
        throw_usage("{}: tensor '{}': expected an object with dtype, shape and data_offsets", path,
                    name);
      TensorView t;
      t.name = name;
      t.file = path;
      if (!v["dtype"].is_string()) throw_usage("{}: tensor '{}': dtype is not a string", path, name);
      t.dtype = v["dtype"].get<std::string>();
      const size_t esize = safetensors_dtype_size(t.dtype);
      if (esize == 0) throw_usage("{}: tensor '{}': unknown dtype '{}'", path, name, t.dtype);
      const json& sh = v["shape"];
      if (!sh.is_array()) throw_usage("{}: tensor '{}': shape is not an array", path, name);
      for (const json& d : sh) {
        if (!d.is_number_unsigned())
          throw_usage("{}: tensor '{}': shape {} has an entry that is not a non-negative integer",
                      path, name, sh.dump());
        t.shape.push_back(d.get<int64_t>());
      }
      const json& off = v["data_offsets"];
      if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
          !off[1].is_number_unsigned())
        throw_usage("{}: tensor '{}': data_offsets {} is not a pair of non-negative integers", path,
                    name, off.dump());
      const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
      if (e < b) throw_usage("{}: tensor '{}': data_offsets [{}, {}] end before they begin", path, name, b, e);
      const int64_t numel = checked_numel(t.shape);
      if (numel < 0 || static_cast<uint64_t>(numel) > std::numeric_limits<uint64_t>::max() / esize)
        throw_usage("{}: tensor '{}': shape {} is too large", path, name, shape_str(t.shape));
      const uint64_t need = static_cast<uint64_t>(numel) * esize;
      if (e - b != need)
        throw_usage("{}: tensor '{}': data_offsets [{}, {}] hold {} bytes but dtype {} with shape "
                    "{} needs {} ({} elements x {} bytes)",
                    path, name, b, e, e - b, t.dtype, shape_str(t.shape), need, numel, esize);
      if (e > data_size)
        throw_usage("{}: tensor '{}': data_offsets [{}, {}] run past the end of the data ({} bytes "
                    "after the header; truncated file?)",
                    path, name, b, e, data_size);
      t.data = data + b;
      t.nbytes = static_cast<size_t>(need);
      entries.push_back({b, e, tensors_.size()});
      tensors_.push_back(std::move(t));
    }
    std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    uint64_t expected = 0;
    const std::string* prev = nullptr;
    for (const Entry& en : entries) {
      const std::string& nm = tensors_[en.i].name;
      if (en.begin < expected)
        throw_usage("{}: tensor '{}' (data_offsets [{}, {}]) overlaps tensor '{}' which ends at {}",
                    path, nm, en.begin, en.end, prev ? *prev : std::string("?"), expected);
      if (en.begin > expected)
        throw_usage("{}: gap in the data: bytes [{}, {}) before tensor '{}' belong to no tensor",
                    path, expected, en.begin, nm);
      expected = en.end;
      prev = &nm;
    }
    if (expected != data_size)
      throw_usage("{}: the tensors hold {} bytes but the file has {} bytes after the header ({} "
                  "trailing bytes belong to no tensor)",
                  path, expected, data_size, data_size - expected);
    // Keep tensors in data order.
    std::vector<TensorView> ordered;
    ordered.reserve(tensors_.size());
    for (const Entry& en : entries) ordered.push_back(std::move(tensors_[en.i]));
    tensors_ = std::move(ordered);
    for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
  } catch (...) {
    close();
    throw;
  }
}

void SafetensorsFile::close() {
  if (map_) ::munmap(map_, size_);
  map_ = nullptr;
  size_ = 0;
}

SafetensorsFile::~SafetensorsFile() { close(); }

SafetensorsFile::SafetensorsFile(SafetensorsFile&& o) noexcept
    : path_(std::move(o.path_)),
      map_(std::exchange(o.map_, nullptr)),
      size_(std::exchange(o.size_, 0)),
      tensors_(std::move(o.tensors_)),
      index_(std::move(o.index_)),
      metadata_(std::move(o.metadata_)) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& o) noexcept {
  if (this != &o) {
    close();
    path_ = std::move(o.path_);
    map_ = std::exchange(o.map_, nullptr);
    size_ = std::exchange(o.size_, 0);
    tensors_ = std::move(o.tensors_);
    index_ = std::move(o.index_);
    metadata_ = std::move(o.metadata_);
  }
  return *this;
}

const TensorView* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorView& SafetensorsFile::at(const std::string& name) const {
  const TensorView* t = find(name);
  if (!t) throw_usage("{}: no tensor named '{}'", path_, name);
  return *t;
}

// ---- writer ----

void write_safetensors(const std::string& path, const std::vector<TensorWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    h["__metadata__"] = std::move(m);
  }
  std::vector<size_t> sizes;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const TensorWrite& t : tensors) {
    const size_t es = safetensors_dtype_size(t.dtype);
    SY_CHECK(es > 0, "write_safetensors({}): tensor {} has unknown dtype '{}'", path, t.name, t.dtype);
    SY_CHECK(!t.name.empty() && t.name != "__metadata__", "write_safetensors({}): bad tensor name '{}'",
             path, t.name);
    SY_CHECK(names.insert(t.name).second, "write_safetensors({}): duplicate tensor {}", path, t.name);
    const int64_t numel = checked_numel(t.shape);
    SY_CHECK(numel >= 0, "write_safetensors({}): tensor {} has a bad shape {}", path, t.name,
             shape_str(t.shape));
    const uint64_t nb = static_cast<uint64_t>(numel) * es;
    SY_CHECK(nb == 0 || t.data != nullptr, "write_safetensors({}): tensor {} has no data", path, t.name);
    h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + nb}}};
    offset += nb;
    sizes.push_back(static_cast<size_t>(nb));
  }
  std::string header = h.dump();
  while (header.size() % 8) header.push_back(' ');

  write_file_durable(path, [&](std::FILE* f) {
    const uint64_t n = header.size();
    bool ok = std::fwrite(&n, 8, 1, f) == 1 && std::fwrite(header.data(), 1, header.size(), f) == header.size();
    for (size_t i = 0; ok && i < tensors.size(); ++i)
      if (sizes[i] > 0) ok = std::fwrite(tensors[i].data, 1, sizes[i], f) == sizes[i];
    return ok;
  });
}

}  // namespace switchyard::core::formats
