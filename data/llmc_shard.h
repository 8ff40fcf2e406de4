// data/llmc_shard.h: llm.c token shards (karpathy/llm.c dev/data/data_common.py).
//
// Layout, little-endian: a 1024-byte header of 256 int32 ([0] magic, [1] version, [2] token count,
// the rest zero), then the tokens back to back.
//   magic 20240520, version 1: uint16 tokens (GPT-2)
//   magic 20240801, version 7: uint32 tokens (Llama 3)
// The file size must be exactly 1024 + count * token size; anything else is rejected.
#pragma once

#include <cstdint>
#include <string>

#include "data/token_source.h"

namespace switchyard::data {

inline constexpr int32_t kLlmcMagicV1 = 20240520;  // version 1, uint16 tokens
inline constexpr int32_t kLlmcMagicV7 = 20240801;  // version 7, uint32 tokens
inline constexpr int64_t kLlmcHeaderBytes = 1024;

// A read-only memory map of one shard; the header is checked on open (usage errors naming the file).
class LlmcShardSource final : public TokenSource {
 public:
  explicit LlmcShardSource(const std::string& path);
  ~LlmcShardSource() override;
  LlmcShardSource(const LlmcShardSource&) = delete;
  LlmcShardSource& operator=(const LlmcShardSource&) = delete;

  int64_t size() const override { return count_; }
  void read(int64_t begin, int64_t count, int32_t* out) const override;
  std::string describe() const override;
  int64_t vocab_hint() const override { return 0; }
  const std::string& path() const override { return path_; }

  int version() const { return version_; }          // 1 or 7
  int token_bytes() const { return token_bytes_; }  // 2 or 4

 private:
  std::string path_;
  int version_ = 0;
  int token_bytes_ = 0;
  int64_t count_ = 0;
  void* map_ = nullptr;
  int64_t map_bytes_ = 0;
};

// Writes tokens[0..n) as an llm.c shard of the given version (1: uint16, 7: uint32), atomically
// (temporary file in the same folder, then rename). Tokens that do not fit the version's type, a
// negative token or n >= 2^31 are usage errors.
void write_llmc_shard(const std::string& path, const int32_t* tokens, int64_t n, int version);

}  // namespace switchyard::data
