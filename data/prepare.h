// data/prepare.h: text files -> an HDF5 token file (data/hdf5_tokens.h) or a Megatron indexed
// dataset (data/megatron_dataset.h), the `switchyard prepare` command's library half.
//
// Tokenizer "bytes": tokens 1..255 are the bytes of a document, token 0 ends each document (NUL
// never occurs in text: files containing it are skipped as binary). vocab_size = 256.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace switchyard::data {

enum class PrepareFormat {
  hdf5,      // one file, splits "train" and "valid"
  megatron,  // PREFIX.bin + .idx; the validation documents in PREFIX_valid.bin + .idx (no splits)
};

struct PrepareOptions {
  PrepareFormat format = PrepareFormat::hdf5;
  // Called for every file that is not made a document: (path, reason), reason one of "binary"
  // (contains NUL or is not valid UTF-8), "empty", "unreadable", "not a regular file",
  // "duplicate" (the same file reached twice through symlinks), "output" (the output itself).
  std::function<void(const std::string& path, const std::string& reason)> on_skip;
};

struct PrepareStats {
  int64_t files_seen = 0;        // regular files and other entries found under the inputs
  int64_t documents_train = 0;
  int64_t documents_valid = 0;
  int64_t tokens_train = 0;      // end-of-document tokens included
  int64_t tokens_valid = 0;
  int64_t skipped_binary = 0;
  int64_t skipped_empty = 0;
  int64_t skipped_other = 0;     // unreadable, special files, broken links, duplicates, the output
  int64_t bytes_read = 0;        // of the documents kept

  int64_t documents() const { return documents_train + documents_valid; }
  int64_t skipped() const { return skipped_binary + skipped_empty + skipped_other; }
  // One line for the command to print, e.g.
  // "wrote out.h5: 12 documents (train 11 / 300 tokens, valid 1 / 20 tokens); skipped 1 binary, 1 empty".
  std::string summary(const std::string& output) const;
};

// The files prepare_corpus writes for `output`: hdf5: {output}; megatron: PREFIX.bin, PREFIX.idx
// and, when valid_fraction > 0, PREFIX_valid.bin, PREFIX_valid.idx, where PREFIX is `output`
// without a ".bin" / ".idx" ending. The train dataset's file comes first.
std::vector<std::string> prepare_output_files(const std::string& output, PrepareFormat format,
                                              double valid_fraction);

// FNV-1a 64-bit hash of a string (used on a document's relative path to choose its split).
uint64_t fnv1a64(const std::string& s);

// Whether a byte string is a text document: no NUL byte and valid UTF-8 (no overlong forms, no
// surrogates, nothing above U+10FFFF).
bool is_text_document(const std::string& bytes);

// `inputs`: files and directories. Directories are walked recursively, following symlinks (each
// directory is visited once, so symlink loops end); every regular file is one document. Documents
// are taken in input order, and within a directory in sorted order of their path relative to it
// (byte order of the '/'-separated path), so the output is the same on every machine.
// A document goes to the "valid" split when fnv1a64(relative path) % 1000 < valid_fraction*1000,
// where the relative path is relative to its input directory (a file given directly: its path as
// given, normalised).
// When valid_fraction > 0 and there are at least 2 documents, each split gets at least one: if
// one split would be empty, the last document moves there.
// valid_fraction must be in [0, 1). Writes `output` atomically (temporary file, then rename;
// parent folders are created). No text document at all is a usage error.
// Megatron format: a dataset has no splits, so the "valid" documents go to a second dataset,
// PREFIX_valid (prepare_output_files); with valid_fraction > 0 a single document is a usage error
// (both datasets need one, and an empty Megatron dataset is not readable).
PrepareStats prepare_corpus(const std::vector<std::string>& inputs, const std::string& output,
                            double valid_fraction, const PrepareOptions& options = {});

}  // namespace switchyard::data
