// data/samples.h: what a training sample is under data.sample: document.
//
// A sample is a document of a token source, or, for a document longer than seq_len + 1 tokens, one
// chunk of it: chunk c = tokens [off + c*seq_len, min(off + c*seq_len + seq_len + 1, end)), so
// consecutive chunks share one token and every target of the document is in exactly one chunk. A
// sample of n tokens trains n - 1 positions (inputs [0, n-1), targets [1, n)); pieces shorter
// than 2 tokens are not samples. Samples are numbered source by source (a blend: data.train's
// order), document by document.
//
// Memory: 12 bytes per sample and 8 per document (a million documents: ~20 MB), nothing else;
// tokens are read when a sample is drawn.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/token_source.h"

namespace switchyard::data {

struct SampleSpan {
  int source = 0;      // index into the sources the index was built from
  int64_t begin = 0;   // first token in that source
  int64_t length = 0;  // tokens, 2 .. seq_len + 1
};

class SampleIndex {
 public:
  // Usage errors naming the file: a source without a document index (an llm.c shard: use
  // data.sample: window), a source with no sample (no document of 2 tokens or more). Internal
  // errors: no source, seq_len < 1. The sources must outlive the index.
  SampleIndex(const std::vector<const TokenSource*>& sources, int64_t seq_len);

  int64_t size() const { return static_cast<int64_t>(begin_.size()); }
  int sources() const { return static_cast<int>(first_sample_.size()) - 1; }
  SampleSpan span(int64_t s) const;
  // The document of sample s, numbered within its source (the token file's own numbering).
  int64_t document(int64_t s) const;
  // Samples [first_sample(i), first_sample(i + 1)) come from source i.
  int64_t first_sample(int source) const { return first_sample_[static_cast<size_t>(source)]; }
  int64_t seq_len() const { return seq_len_; }

 private:
  int64_t seq_len_;
  std::vector<int64_t> begin_;   // [S] first token
  std::vector<int32_t> length_;  // [S]
  std::vector<int64_t> first_sample_;          // [sources + 1]
  std::vector<std::vector<int64_t>> doc_first_;  // per source, [D + 1]: first sample of each document
};

}  // namespace switchyard::data
