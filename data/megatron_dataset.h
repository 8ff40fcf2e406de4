// data/megatron_dataset.h: Megatron-LM / GPT-NeoX indexed datasets ("MMapIndexedDataset",
// megatron/core/datasets/indexed_dataset.py): a pair PREFIX.idx + PREFIX.bin.
//
// PREFIX.idx, little-endian, packed (no padding):
//   magic "MMIDIDX\0\0" (9 bytes), version uint64 = 1, dtype code uint8,
//   S = sequence count (uint64), E = document-index entries (uint64, D + 1 for D documents),
//   sequence lengths int32 [S] (tokens), sequence pointers int64 [S] (byte offsets into .bin),
//   document index int64 [E]: 0 = doc_idx[0] <= doc_idx[1] <= ... <= doc_idx[D] = S; document d is
//   sequences [doc_idx[d], doc_idx[d+1]). Multimodal datasets append int8 modes [S] (ignored).
// PREFIX.bin: the tokens, back to back, in the dtype of the code (Megatron-Core's DType):
//   1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16.
//   (Old fairseq/GPT-NeoX readers map 7 to float64; tokenizers write 8 or 4.)
// The stream read here is the whole .bin in order. Megatron's builder writes the sequences back to
// back from byte 0 (pointer[i] = pointer[i-1] + length[i-1] * itemsize), and the reader requires it;
// the .bin must be exactly sum(lengths) * itemsize bytes.
//
// A dataset has no splits: it is one stream ("train"); give a second dataset as data.valid
// (`switchyard prepare --format megatron` writes PREFIX_valid.idx/.bin for that).
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/token_source.h"

namespace switchyard::data {

inline constexpr char kMegatronMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
inline constexpr uint64_t kMegatronVersion = 1;
inline constexpr int64_t kMegatronHeaderBytes = 34;  // magic 9, version 8, dtype 1, counts 8 + 8

enum MegatronDtype : uint8_t {
  megatron_dtype_uint8 = 1,
  megatron_dtype_int8 = 2,
  megatron_dtype_int16 = 3,
  megatron_dtype_int32 = 4,
  megatron_dtype_int64 = 5,
  megatron_dtype_float64 = 6,
  megatron_dtype_float32 = 7,
  megatron_dtype_uint16 = 8,
};
// Bytes per token of a dtype code (1..8); 0 for an unknown code.
int megatron_dtype_bytes(int code);
// "uint16" etc.; "unknown" for an unknown code.
const char* megatron_dtype_name(int code);

// The prefix of the Megatron dataset `path` names, decided by the .idx magic: `path` itself is
// PREFIX.idx with the magic; or it is PREFIX.bin and PREFIX.idx has the magic (the pair wins over
// the .bin's own first bytes); or no file `path` exists and `path`.idx has the magic. nullopt
// otherwise (a missing file is not an error here).
std::optional<std::string> megatron_prefix(const std::string& path);

// A read-only memory map of both files; everything in the index is checked on open (usage errors
// naming the file and what to do), so a dataset larger than memory is read without loading it.
class MegatronDataset final : public TokenSource {
 public:
  // `path`: the prefix, PREFIX.idx or PREFIX.bin.
  explicit MegatronDataset(const std::string& path);
  ~MegatronDataset() override = default;
  MegatronDataset(const MegatronDataset&) = delete;
  MegatronDataset& operator=(const MegatronDataset&) = delete;

  int64_t size() const override { return tokens_; }
  // Integer dtypes are copied (values outside int32 are a usage error); float dtypes must hold
  // integral values in int32's range (a usage error naming the file and position otherwise).
  void read(int64_t begin, int64_t count, int32_t* out) const override;
  std::string describe() const override;
  int64_t vocab_hint() const override { return 0; }  // the format does not record it
  const std::string& path() const override { return bin_path_; }

  const std::string& prefix() const { return prefix_; }
  const std::string& idx_path() const { return idx_path_; }
  int dtype_code() const { return dtype_code_; }
  int64_t sequences() const { return sequences_; }  // S
  int64_t documents() const { return entries_ - 1; }  // D
  // Token offsets of the documents, D + 1 entries: 0, ..., size(); document d = tokens
  // [doc_offsets[d], doc_offsets[d+1]). The shape of Hdf5TokenSource::doc_offsets. Built on demand.
  std::vector<int64_t> doc_offsets() const override;
  // The document index as stored: D + 1 sequence indices, 0, ..., S.
  std::vector<int64_t> document_index() const;
  // Token offsets of the sequences, S + 1 entries: 0, ..., size().
  std::vector<int64_t> sequence_offsets() const;

 private:
  std::string prefix_, idx_path_, bin_path_;
  int dtype_code_ = 0;
  int token_bytes_ = 0;
  int64_t sequences_ = 0, entries_ = 0, tokens_ = 0;
  // A read-only memory map, unmapped by its destructor (also when the constructor throws).
  struct Map {
    const char* data = nullptr;
    int64_t bytes = 0;
    Map() = default;
    Map(const Map&) = delete;
    Map& operator=(const Map&) = delete;
    ~Map();
  };
  Map idx_, bin_;  // the .idx and .bin maps
};

// The dtype `prepare --format megatron` writes for a vocabulary: uint16 when every id fits
// (vocab_size <= 65536), else int32.
int megatron_dtype_for_vocab(int64_t vocab_size);

// Streams documents into PREFIX.bin + PREFIX.idx, one sequence per document (doc_idx 0, 1, ..., D).
// Durable protocol (core/formats/durable.h): the .bin goes to a temporary next to it, is fsynced
// and renamed; then the .idx is written the same way, last, so a reader that finds the new index
// finds its tokens. Without finish(), the destructor removes the temporary. An existing pair is
// replaced: the caller decides whether it may be (launch's prepare: only a valid Megatron pair).
class MegatronDatasetWriter {
 public:
  MegatronDatasetWriter(const std::string& prefix, int dtype_code);  // dtype: uint16 or int32
  ~MegatronDatasetWriter();
  MegatronDatasetWriter(const MegatronDatasetWriter&) = delete;
  MegatronDatasetWriter& operator=(const MegatronDatasetWriter&) = delete;

  // Appends tokens to the current document; each must fit the dtype (a usage error otherwise).
  void append(const int32_t* tokens, int64_t n);
  // Ends the current document: one sequence of the tokens appended since the last call.
  void end_document();
  int64_t tokens() const { return tokens_; }
  int64_t documents() const { return static_cast<int64_t>(lengths_.size()); }
  // Ends an open document, writes the index and renames both files into place. No document at all
  // is a usage error (Megatron readers reject an empty dataset).
  void finish();

 private:
  std::string prefix_, tmp_bin_;
  int dtype_code_;
  std::FILE* bin_ = nullptr;
  int64_t tokens_ = 0, open_tokens_ = 0;
  std::vector<int32_t> lengths_;
  bool finished_ = false;
};

}  // namespace switchyard::data
