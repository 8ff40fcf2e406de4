#include "data/samples.h"

#include <algorithm>

#include "core/error.h"

namespace switchyard::data {

SampleIndex::SampleIndex(const std::vector<const TokenSource*>& sources, int64_t seq_len) : seq_len_(seq_len) {
  SY_CHECK(!sources.empty() && seq_len >= 1, "{} sources, seq_len {}", sources.size(), seq_len);
  first_sample_.push_back(0);
  for (const TokenSource* src : sources) {
    const std::vector<int64_t> off = src->doc_offsets();
    if (off.empty())
      throw_usage("{} has no document index (llm.c shards keep none), so data.sample: document cannot find its "
                  "documents; use data.sample: window, or prepare the corpus as HDF5 or Megatron "
                  "(switchyard prepare --format megatron)", src->describe());
    std::vector<int64_t>& firsts = doc_first_.emplace_back();
    firsts.reserve(off.size());
    const int64_t before = size();
    for (size_t d = 0; d + 1 < off.size(); ++d) {
      firsts.push_back(size());
      for (int64_t b = off[d]; off[d + 1] - b >= 2; b += seq_len) {
        begin_.push_back(b);
        length_.push_back(static_cast<int32_t>(std::min(seq_len + 1, off[d + 1] - b)));
        if (off[d + 1] - b <= seq_len + 1) break;
      }
    }
    firsts.push_back(size());
    if (size() == before)
      throw_usage("{} holds no document of 2 tokens or more, so it has no training sample; check the file",
                  src->describe());
    first_sample_.push_back(size());
  }
}

SampleSpan SampleIndex::span(int64_t s) const {
  SY_CHECK(s >= 0 && s < size(), "sample {} of {}", s, size());
  const auto it = std::upper_bound(first_sample_.begin(), first_sample_.end(), s);
  return {static_cast<int>(it - first_sample_.begin()) - 1, begin_[static_cast<size_t>(s)],
          length_[static_cast<size_t>(s)]};
}

int64_t SampleIndex::document(int64_t s) const {
  const SampleSpan sp = span(s);
  const auto& firsts = doc_first_[static_cast<size_t>(sp.source)];
  return static_cast<int64_t>(std::upper_bound(firsts.begin(), firsts.end(), s) - firsts.begin()) - 1;
}

}  // namespace switchyard::data
