#include "data/prepare.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <set>
#include <system_error>

#include "core/error.h"
#include "data/hdf5_tokens.h"
#include "data/megatron_dataset.h"

namespace switchyard::data {

namespace fs = std::filesystem;

uint64_t fnv1a64(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

bool is_text_document(const std::string& bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c == 0) return false;
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;  // continuation byte, overlong lead (C0, C1) or F5..FF
    }
    if (i + static_cast<size_t>(len) > n) return false;
    for (int k = 1; k < len; ++k) {
      const unsigned char d = p[i + static_cast<size_t>(k)];
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return false;  // overlong
    if (cp >= 0xD800 && cp <= 0xDFFF) return false;                            // surrogate
    if (cp > 0x10FFFF) return false;
    i += static_cast<size_t>(len);
  }
  return true;
}

std::string PrepareStats::summary(const std::string& output) const {
  std::string s = fmt::format("wrote {}: {} documents (train {} / {} tokens, valid {} / {} tokens)", output,
                              documents(), documents_train, tokens_train, documents_valid, tokens_valid);
  if (skipped() > 0) {
    s += fmt::format("; skipped {} binary, {} empty, {} other", skipped_binary, skipped_empty, skipped_other);
  }
  return s;
}

namespace {

struct Candidate {
  fs::path path;
  std::string rel;  // '/'-separated, relative to its input directory
};

struct Walker {
  const PrepareOptions& options;
  PrepareStats& stats;
  std::set<fs::path> visited_dirs;  // canonical

  void skip(const fs::path& p, const char* reason, int64_t& counter) {
    counter += 1;
    if (options.on_skip) options.on_skip(p.string(), reason);
  }

  void walk(const fs::path& dir, const fs::path& root, std::vector<Candidate>& out) {
    std::error_code ec;
    fs::path canon = fs::canonical(dir, ec);
    if (ec) {
      stats.files_seen += 1;
      skip(dir, "unreadable", stats.skipped_other);
      return;
    }
    if (!visited_dirs.insert(canon).second) return;  // symlink loop or a folder reached twice
    fs::directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec);
    if (ec) {
      stats.files_seen += 1;
      skip(dir, "unreadable", stats.skipped_other);
      return;
    }
    std::vector<fs::path> entries;
    for (; it != fs::directory_iterator(); it.increment(ec)) {
      if (ec) break;
      entries.push_back(it->path());
    }
    if (ec) {
      stats.files_seen += 1;
      skip(dir, "unreadable", stats.skipped_other);
    }
    std::sort(entries.begin(), entries.end());
    for (const fs::path& p : entries) {
      std::error_code sec;
      fs::file_status st = fs::status(p, sec);  // follows symlinks
      if (!sec && fs::is_directory(st)) {
        walk(p, root, out);
        continue;
      }
      stats.files_seen += 1;
      if (sec || !fs::is_regular_file(st)) {
        skip(p, "not a regular file", stats.skipped_other);
        continue;
      }
      out.push_back({p, p.lexically_relative(root).generic_string()});
    }
  }
};

bool read_whole_file(const fs::path& p, std::string& out) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return false;
  out.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return !in.bad();
}

// The writers of one output format: the HDF5 file, or the Megatron train and valid datasets.
struct Sink {
  std::unique_ptr<Hdf5TokenWriter> hdf5;
  std::unique_ptr<MegatronDatasetWriter> train, valid;

  MegatronDatasetWriter& megatron(const std::string& split) { return split == "valid" ? *valid : *train; }
  void append(const std::string& split, const int32_t* t, int64_t n) {
    if (hdf5) hdf5->append(split, t, n);
    else megatron(split).append(t, n);
  }
  void end_document(const std::string& split) {
    if (hdf5) hdf5->end_document(split);
    else megatron(split).end_document();
  }
  void finish() {
    if (hdf5) return hdf5->finish();
    train->finish();
    if (valid) valid->finish();
  }
};

void write_document(Sink& w, const std::string& split, const std::string& bytes) {
  constexpr size_t kChunk = 1 << 16;
  std::vector<int32_t> buf;
  buf.reserve(std::min(bytes.size(), kChunk) + 1);
  for (size_t i = 0; i < bytes.size(); i += kChunk) {
    const size_t m = std::min(kChunk, bytes.size() - i);
    buf.clear();
    for (size_t k = 0; k < m; ++k) buf.push_back(static_cast<unsigned char>(bytes[i + k]));
    w.append(split, buf.data(), static_cast<int64_t>(buf.size()));
  }
  const int32_t eod = 0;
  w.append(split, &eod, 1);
  w.end_document(split);
}

std::string megatron_prefix_of_output(const std::string& output) {
  const fs::path p(output);
  return p.extension() == ".bin" || p.extension() == ".idx" ? fs::path(p).replace_extension().string() : output;
}

}  // namespace

std::vector<std::string> prepare_output_files(const std::string& output, PrepareFormat format,
                                              double valid_fraction) {
  if (format == PrepareFormat::hdf5) return {output};
  const std::string prefix = megatron_prefix_of_output(output);
  std::vector<std::string> files = {prefix + ".bin", prefix + ".idx"};
  if (valid_fraction > 0) files.insert(files.end(), {prefix + "_valid.bin", prefix + "_valid.idx"});
  return files;
}

