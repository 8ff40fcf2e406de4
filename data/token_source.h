// data/token_source.h: a flat stream of token ids, whatever file it comes from.
//
// Three on-disk formats are read, chosen by the files' first bytes (never by their names):
//   - our HDF5 token file (data/hdf5_tokens.h), written by `switchyard prepare`, with a "train"
//     and a "valid" split;
//   - an llm.c shard (data/llmc_shard.h): one stream, no splits;
//   - a Megatron-LM / GPT-NeoX indexed dataset (data/megatron_dataset.h), PREFIX.idx + PREFIX.bin,
//     recognised by the .idx magic; the path is the prefix or either file. One stream, no splits.
// Every error about the file (missing, unknown format, truncated, wrong version, missing split) is
// a usage Error (exit code 2) that names the file and says what to do.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace switchyard::data {

class TokenSource {
 public:
  virtual ~TokenSource() = default;
  // Number of tokens in the stream.
  virtual int64_t size() const = 0;
  // Copies tokens [begin, begin+count) into out. Needs 0 <= begin, begin+count <= size() (an
  // internal error otherwise). Stored values above INT32_MAX are a usage error naming the file
  // and position; values at or above the model's vocabulary are checked by the sampler.
  virtual void read(int64_t begin, int64_t count, int32_t* out) const = 0;
  // Short human-readable name for messages, naming the file (and the split for HDF5), e.g.
  // "data/tiny.h5 ('train' split)" or "data/fineweb_train_000001.bin (llm.c shard)".
  virtual std::string describe() const = 0;
  // Vocabulary size recorded in the file; 0 if the format does not record it (llm.c).
  virtual int64_t vocab_hint() const = 0;
  // The file the stream is read from.
  virtual const std::string& path() const = 0;
  // Token offsets of its documents, D + 1 entries 0, ..., size(): document d = tokens
  // [off[d], off[d+1]). Empty when the format keeps no document index (llm.c shards).
  virtual std::vector<int64_t> doc_offsets() const { return {}; }
};

enum class TokenFileFormat { hdf5, llmc, megatron, unknown };

// Looks at the first bytes: a Megatron index magic "MMIDIDX\0\0" in `path` (PREFIX.idx), in
// PREFIX.idx next to `path` = PREFIX.bin, or in `path`.idx when no file `path` exists (a prefix);
// else in `path` itself the HDF5 signature "\x89HDF\r\n\x1a\n" or an llm.c magic (20240520 /
// 20240801 as little-endian int32). A missing or unreadable file is a usage error.
TokenFileFormat detect_token_file_format(const std::string& path);

// Opens `split` ("train" or "valid") of the token file at `path`. An llm.c shard and a Megatron
// dataset have no splits: they are read whole whatever the split (use a separate shard or dataset
// for validation). HDF5 files must contain the split and it must not be empty.
std::unique_ptr<TokenSource> open_token_source(const std::string& path, const std::string& split);

// Whether the file holds a non-empty split of that name, without throwing for a missing split
// (still throws for a missing or malformed file). For an llm.c shard and a Megatron dataset (no
// splits): true only for "train", so a trainer never evaluates on its training data by accident.
bool token_file_has_split(const std::string& path, const std::string& split);

}  // namespace switchyard::data
