// data/megatron_writer.cpp: MegatronDatasetWriter (data/megatron_dataset.h).
#include "data/megatron_dataset.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/formats/durable.h"
#include "data/file_util.h"

namespace switchyard::data {

int megatron_dtype_for_vocab(int64_t vocab_size) {
  return vocab_size <= 65536 ? megatron_dtype_uint16 : megatron_dtype_int32;
}

MegatronDatasetWriter::MegatronDatasetWriter(const std::string& prefix, int dtype_code)
    : prefix_(prefix), dtype_code_(dtype_code) {
  if (dtype_code != megatron_dtype_uint16 && dtype_code != megatron_dtype_int32) {
    throw_usage("{}: the Megatron writer writes uint16 (code 8) or int32 (code 4) tokens, not {} (code {})",
                prefix, megatron_dtype_name(dtype_code), dtype_code);
  }
  const std::string bin = prefix + ".bin";
  create_parent_dirs(bin);
  tmp_bin_ = core::formats::temp_path_next_to(bin);
  bin_ = std::fopen(tmp_bin_.c_str(), "wb");
  if (!bin_) {
    throw_usage("{}: cannot create {}: {} (is the folder writable?)", bin, tmp_bin_, std::strerror(errno));
  }
}

MegatronDatasetWriter::~MegatronDatasetWriter() {
  if (bin_) std::fclose(bin_);
  if (!finished_) {
    std::error_code ec;
    std::filesystem::remove(tmp_bin_, ec);
  }
}

void MegatronDatasetWriter::append(const int32_t* tokens, int64_t n) {
  SY_CHECK(!finished_ && n >= 0, "append of {} tokens to {} (finished: {})", n, prefix_, finished_);
  const int64_t max_token = dtype_code_ == megatron_dtype_uint16 ? 65535 : std::numeric_limits<int32_t>::max();
  for (int64_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] > max_token) {
      throw_usage("{}: token {} does not fit the dataset's {} tokens", prefix_, tokens[i],
                  megatron_dtype_name(dtype_code_));
    }
  }
  if (open_tokens_ + n > std::numeric_limits<int32_t>::max()) {
    throw_usage("{}: a document of more than {} tokens does not fit a Megatron sequence length (int32)", prefix_,
                std::numeric_limits<int32_t>::max());
  }
  bool ok = true;
  if (dtype_code_ == megatron_dtype_uint16) {
    std::vector<uint16_t> b(tokens, tokens + n);
    ok = std::fwrite(b.data(), 2, b.size(), bin_) == b.size();
  } else {
    ok = std::fwrite(tokens, 4, static_cast<size_t>(n), bin_) == static_cast<size_t>(n);
  }
  if (!ok) {
    throw_usage("{}.bin: writing failed: {}{}", prefix_, std::strerror(errno),
                errno == ENOSPC ? " (free disk space and run again)" : "");
  }
  open_tokens_ += n;
  tokens_ += n;
}

void MegatronDatasetWriter::end_document() {
  SY_CHECK(!finished_, "end_document on the finished {}", prefix_);
  lengths_.push_back(static_cast<int32_t>(open_tokens_));
  open_tokens_ = 0;
}

void MegatronDatasetWriter::finish() {
  SY_CHECK(!finished_, "finish called twice on {}", prefix_);
  if (open_tokens_ > 0) end_document();
  if (lengths_.empty() || tokens_ == 0) {
    throw_usage("{}: no tokens to write; a Megatron dataset must not be empty", prefix_);
  }
  const std::string bin = prefix_ + ".bin", idx = prefix_ + ".idx";
  const int err = std::fflush(bin_) != 0 ? errno : 0;
  const int close_err = std::fclose(bin_) != 0 ? errno : 0;
  bin_ = nullptr;
  if (err || close_err) {
    throw_usage("{}: writing failed: {}", bin, std::strerror(err ? err : close_err));
  }
  core::formats::fsync_path(tmp_bin_, /*directory=*/false);  // the tokens on disk before the name
  core::formats::rename_durable(tmp_bin_, bin);
  finished_ = true;

  // The index, last: header, lengths, byte pointers, doc_idx 0..D (one sequence per document).
  const int64_t s = static_cast<int64_t>(lengths_.size());
  const int64_t item = megatron_dtype_bytes(dtype_code_);
  std::vector<int64_t> pointers(static_cast<size_t>(s)), doc_idx(static_cast<size_t>(s + 1));
  int64_t at = 0;
  for (int64_t i = 0; i < s; ++i) {
    pointers[static_cast<size_t>(i)] = at;
    at += int64_t{lengths_[static_cast<size_t>(i)]} * item;
    doc_idx[static_cast<size_t>(i)] = i;
  }
  doc_idx.back() = s;
  core::formats::write_file_durable(idx, [&](std::FILE* f) {
    const uint64_t version = kMegatronVersion, count = static_cast<uint64_t>(s), entries = count + 1;
    const auto code = static_cast<uint8_t>(dtype_code_);
    return std::fwrite(kMegatronMagic, 1, 9, f) == 9 && std::fwrite(&version, 8, 1, f) == 1 &&
           std::fwrite(&code, 1, 1, f) == 1 && std::fwrite(&count, 8, 1, f) == 1 &&
           std::fwrite(&entries, 8, 1, f) == 1 &&
           std::fwrite(lengths_.data(), 4, lengths_.size(), f) == lengths_.size() &&
           std::fwrite(pointers.data(), 8, pointers.size(), f) == pointers.size() &&
           std::fwrite(doc_idx.data(), 8, doc_idx.size(), f) == doc_idx.size();
  });
}

}  // namespace switchyard::data
