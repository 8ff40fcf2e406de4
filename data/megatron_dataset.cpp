#include "data/megatron_dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <type_traits>

#include "core/error.h"
#include "data/file_util.h"

static_assert(std::endian::native == std::endian::little, "Megatron indexed datasets are little-endian");

namespace switchyard::data {

namespace fs = std::filesystem;

int megatron_dtype_bytes(int code) {
  switch (code) {
    case megatron_dtype_uint8: case megatron_dtype_int8: return 1;
    case megatron_dtype_int16: case megatron_dtype_uint16: return 2;
    case megatron_dtype_int32: case megatron_dtype_float32: return 4;
    case megatron_dtype_int64: case megatron_dtype_float64: return 8;
    default: return 0;
  }
}

const char* megatron_dtype_name(int code) {
  switch (code) {
    case megatron_dtype_uint8: return "uint8";
    case megatron_dtype_int8: return "int8";
    case megatron_dtype_int16: return "int16";
    case megatron_dtype_int32: return "int32";
    case megatron_dtype_int64: return "int64";
    case megatron_dtype_float64: return "float64";
    case megatron_dtype_float32: return "float32";
    case megatron_dtype_uint16: return "uint16";
    default: return "unknown";
  }
}

namespace {

constexpr const char* kRemake =
    "re-create the dataset (Megatron's tools/preprocess_data.py, or `switchyard prepare --format megatron`)";

bool ends_with(const std::string& s, const char* suffix) {
  const size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

bool is_file(const std::string& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// Whether `p` is a regular file starting with the 9-byte index magic.
bool has_index_magic(const std::string& p) {
  if (!is_file(p)) return false;
  std::ifstream in(p, std::ios::binary);
  char b[9] = {};
  in.read(b, 9);
  return in.gcount() == 9 && std::memcmp(b, kMegatronMagic, 9) == 0;
}

// Maps a whole regular file read-only into (bytes, data); an empty file maps to nullptr. Usage errors name
// the file.
void map_read_only(const std::string& path, int64_t& bytes, const char*& data) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_usage("cannot open {}: {}", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    throw_usage("cannot stat {}: {}", path, std::strerror(e));
  }
  void* m = nullptr;
  if (st.st_size > 0) m = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
  const int e = errno;
  ::close(fd);  // the map keeps the file
  if (m == MAP_FAILED) throw_usage("cannot map {} into memory: {}", path, std::strerror(e));
  bytes = st.st_size;
  data = static_cast<const char*>(m);
}

template <typename T>
T load(const char* p) {  // the index arrays start at byte 34: unaligned
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

std::string hex_bytes(const char* p, int64_t n) {
  std::string s;
  for (int64_t i = 0; i < n; ++i) s += fmt::format("{:02x}", static_cast<unsigned char>(p[i]));
  return s;
}

}  // namespace

std::optional<std::string> megatron_prefix(const std::string& path) {
  if (ends_with(path, ".idx") && has_index_magic(path)) return path.substr(0, path.size() - 4);
  if (ends_with(path, ".bin")) {
    const std::string prefix = path.substr(0, path.size() - 4);
    if (has_index_magic(prefix + ".idx")) return prefix;
  }
  std::error_code ec;
  if (!fs::exists(path, ec) && has_index_magic(path + ".idx")) return path;
  return std::nullopt;
}

MegatronDataset::MegatronDataset(const std::string& path) {
  if (auto p = megatron_prefix(path)) prefix_ = *p;
  else prefix_ = ends_with(path, ".idx") || ends_with(path, ".bin") ? path.substr(0, path.size() - 4) : path;
  idx_path_ = prefix_ + ".idx";
  bin_path_ = prefix_ + ".bin";
  const std::string& idx = idx_path_;
  const std::string& bin = bin_path_;

  if (!is_file(idx)) {
    throw_usage("{}: no such file; a Megatron dataset is a pair PREFIX.idx + PREFIX.bin (give the prefix or "
                "either file), and the index of {} is missing", idx, path);
  }
  map_read_only(idx, idx_.bytes, idx_.data);
  const int64_t magic_bytes = std::min<int64_t>(idx_.bytes, 9);
  if (idx_.bytes == 0 || std::memcmp(idx_.data, kMegatronMagic, static_cast<size_t>(magic_bytes)) != 0) {
    throw_usage("{} is not a Megatron index: {} (expected the magic \"MMIDIDX\\x00\\x00\"); give the .idx "
                "written by Megatron-LM / GPT-NeoX preprocessing",
                idx, idx_.bytes == 0 ? std::string("the file is empty")
                                     : "it starts with bytes " + hex_bytes(idx_.data, magic_bytes));
  }
  if (idx_.bytes < kMegatronHeaderBytes) {
    throw_usage("{} is truncated: {} bytes, shorter than the {}-byte Megatron index header; {}", idx,
                idx_.bytes, kMegatronHeaderBytes, kRemake);
  }
  const uint64_t version = load<uint64_t>(idx_.data + 9);
  if (version != kMegatronVersion) {
    throw_usage("{}: Megatron index version {} is not supported (only version {}); {}", idx, version,
                kMegatronVersion, kRemake);
  }
  dtype_code_ = static_cast<unsigned char>(idx_.data[17]);
  token_bytes_ = megatron_dtype_bytes(dtype_code_);
  if (token_bytes_ == 0) {
    throw_usage("{}: unknown token dtype code {} (known: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, "
                "7 float32, 8 uint16); {}", idx, dtype_code_, kRemake);
  }
  const uint64_t s = load<uint64_t>(idx_.data + 18), e = load<uint64_t>(idx_.data + 26);
  const uint64_t room = static_cast<uint64_t>(idx_.bytes - kMegatronHeaderBytes);
  // sizes checked before multiplying, so a huge count cannot overflow
  if (s > room / 12 || e > room / 8 || 12 * s + 8 * e > room) {
    throw_usage("{} is truncated: its header says {} sequences and {} document-index entries, which need {} "
                "bytes after the {}-byte header, but the file has {}; {}", idx, s, e,
                s > room / 12 || e > room / 8 ? std::string("more") : std::to_string(12 * s + 8 * e),
                kMegatronHeaderBytes, room, kRemake);
  }
  sequences_ = static_cast<int64_t>(s);
  entries_ = static_cast<int64_t>(e);
  const int64_t expected = kMegatronHeaderBytes + 12 * sequences_ + 8 * entries_;
  if (idx_.bytes != expected && idx_.bytes != expected + sequences_) {  // + int8 modes: multimodal
    throw_usage("{}: {} bytes, but {} sequences and {} document-index entries make {} bytes (trailing "
                "bytes); {}", idx, idx_.bytes, sequences_, entries_, expected, kRemake);
  }
  if (sequences_ == 0) throw_usage("{}: the dataset is empty (0 sequences); give a dataset with tokens", idx);
  if (entries_ == 0) {
    throw_usage("{}: the document index is empty; it needs at least [0, {}] (the sequence count); {}", idx,
                sequences_, kRemake);
  }

  if (!is_file(bin)) {
    throw_usage("{}: no such file; the Megatron index {} needs its token file next to it (PREFIX.bin)", bin, idx);
  }
  map_read_only(bin, bin_.bytes, bin_.data);
  const char* lengths = idx_.data + kMegatronHeaderBytes;
  const char* pointers = lengths + 4 * sequences_;
  int64_t end = 0;  // byte where the previous sequence ends
  for (int64_t i = 0; i < sequences_; ++i) {
    const int32_t len = load<int32_t>(lengths + 4 * i);
    const int64_t ptr = load<int64_t>(pointers + 8 * i);
    if (len < 0) throw_usage("{}: sequence {} has a negative length {}; {}", idx, i, len, kRemake);
    if (ptr < 0 || ptr > bin_.bytes || int64_t{len} * token_bytes_ > bin_.bytes - ptr) {
      throw_usage("{}: sequence {} (byte {}, {} tokens of {} bytes) runs past the end of {} ({} bytes): the "
                  ".bin is truncated or belongs to another index; {}",
                  idx, i, ptr, len, token_bytes_, bin, bin_.bytes, kRemake);
    }
    if (ptr != end) {
      throw_usage("{}: sequence {} starts at byte {} of {}, but the sequences before it end at byte {}; "
                  "Switchyard reads the .bin as one stream and needs the sequences back to back from byte 0, "
                  "as Megatron's builder writes them; {}", idx, i, ptr, bin, end, kRemake);
    }
    end = ptr + int64_t{len} * token_bytes_;
  }
  if (end != bin_.bytes) {
    throw_usage("{}: {} bytes, but its index {} describes {} bytes of {} tokens (trailing bytes); the .bin and "
                ".idx do not belong together; {}", bin, bin_.bytes, idx, end, megatron_dtype_name(dtype_code_),
                kRemake);
  }
  tokens_ = end / token_bytes_;
  if (tokens_ == 0) throw_usage("{}: the dataset is empty (0 tokens); give a dataset with tokens", idx);

  const char* doc_idx = pointers + 8 * sequences_;
  int64_t prev = 0;
  for (int64_t d = 0; d < entries_; ++d) {
    const int64_t v = load<int64_t>(doc_idx + 8 * d);
    if (d == 0 && v != 0) {
      throw_usage("{}: the document index starts at sequence {}, not 0; {}", idx, v, kRemake);
    }
    if (v < prev || v > sequences_) {
      throw_usage("{}: document index entry {} is {}, {}: it must rise monotonically from 0 to the sequence "
                  "count {}; {}", idx, d, v, v < prev ? fmt::format("below the entry before it ({})", prev)
                                                      : std::string("beyond the last sequence"),
                  sequences_, kRemake);
    }
    prev = v;
  }
  if (prev != sequences_) {
    throw_usage("{}: the document index ends at sequence {}, not at the sequence count {}; {}", idx, prev,
                sequences_, kRemake);
  }
}

MegatronDataset::Map::~Map() {
  if (data) ::munmap(const_cast<char*>(data), static_cast<size_t>(bytes));
}

namespace {

template <typename T>
void convert(const char* p, int64_t begin, int64_t count, int32_t* out, const MegatronDataset& ds) {
  for (int64_t i = 0; i < count; ++i) {
    const T v = load<T>(p + static_cast<int64_t>(sizeof(T)) * i);
    if constexpr (std::is_integral_v<T> && sizeof(T) <= 2) {
      out[i] = v;
    } else if constexpr (std::is_same_v<T, int32_t>) {
      out[i] = v;
    } else if constexpr (std::is_integral_v<T>) {
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
        throw_usage("{}: token {} at position {} does not fit a 32-bit signed token id", ds.describe(), v,
                    begin + i);
      }
      out[i] = static_cast<int32_t>(v);
    } else {
      // float dtypes: only integral values in int32's range are token ids
      if (!(std::isfinite(v) && std::trunc(v) == v && v >= -2147483648.0 && v <= 2147483647.0)) {
        throw_usage("{}: token {} at position {} is not an integral 32-bit token id (the dataset stores {}); "
                    "re-create it with an integer dtype", ds.describe(), v, begin + i,
                    megatron_dtype_name(ds.dtype_code()));
      }
      out[i] = static_cast<int32_t>(v);
    }
  }
}

}  // namespace

void MegatronDataset::read(int64_t begin, int64_t count, int32_t* out) const {
  SY_CHECK(begin >= 0 && count >= 0 && begin + count <= tokens_, "read [{}, {}) outside {} with {} tokens", begin,
           begin + count, describe(), tokens_);
  const char* p = bin_.data + begin * token_bytes_;
  switch (dtype_code_) {
    case megatron_dtype_uint8: return convert<uint8_t>(p, begin, count, out, *this);
    case megatron_dtype_int8: return convert<int8_t>(p, begin, count, out, *this);
    case megatron_dtype_int16: return convert<int16_t>(p, begin, count, out, *this);
    case megatron_dtype_uint16: return convert<uint16_t>(p, begin, count, out, *this);
    case megatron_dtype_int32: return convert<int32_t>(p, begin, count, out, *this);
    case megatron_dtype_int64: return convert<int64_t>(p, begin, count, out, *this);
    case megatron_dtype_float32: return convert<float>(p, begin, count, out, *this);
    case megatron_dtype_float64: return convert<double>(p, begin, count, out, *this);
    default: SY_CHECK(false, "dtype code {} passed the open check", dtype_code_);
  }
}

std::string MegatronDataset::describe() const {
  return fmt::format("{} (Megatron dataset, index {})", bin_path_, idx_path_);
}

std::vector<int64_t> MegatronDataset::document_index() const {
  std::vector<int64_t> v(static_cast<size_t>(entries_));
  std::memcpy(v.data(), idx_.data + kMegatronHeaderBytes + 12 * sequences_, v.size() * sizeof(int64_t));
  return v;
}

std::vector<int64_t> MegatronDataset::sequence_offsets() const {
  std::vector<int64_t> v(static_cast<size_t>(sequences_ + 1));
  const char* pointers = idx_.data + kMegatronHeaderBytes + 4 * sequences_;
  for (int64_t i = 0; i < sequences_; ++i) v[static_cast<size_t>(i)] = load<int64_t>(pointers + 8 * i) / token_bytes_;
  v.back() = tokens_;  // the open check made the sequences back to back
  return v;
}

std::vector<int64_t> MegatronDataset::doc_offsets() const {
  const std::vector<int64_t> seq = sequence_offsets();
  std::vector<int64_t> v = document_index();
  for (int64_t& x : v) x = seq[static_cast<size_t>(x)];
  return v;
}

}  // namespace switchyard::data
