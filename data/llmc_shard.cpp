#include "data/llmc_shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/formats/durable.h"
#include "data/file_util.h"

static_assert(std::endian::native == std::endian::little, "llm.c shards are little-endian");

namespace switchyard::data {

namespace {

// Closes a file descriptor on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

LlmcShardSource::LlmcShardSource(const std::string& path) : path_(path) {
  require_regular_file(path);
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f.fd < 0) throw_usage("cannot open {}: {}", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) throw_usage("cannot stat {}: {}", path, std::strerror(errno));
  const int64_t file_bytes = st.st_size;
  if (file_bytes < kLlmcHeaderBytes) {
    throw_usage("{} is truncated: {} bytes, shorter than the 1024-byte llm.c shard header", path,
                file_bytes);
  }
  int32_t header[256];
  ssize_t got = ::pread(f.fd, header, sizeof(header), 0);
  if (got != static_cast<ssize_t>(sizeof(header))) {
    throw_usage("cannot read the header of {}: {}", path, got < 0 ? std::strerror(errno) : "short read");
  }
  const int32_t magic = header[0], version = header[1], count = header[2];
  if (magic == kLlmcMagicV1) {
    if (version != 1) {
      throw_usage("{}: llm.c shard magic {} with version {}; this magic goes with version 1 (uint16 tokens)",
                  path, magic, version);
    }
    token_bytes_ = 2;
  } else if (magic == kLlmcMagicV7) {
    if (version != 7) {
      throw_usage("{}: llm.c shard magic {} with version {}; this magic goes with version 7 (uint32 tokens)",
                  path, magic, version);
    }
    token_bytes_ = 4;
  } else {
    throw_usage("{} is not an llm.c shard: magic {} (expected {} or {})", path, magic, kLlmcMagicV1,
                kLlmcMagicV7);
  }
  version_ = version;
  if (count < 0) throw_usage("{}: llm.c shard header gives a negative token count {}", path, count);
  count_ = count;
  const int64_t expected = kLlmcHeaderBytes + count_ * token_bytes_;
  if (file_bytes != expected) {
    throw_usage("{}: llm.c shard header says {} tokens of {} bytes, so the file should be {} bytes, "
                "but it is {} bytes ({}); re-create or re-download the shard",
                path, count_, token_bytes_, expected, file_bytes,
                file_bytes < expected ? "truncated" : "trailing bytes");
  }
  map_bytes_ = file_bytes;
  void* m = ::mmap(nullptr, static_cast<size_t>(map_bytes_), PROT_READ, MAP_SHARED, f.fd, 0);
  if (m == MAP_FAILED) throw_usage("cannot map {} into memory: {}", path, std::strerror(errno));
  map_ = m;
}

LlmcShardSource::~LlmcShardSource() {
  if (map_) ::munmap(map_, static_cast<size_t>(map_bytes_));
}

void LlmcShardSource::read(int64_t begin, int64_t count, int32_t* out) const {
  SY_CHECK(begin >= 0 && count >= 0 && begin + count <= count_,
           "read [{}, {}) outside {} with {} tokens", begin, begin + count, describe(), count_);
  const char* data = static_cast<const char*>(map_) + kLlmcHeaderBytes;
  if (token_bytes_ == 2) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(data) + begin;
    for (int64_t i = 0; i < count; ++i) out[i] = p[i];
  } else {
    const uint32_t* p = reinterpret_cast<const uint32_t*>(data) + begin;
    for (int64_t i = 0; i < count; ++i) {
      uint32_t v = p[i];
      if (v > static_cast<uint32_t>(std::numeric_limits<int32_t>::max())) {
        throw_usage("{}: token {} at position {} does not fit a 32-bit signed token id", describe(), v,
                    begin + i);
      }
      out[i] = static_cast<int32_t>(v);
    }
  }
}

std::string LlmcShardSource::describe() const { return fmt::format("{} (llm.c shard)", path_); }

void write_llmc_shard(const std::string& path, const int32_t* tokens, int64_t n, int version) {
  if (version != 1 && version != 7) {
    throw_usage("{}: llm.c shard version {} is not supported (1: uint16 tokens, 7: uint32 tokens)", path,
                version);
  }
  if (n < 0 || n > std::numeric_limits<int32_t>::max()) {
    throw_usage("{}: {} tokens do not fit one llm.c shard (the header count is an int32); split the data",
                path, n);
  }
  const int64_t max_token = version == 1 ? 65535 : std::numeric_limits<int32_t>::max();
  for (int64_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] > max_token) {
      throw_usage("{}: token {} at position {} does not fit an llm.c version {} shard ({} tokens){}", path,
                  tokens[i], i, version, version == 1 ? "uint16" : "uint32",
                  version == 1 ? "; use version 7" : "");
    }
  }
  int32_t header[256] = {};
  header[0] = version == 1 ? kLlmcMagicV1 : kLlmcMagicV7;
  header[1] = version;
  header[2] = static_cast<int32_t>(n);

  create_parent_dirs(path);
  core::formats::write_file_durable(path, [&](std::FILE* f) {
    bool ok = std::fwrite(header, sizeof(header), 1, f) == 1;
    constexpr int64_t kChunk = 1 << 16;
    std::vector<uint16_t> b16;
    std::vector<uint32_t> b32;
    for (int64_t i = 0; ok && i < n; i += kChunk) {
      const int64_t m = std::min(kChunk, n - i);
      if (version == 1) {
        b16.assign(tokens + i, tokens + i + m);
        ok = std::fwrite(b16.data(), 2, static_cast<size_t>(m), f) == static_cast<size_t>(m);
      } else {
        b32.assign(tokens + i, tokens + i + m);
        ok = std::fwrite(b32.data(), 4, static_cast<size_t>(m), f) == static_cast<size_t>(m);
      }
    }
    return ok;
  });
}

}  // namespace switchyard::data