PrepareStats prepare_corpus(const std::vector<std::string>& inputs, const std::string& output,
                            double valid_fraction, const PrepareOptions& options) {
  if (!(valid_fraction >= 0.0 && valid_fraction < 1.0)) {
    throw_usage("validation fraction {} must be in [0, 1)", valid_fraction);
  }
  if (inputs.empty()) throw_usage("prepare: no input files or folders given");
  if (output.empty()) throw_usage("prepare: no output file given");
  PrepareStats stats;
  Walker walker{options, stats, {}};

  // 1. List the candidate files: inputs in order, each directory's files sorted by relative path.
  std::vector<Candidate> candidates;
  for (const std::string& in : inputs) {
    std::error_code ec;
    fs::file_status st = fs::status(in, ec);
    if (ec || !fs::exists(st)) throw_usage("prepare: input {} does not exist", in);
    if (fs::is_directory(st)) {
      std::vector<Candidate> found;
      walker.walk(in, in, found);
      std::sort(found.begin(), found.end(), [](const Candidate& a, const Candidate& b) { return a.rel < b.rel; });
      candidates.insert(candidates.end(), found.begin(), found.end());
    } else if (fs::is_regular_file(st)) {
      stats.files_seen += 1;
      // a file named directly is keyed by the path as given: many inputs can share a file name
      // (every /usr/share/doc/*/copyright), and the split must still spread them
      candidates.push_back({fs::path(in), fs::path(in).lexically_normal().generic_string()});
    } else {
      throw_usage("prepare: input {} is neither a file nor a folder", in);
    }
  }

  // 2. Read, classify and write. The last document is held back so that it can move to an
  //    otherwise empty split at the end.
  std::set<fs::path> outputs;  // canonical; never read as documents
  for (const std::string& f : prepare_output_files(output, options.format, valid_fraction)) {
    std::error_code oec;
    fs::path c = fs::weakly_canonical(f, oec);
    if (!oec) outputs.insert(c);
  }
  std::set<fs::path> seen_files;
  Sink writer;
  const bool megatron = options.format == PrepareFormat::megatron;
  if (megatron) {
    const auto files = prepare_output_files(output, options.format, valid_fraction);
    const auto prefix = [](const std::string& bin) { return bin.substr(0, bin.size() - 4); };
    const int dtype = megatron_dtype_for_vocab(256);
    writer.train = std::make_unique<MegatronDatasetWriter>(prefix(files[0]), dtype);
    if (files.size() > 2) writer.valid = std::make_unique<MegatronDatasetWriter>(prefix(files[2]), dtype);
  } else {
    writer.hdf5 = std::make_unique<Hdf5TokenWriter>(output, 256, Hdf5TokenWriter::Options{});
  }
  const double threshold = valid_fraction * 1000.0;
  struct Pending {
    std::string bytes;
    std::string split;
  };
  std::optional<Pending> pending;
  auto commit = [&](Pending& d) {
    write_document(writer, d.split, d.bytes);
    const int64_t n = static_cast<int64_t>(d.bytes.size()) + 1;
    if (d.split == "valid") {
      stats.documents_valid += 1;
      stats.tokens_valid += n;
    } else {
      stats.documents_train += 1;
      stats.tokens_train += n;
    }
    stats.bytes_read += static_cast<int64_t>(d.bytes.size());
  };
  int64_t assigned_train = 0, assigned_valid = 0;
  for (const Candidate& c : candidates) {
    std::error_code ec;
    fs::path canon = fs::canonical(c.path, ec);
    if (ec) {
      walker.skip(c.path, "unreadable", stats.skipped_other);
      continue;
    }
    if (outputs.count(canon)) {
      walker.skip(c.path, "output", stats.skipped_other);
      continue;
    }
    if (!seen_files.insert(canon).second) {
      walker.skip(c.path, "duplicate", stats.skipped_other);
      continue;
    }
    Pending d;
    if (!read_whole_file(c.path, d.bytes)) {
      walker.skip(c.path, "unreadable", stats.skipped_other);
      continue;
    }
    if (d.bytes.empty()) {
      walker.skip(c.path, "empty", stats.skipped_empty);
      continue;
    }
    if (!is_text_document(d.bytes)) {
      walker.skip(c.path, "binary", stats.skipped_binary);
      continue;
    }
    const bool valid = static_cast<double>(fnv1a64(c.rel) % 1000) < threshold;
    d.split = valid ? "valid" : "train";
    (valid ? assigned_valid : assigned_train) += 1;
    if (pending) commit(*pending);
    pending = std::move(d);
  }
  if (!pending) {
    throw_usage("prepare: no text documents found in the inputs ({} files seen: {} binary, {} empty, {} other "
                "skipped)", stats.files_seen, stats.skipped_binary, stats.skipped_empty, stats.skipped_other);
  }
  if (megatron && valid_fraction > 0 && assigned_train + assigned_valid < 2) {
    throw_usage("prepare --format megatron: only one text document, but --valid-fraction {} needs one for {} "
                "as well; pass --valid-fraction 0 or give more documents", valid_fraction,
                prepare_output_files(output, options.format, valid_fraction)[3]);
  }
  if (valid_fraction > 0 && assigned_train + assigned_valid >= 2) {
    if (assigned_valid == 0) pending->split = "valid";
    if (assigned_train == 0) pending->split = "train";
  }
  commit(*pending);
  writer.finish();
  return stats;
}

}  // namespace switchyard::data
