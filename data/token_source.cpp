#include "data/token_source.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/formats/hdf5.h"
#include "data/file_util.h"
#include "data/hdf5_tokens.h"
#include "data/llmc_shard.h"
#include "data/megatron_dataset.h"

namespace switchyard::data {

namespace {

std::string hex_prefix(const unsigned char* b, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += fmt::format("{:02x}", b[i]);
  return s;
}

}  // namespace

TokenFileFormat detect_token_file_format(const std::string& path) {
  if (megatron_prefix(path)) return TokenFileFormat::megatron;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec) && std::filesystem::exists(path + ".idx", ec)) {
    // a prefix whose .idx lacks the magic: the Megatron reader names the .idx and what is wrong
    return TokenFileFormat::megatron;
  }
  require_regular_file(path);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_usage("cannot open {} for reading", path);
  unsigned char b[8] = {};
  in.read(reinterpret_cast<char*>(b), 8);
  const auto n = in.gcount();
  if (n == 8 && std::memcmp(b, core::formats::kHdf5Signature, 8) == 0) return TokenFileFormat::hdf5;
  if (n >= 4) {
    int32_t magic = static_cast<int32_t>(uint32_t{b[0]} | uint32_t{b[1]} << 8 | uint32_t{b[2]} << 16 |
                                         uint32_t{b[3]} << 24);
    if (magic == kLlmcMagicV1 || magic == kLlmcMagicV7) return TokenFileFormat::llmc;
  }
  return TokenFileFormat::unknown;
}

namespace {

[[noreturn]] void throw_unknown_format(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  unsigned char b[8] = {};
  in.read(reinterpret_cast<char*>(b), 8);
  const int n = static_cast<int>(in.gcount());
  std::string megatron;  // a .bin without its Megatron index
  if (path.size() > 4 && path.compare(path.size() - 4, 4, ".bin") == 0) {
    const std::string idx = path.substr(0, path.size() - 4) + ".idx";
    std::error_code ec;
    megatron = std::filesystem::exists(idx, ec)
                   ? fmt::format("; {} exists but does not start with the Megatron index magic", idx)
                   : fmt::format("; if it is the .bin of a Megatron dataset, its index {} is missing", idx);
  }
  throw_usage("{} is neither a Switchyard HDF5 token file, an llm.c shard nor a Megatron dataset ({}{}); make "
              "a token file from text with `switchyard prepare`",
              path, n == 0 ? std::string("the file is empty") : "it starts with bytes " + hex_prefix(b, n),
              megatron);
}

}  // namespace

std::unique_ptr<TokenSource> open_token_source(const std::string& path, const std::string& split) {
  switch (detect_token_file_format(path)) {
    case TokenFileFormat::hdf5:
      return std::make_unique<Hdf5TokenSource>(path, split);
    case TokenFileFormat::llmc:
      return std::make_unique<LlmcShardSource>(path);
    case TokenFileFormat::megatron:
      return std::make_unique<MegatronDataset>(path);  // no splits: the whole dataset
    case TokenFileFormat::unknown:
      break;
  }
  throw_unknown_format(path);
}

bool token_file_has_split(const std::string& path, const std::string& split) {
  switch (detect_token_file_format(path)) {
    case TokenFileFormat::hdf5: {
      auto splits = hdf5_token_splits(path);
      bool present = false;
      for (auto& s : splits) present |= s == split;
      if (!present) return false;
      return Hdf5TokenSource(path, split, /*allow_empty=*/true).size() > 0;
    }
    case TokenFileFormat::llmc:
      LlmcShardSource{path};  // checks the header
      return split == "train";
    case TokenFileFormat::megatron:
      MegatronDataset{path};  // checks the index and the .bin; no splits: the whole dataset is "train"
      return split == "train";
    case TokenFileFormat::unknown:
      break;
  }
  throw_unknown_format(path);
}

}  // namespace switchyard::data
