// data/hdf5_tokens.h: Switchyard's HDF5 token file, written by `switchyard prepare`.
//
// Layout (version 1):
//   /                 attributes: format = "switchyard-tokens" (string), version = 1 (int),
//                                 vocab_size (int), tokenizer (string, "bytes" for prepare)
//   /train/tokens     uint16 [N] when vocab_size <= 65536, else uint32; chunked, deflate level 1
//   /train/doc_offsets int64 [D+1]: 0, end of document 0, ..., N. Document d is tokens
//                     [doc_offsets[d], doc_offsets[d+1]), its end-of-document token included.
//   /valid/...        the same for the validation split (may be empty: N = 0, doc_offsets = [0])
// The reader reads ranges by hyperslab (the file is never loaded whole) and checks the attributes.
// HDF5's own error printing is silenced; failures become usage errors naming the file and object.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/token_source.h"

namespace switchyard::data {

inline constexpr const char* kHdf5TokensFormat = "switchyard-tokens";
inline constexpr int64_t kHdf5TokensVersion = 1;

// One split of a token file. Holds the file and the tokens dataset open; caches nothing big.
class Hdf5TokenSource final : public TokenSource {
 public:
  // Opens `split`; usage errors for an unreadable file, missing or wrong attributes, a missing
  // split, a malformed dataset or doc_offsets inconsistent with the token count, and an empty
  // split unless allow_empty.
  Hdf5TokenSource(const std::string& path, const std::string& split, bool allow_empty = false);
  ~Hdf5TokenSource() override;

  int64_t size() const override;
  void read(int64_t begin, int64_t count, int32_t* out) const override;
  std::string describe() const override;
  int64_t vocab_hint() const override;
  const std::string& path() const override;

  const std::string& split() const;
  const std::string& tokenizer() const;
  int64_t documents() const;                  // D (doc_offsets has D+1 entries)
  std::vector<int64_t> doc_offsets() const override;   // read on demand, D+1 entries

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Lists the split groups of a token file whose attributes check out (usage errors otherwise).
std::vector<std::string> hdf5_token_splits(const std::string& path);

// Streams documents into a new token file. Nothing is visible at `path` until finish() returns:
// the file is written next to it under a temporary name and renamed. Without finish(), the
// destructor removes the temporary file.
class Hdf5TokenWriter {
 public:
  struct Options {
    std::string tokenizer = "bytes";
    std::vector<std::string> splits = {"train", "valid"};  // groups created, possibly empty
    bool compress = true;                                  // deflate level 1
    int64_t chunk_tokens = 1 << 13;  // HDF5 chunk of the tokens dataset (16 KiB of uint16)
    // For tests of the reader's checks: the format and version attributes written (an empty
    // format leaves the attribute out).
    std::string format = kHdf5TokensFormat;
    int64_t version = kHdf5TokensVersion;
  };

  Hdf5TokenWriter(const std::string& path, int64_t vocab_size);
  Hdf5TokenWriter(const std::string& path, int64_t vocab_size, const Options& options);
  ~Hdf5TokenWriter();
  Hdf5TokenWriter(const Hdf5TokenWriter&) = delete;
  Hdf5TokenWriter& operator=(const Hdf5TokenWriter&) = delete;

  // Appends tokens to the current document of `split`. Every token must be in [0, vocab_size).
  void append(const std::string& split, const int32_t* tokens, int64_t n);
  // Ends the current document of `split` (records a doc offset). An empty document is allowed.
  void end_document(const std::string& split);
  int64_t tokens(const std::string& split) const;     // appended so far
  int64_t documents(const std::string& split) const;  // ended so far
  // Flushes, ends any open document, closes and renames into place. Throws on failure.
  void finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace switchyard::data
