#include "data/hdf5_tokens.h"

#include <hdf5.h>

#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <utility>

#include "core/error.h"
#include "core/formats/durable.h"
#include "core/formats/hdf5.h"
#include "data/file_util.h"

namespace switchyard::data {

namespace {

using core::formats::has_hdf5_signature;
using core::formats::H5Handle;
using core::formats::h5_check;
using core::formats::h5_checked;

bool link_exists(hid_t loc, const std::string& name) {
  htri_t r = H5Lexists(loc, name.c_str(), H5P_DEFAULT);
  return r > 0;
}

bool attr_exists(hid_t loc, const char* name) { return H5Aexists(loc, name) > 0; }

// A root attribute that must hold a single value of class `cls` (named in messages by `article`
// and `kind`: "a string", "an integer"), opened with its type.
struct SingleAttr {
  H5Handle attr, type;
};
SingleAttr open_single_attr(hid_t loc, const char* name, H5T_class_t cls, const char* article, const char* kind,
                            const std::string& file, const std::string& what) {
  H5Handle attr = h5_checked(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose, file, what);
  H5Handle type = h5_checked(H5Aget_type(attr.get()), H5Tclose, file, what);
  if (H5Tget_class(type.get()) != cls) {
    throw_usage("{}: root attribute '{}' is not {} {}", file, name, article, kind);
  }
  H5Handle space = h5_checked(H5Aget_space(attr.get()), H5Sclose, file, what);
  if (H5Sget_simple_extent_npoints(space.get()) != 1) {
    throw_usage("{}: root attribute '{}' is not a single {}", file, name, kind);
  }
  return {std::move(attr), std::move(type)};
}

// Reads a string attribute, fixed- or variable-length (h5py writes variable-length strings).
std::string read_string_attr(hid_t loc, const char* name, const std::string& file) {
  const std::string what = fmt::format("read root attribute '{}'", name);
  const auto [attr, type] = open_single_attr(loc, name, H5T_STRING, "a", "string", file, what);
  htri_t is_var = H5Tis_variable_str(type.get());
  h5_check(is_var < 0 ? -1 : 0, file, what);
  if (is_var > 0) {
    H5Handle mem = h5_checked(H5Tcopy(H5T_C_S1), H5Tclose, file, what);
    h5_check(H5Tset_size(mem.get(), H5T_VARIABLE), file, what);
    h5_check(H5Tset_cset(mem.get(), H5Tget_cset(type.get())), file, what);
    char* s = nullptr;
    h5_check(H5Aread(attr.get(), mem.get(), &s), file, what);
    std::string out = s ? s : "";
    H5free_memory(s);
    return out;
  }
  size_t n = H5Tget_size(type.get());
  if (n == 0 || n > (1u << 20)) throw_usage("{}: root attribute '{}' has a bad string size {}", file, name, n);
  std::string buf(n, '\0');
  H5Handle mem = h5_checked(H5Tcopy(type.get()), H5Tclose, file, what);
  h5_check(H5Aread(attr.get(), mem.get(), buf.data()), file, what);
  buf.resize(std::strlen(buf.c_str()));
  return buf;
}

int64_t read_int_attr(hid_t loc, const char* name, const std::string& file) {
  const std::string what = fmt::format("read root attribute '{}'", name);
  const auto [attr, type] = open_single_attr(loc, name, H5T_INTEGER, "an", "integer", file, what);
  int64_t v = 0;
  h5_check(H5Aread(attr.get(), H5T_NATIVE_INT64, &v), file, what);
  return v;
}

void write_string_attr(hid_t loc, const char* name, const std::string& value, const std::string& file) {
  const std::string what = fmt::format("write root attribute '{}'", name);
  H5Handle type = h5_checked(H5Tcopy(H5T_C_S1), H5Tclose, file, what);
  h5_check(H5Tset_size(type.get(), std::max<size_t>(value.size(), 1)), file, what);
  h5_check(H5Tset_strpad(type.get(), H5T_STR_NULLPAD), file, what);
  h5_check(H5Tset_cset(type.get(), H5T_CSET_UTF8), file, what);
  H5Handle space = h5_checked(H5Screate(H5S_SCALAR), H5Sclose, file, what);
  H5Handle attr = h5_checked(H5Acreate2(loc, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
                          H5Aclose, file, what);
  std::string buf = value.empty() ? std::string(1, '\0') : value;
  h5_check(H5Awrite(attr.get(), type.get(), buf.data()), file, what);
}

void write_int_attr(hid_t loc, const char* name, int64_t value, const std::string& file) {
  const std::string what = fmt::format("write root attribute '{}'", name);
  H5Handle space = h5_checked(H5Screate(H5S_SCALAR), H5Sclose, file, what);
  H5Handle attr = h5_checked(H5Acreate2(loc, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                          H5Aclose, file, what);
  h5_check(H5Awrite(attr.get(), H5T_NATIVE_INT64, &value), file, what);
}

// Opens the file read-only and checks the root attributes. Returns the file handle.
struct CheckedFile {
  H5Handle file;
  int64_t vocab_size = 0;
  std::string tokenizer;
};

CheckedFile open_checked(const std::string& path) {
  core::formats::hdf5_prepare();
  require_regular_file(path);
  if (!has_hdf5_signature(path)) {
    throw_usage("{} is not an HDF5 file (no HDF5 signature at its start); make a token file with "
                "`switchyard prepare`", path);
  }
  CheckedFile cf;
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) {
    throw_usage("{}: HDF5 cannot open the file (truncated or corrupt?); re-create it with `switchyard prepare`",
                path);
  }
  cf.file = H5Handle(f, H5Fclose);
  if (!attr_exists(f, "format")) {
    throw_usage("{} is an HDF5 file but not a Switchyard token file (no root attribute 'format' = '{}'); "
                "make one with `switchyard prepare`", path, kHdf5TokensFormat);
  }
  std::string format = read_string_attr(f, "format", path);
  if (format != kHdf5TokensFormat) {
    throw_usage("{} is an HDF5 file with format '{}', not a Switchyard token file ('{}'); make one with "
                "`switchyard prepare`", path, format, kHdf5TokensFormat);
  }
  if (!attr_exists(f, "version")) throw_usage("{}: token file without a root attribute 'version'", path);
  int64_t version = read_int_attr(f, "version", path);
  if (version != kHdf5TokensVersion) {
    throw_usage("{}: token file version {}, but this build reads version {}; re-create it with this "
                "build's `switchyard prepare`", path, version, kHdf5TokensVersion);
  }
  if (!attr_exists(f, "vocab_size")) throw_usage("{}: token file without a root attribute 'vocab_size'", path);
  cf.vocab_size = read_int_attr(f, "vocab_size", path);
  if (cf.vocab_size < 1 || cf.vocab_size > (int64_t{1} << 31)) {
    throw_usage("{}: token file has an invalid vocab_size {}", path, cf.vocab_size);
  }
  if (attr_exists(f, "tokenizer")) cf.tokenizer = read_string_attr(f, "tokenizer", path);
  return cf;
}

// Reads doc_offsets[i0, i0+n) of a 1-D int64 dataset.
void read_i64_range(hid_t ds, int64_t i0, int64_t n, int64_t* out, const std::string& file,
                    const std::string& what) {
  H5Handle fspace = h5_checked(H5Dget_space(ds), H5Sclose, file, what);
  hsize_t start[1] = {static_cast<hsize_t>(i0)}, cnt[1] = {static_cast<hsize_t>(n)};
  h5_check(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start, nullptr, cnt, nullptr), file, what);
  H5Handle mspace = h5_checked(H5Screate_simple(1, cnt, nullptr), H5Sclose, file, what);
  h5_check(H5Dread(ds, H5T_NATIVE_INT64, mspace.get(), fspace.get(), H5P_DEFAULT, out), file, what);
}

int64_t dataset_length(hid_t ds, const std::string& file, const std::string& object) {
  H5Handle space = h5_checked(H5Dget_space(ds), H5Sclose, file, "get the shape of " + object);
  if (H5Sget_simple_extent_ndims(space.get()) != 1) throw_usage("{}: {} is not one-dimensional", file, object);
  hsize_t dims[1] = {0};
  h5_check(H5Sget_simple_extent_dims(space.get(), dims, nullptr) < 0 ? -1 : 0, file, "get the shape of " + object);
  return static_cast<int64_t>(dims[0]);
}

}  // namespace

// ---------------------------------------------------------------- reader

struct Hdf5TokenSource::Impl {
  std::string path;
  std::string split;
  std::string tokenizer;
  int64_t vocab_size = 0;
  int64_t n_tokens = 0;
  int64_t n_docs = 0;
  int token_bytes = 0;
  H5Handle file;
  H5Handle tokens;
  H5Handle offsets;
};

Hdf5TokenSource::Hdf5TokenSource(const std::string& path, const std::string& split, bool allow_empty)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.path = path;
  m.split = split;
  CheckedFile cf = open_checked(path);
  m.file = std::move(cf.file);
  m.vocab_size = cf.vocab_size;
  m.tokenizer = cf.tokenizer;
  hid_t f = m.file.get();
  if (split.empty() || split.find('/') != std::string::npos) {
    throw_internal("bad split name '{}' for {}", split, path);
  }
  if (!link_exists(f, split)) {
    if (split == "valid") {
      throw_usage("{} has no 'valid' split; set data.valid to a separate token file, or re-create this "
                  "one with `switchyard prepare` --valid-fraction above 0", path);
    }
    throw_usage("{} has no '{}' split; re-create it with `switchyard prepare`", path, split);
  }
  const std::string tok_name = split + "/tokens", off_name = split + "/doc_offsets";
  const std::string tok_obj = "/" + tok_name, off_obj = "/" + off_name;
  if (!link_exists(f, tok_name)) throw_usage("{}: split '{}' has no dataset {}", path, split, tok_obj);
  if (!link_exists(f, off_name)) throw_usage("{}: split '{}' has no dataset {}", path, split, off_obj);
  m.tokens = h5_checked(H5Dopen2(f, tok_name.c_str(), H5P_DEFAULT), H5Dclose, path, "open dataset " + tok_obj);
  m.offsets = h5_checked(H5Dopen2(f, off_name.c_str(), H5P_DEFAULT), H5Dclose, path, "open dataset " + off_obj);

  {
    H5Handle type = h5_checked(H5Dget_type(m.tokens.get()), H5Tclose, path, "get the type of " + tok_obj);
    size_t sz = H5Tget_size(type.get());
    if (H5Tget_class(type.get()) != H5T_INTEGER || H5Tget_sign(type.get()) != H5T_SGN_NONE ||
        (sz != 2 && sz != 4)) {
      throw_usage("{}: dataset {} must hold uint16 or uint32 tokens", path, tok_obj);
    }
    m.token_bytes = static_cast<int>(sz);
    H5Handle otype = h5_checked(H5Dget_type(m.offsets.get()), H5Tclose, path, "get the type of " + off_obj);
    if (H5Tget_class(otype.get()) != H5T_INTEGER) throw_usage("{}: dataset {} must hold integers", path, off_obj);
  }
  m.n_tokens = dataset_length(m.tokens.get(), path, tok_obj);
  const int64_t n_off = dataset_length(m.offsets.get(), path, off_obj);
  if (n_off < 1) throw_usage("{}: dataset {} is empty; it must start with 0 and end with the token count", path, off_obj);
  m.n_docs = n_off - 1;
  int64_t first = -1, last = -1;
  read_i64_range(m.offsets.get(), 0, 1, &first, path, "read " + off_obj);
  read_i64_range(m.offsets.get(), n_off - 1, 1, &last, path, "read " + off_obj);
  if (first != 0 || last != m.n_tokens) {
    throw_usage("{}: dataset {} runs from {} to {}, but it must run from 0 to the token count {}", path,
                off_obj, first, last, m.n_tokens);
  }
  if (m.n_tokens == 0 && !allow_empty) {
    throw_usage("{}: the '{}' split is empty (0 tokens){}", path, split,
                split == "valid" ? "; set data.valid to a separate token file, or re-create this one with "
                                   "`switchyard prepare` --valid-fraction above 0 from two or more documents"
                                 : "");
  }
}

Hdf5TokenSource::~Hdf5TokenSource() = default;

int64_t Hdf5TokenSource::size() const { return impl_->n_tokens; }
int64_t Hdf5TokenSource::vocab_hint() const { return impl_->vocab_size; }
const std::string& Hdf5TokenSource::path() const { return impl_->path; }
const std::string& Hdf5TokenSource::split() const { return impl_->split; }
const std::string& Hdf5TokenSource::tokenizer() const { return impl_->tokenizer; }
int64_t Hdf5TokenSource::documents() const { return impl_->n_docs; }

std::string Hdf5TokenSource::describe() const {
  return fmt::format("{} ('{}' split)", impl_->path, impl_->split);
}

void Hdf5TokenSource::read(int64_t begin, int64_t count, int32_t* out) const {
  const Impl& m = *impl_;
  SY_CHECK(begin >= 0 && count >= 0 && begin + count <= m.n_tokens, "read [{}, {}) outside {} with {} tokens",
           begin, begin + count, describe(), m.n_tokens);
  if (count == 0) return;
  core::formats::hdf5_prepare();
  const std::string what = fmt::format("read tokens [{}, {}) of /{}/tokens", begin, begin + count, m.split);
  H5Handle fspace = h5_checked(H5Dget_space(m.tokens.get()), H5Sclose, m.path, what);
  hsize_t start[1] = {static_cast<hsize_t>(begin)}, cnt[1] = {static_cast<hsize_t>(count)};
  h5_check(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start, nullptr, cnt, nullptr), m.path, what);
  H5Handle mspace = h5_checked(H5Screate_simple(1, cnt, nullptr), H5Sclose, m.path, what);
  // int32 and uint32 may alias; uint16 -> uint32 conversion is exact.
  uint32_t* u = reinterpret_cast<uint32_t*>(out);
  h5_check(H5Dread(m.tokens.get(), H5T_NATIVE_UINT32, mspace.get(), fspace.get(), H5P_DEFAULT, u), m.path, what);
  if (m.token_bytes == 4) {
    for (int64_t i = 0; i < count; ++i) {
      if (u[i] > static_cast<uint32_t>(std::numeric_limits<int32_t>::max())) {
        throw_usage("{}: token {} at position {} does not fit a 32-bit signed token id", describe(), u[i],
                    begin + i);
      }
    }
  }
}

std::vector<int64_t> Hdf5TokenSource::doc_offsets() const {
  const Impl& m = *impl_;
  core::formats::hdf5_prepare();
  std::vector<int64_t> v(static_cast<size_t>(m.n_docs + 1));
  read_i64_range(m.offsets.get(), 0, m.n_docs + 1, v.data(), m.path, "read /" + m.split + "/doc_offsets");
  return v;
}

std::vector<std::string> hdf5_token_splits(const std::string& path) {
  CheckedFile cf = open_checked(path);
  std::vector<std::string> out;
  for (const char* s : {"train", "valid"}) {
    if (link_exists(cf.file.get(), s)) out.emplace_back(s);
  }
  return out;
}

// ---------------------------------------------------------------- writer

namespace {

constexpr int64_t kFlushTokens = 1 << 20;

struct SplitState {
  std::string name;
  H5Handle group;
  H5Handle tokens;
  H5Handle offsets;
  std::vector<int64_t> pending_offsets;  // not yet written
  std::vector<uint32_t> pending_tokens;
  int64_t written_tokens = 0;
  int64_t written_offsets = 0;
  int64_t total_tokens = 0;  // written + pending
  int64_t docs = 0;
  int64_t doc_start = 0;     // first token of the open document
};

void append_1d(hid_t ds, hid_t mem_type, const void* data, int64_t old_n, int64_t n, const std::string& file,
               const std::string& what) {
  if (n == 0) return;
  hsize_t new_size[1] = {static_cast<hsize_t>(old_n + n)};
  h5_check(H5Dset_extent(ds, new_size), file, what);
  H5Handle fspace = h5_checked(H5Dget_space(ds), H5Sclose, file, what);
  hsize_t start[1] = {static_cast<hsize_t>(old_n)}, cnt[1] = {static_cast<hsize_t>(n)};
  h5_check(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start, nullptr, cnt, nullptr), file, what);
  H5Handle mspace = h5_checked(H5Screate_simple(1, cnt, nullptr), H5Sclose, file, what);
  h5_check(H5Dwrite(ds, mem_type, mspace.get(), fspace.get(), H5P_DEFAULT, data), file, what);
}

H5Handle create_extendible(hid_t loc, const char* name, hid_t file_type, int64_t chunk, bool compress,
                           const std::string& file, const std::string& object) {
  const std::string what = "create dataset " + object;
  hsize_t dims[1] = {0}, maxdims[1] = {H5S_UNLIMITED}, chunks[1] = {static_cast<hsize_t>(chunk)};
  H5Handle space = h5_checked(H5Screate_simple(1, dims, maxdims), H5Sclose, file, what);
  H5Handle dcpl = h5_checked(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, file, what);
  h5_check(H5Pset_chunk(dcpl.get(), 1, chunks), file, what);
  if (compress && H5Zfilter_avail(H5Z_FILTER_DEFLATE) > 0) {
    h5_check(H5Pset_shuffle(dcpl.get()), file, what);
    h5_check(H5Pset_deflate(dcpl.get(), 1), file, what);
  }
  return h5_checked(H5Dcreate2(loc, name, file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT), H5Dclose,
                 file, what);
}

}  // namespace

struct Hdf5TokenWriter::Impl {
  std::string path;
  std::string tmp;
  int64_t vocab_size = 0;
  Options opt;
  H5Handle file;
  std::map<std::string, SplitState> splits;
  bool finished = false;

  SplitState& get(const std::string& split) {
    auto it = splits.find(split);
    if (it == splits.end()) throw_internal("{}: token writer has no split '{}'", path, split);
    return it->second;
  }

  void flush(SplitState& s) {
    const std::string obj = "/" + s.name;
    append_1d(s.tokens.get(), H5T_NATIVE_UINT32, s.pending_tokens.data(), s.written_tokens,
              static_cast<int64_t>(s.pending_tokens.size()), tmp, "write " + obj + "/tokens");
    s.written_tokens += static_cast<int64_t>(s.pending_tokens.size());
    s.pending_tokens.clear();
    append_1d(s.offsets.get(), H5T_NATIVE_INT64, s.pending_offsets.data(), s.written_offsets,
              static_cast<int64_t>(s.pending_offsets.size()), tmp, "write " + obj + "/doc_offsets");
    s.written_offsets += static_cast<int64_t>(s.pending_offsets.size());
    s.pending_offsets.clear();
  }
};

Hdf5TokenWriter::Hdf5TokenWriter(const std::string& path, int64_t vocab_size)
    : Hdf5TokenWriter(path, vocab_size, Options{}) {}

Hdf5TokenWriter::Hdf5TokenWriter(const std::string& path, int64_t vocab_size, const Options& options)
    : impl_(std::make_unique<Impl>()) {
  core::formats::hdf5_prepare();
  Impl& m = *impl_;
  m.path = path;
  m.vocab_size = vocab_size;
  m.opt = options;
  if (vocab_size < 1 || vocab_size > (int64_t{1} << 31)) {
    throw_usage("{}: vocab_size {} is out of range [1, 2^31]", path, vocab_size);
  }
  SY_CHECK(options.chunk_tokens >= 1, "chunk_tokens {}", options.chunk_tokens);
  create_parent_dirs(path);
  m.tmp = core::formats::temp_path_next_to(path);
  hid_t f = H5Fcreate(m.tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (f < 0) throw_usage("{}: HDF5 cannot create the file (is the folder writable?)", m.tmp);
  m.file = H5Handle(f, H5Fclose);
  if (!options.format.empty()) write_string_attr(f, "format", options.format, m.tmp);
  write_int_attr(f, "version", options.version, m.tmp);
  write_int_attr(f, "vocab_size", vocab_size, m.tmp);
  write_string_attr(f, "tokenizer", options.tokenizer, m.tmp);
  const hid_t token_type = vocab_size <= 65536 ? H5T_STD_U16LE : H5T_STD_U32LE;
  for (const std::string& name : options.splits) {
    if (name.empty() || name.find('/') != std::string::npos || m.splits.count(name)) {
      throw_internal("{}: bad or repeated split name '{}'", path, name);
    }
    SplitState s;
    s.name = name;
    s.group = h5_checked(H5Gcreate2(f, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose, m.tmp,
                      "create group /" + name);
    s.tokens = create_extendible(s.group.get(), "tokens", token_type, options.chunk_tokens, options.compress,
                                 m.tmp, "/" + name + "/tokens");
    s.offsets = create_extendible(s.group.get(), "doc_offsets", H5T_STD_I64LE, 4096, options.compress, m.tmp,
                                  "/" + name + "/doc_offsets");
    s.pending_offsets.push_back(0);
    m.splits.emplace(name, std::move(s));
  }
}

Hdf5TokenWriter::~Hdf5TokenWriter() {
  if (!impl_ || impl_->finished) return;
  impl_->splits.clear();
  impl_->file.reset();
  std::error_code ec;
  std::filesystem::remove(impl_->tmp, ec);
}

void Hdf5TokenWriter::append(const std::string& split, const int32_t* tokens, int64_t n) {
  Impl& m = *impl_;
  SY_CHECK(!m.finished, "append after finish on {}", m.path);
  SplitState& s = m.get(split);
  for (int64_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= m.vocab_size) {
      throw_usage("{}: token {} at position {} of split '{}' is outside the vocabulary [0, {})", m.path,
                  tokens[i], s.total_tokens + i, split, m.vocab_size);
    }
  }
  int64_t i = 0;
  while (i < n) {
    const int64_t room = kFlushTokens - static_cast<int64_t>(s.pending_tokens.size());
    const int64_t take = std::min(room, n - i);
    s.pending_tokens.insert(s.pending_tokens.end(), tokens + i, tokens + i + take);
    i += take;
    if (static_cast<int64_t>(s.pending_tokens.size()) >= kFlushTokens) {
      core::formats::hdf5_prepare();
      m.flush(s);
    }
  }
  s.total_tokens += n;
}

void Hdf5TokenWriter::end_document(const std::string& split) {
  Impl& m = *impl_;
  SY_CHECK(!m.finished, "end_document after finish on {}", m.path);
  SplitState& s = m.get(split);
  s.pending_offsets.push_back(s.total_tokens);
  s.docs += 1;
  s.doc_start = s.total_tokens;
  if (static_cast<int64_t>(s.pending_offsets.size()) >= (1 << 16)) {
    core::formats::hdf5_prepare();
    m.flush(s);
  }
}

int64_t Hdf5TokenWriter::tokens(const std::string& split) const { return impl_->get(split).total_tokens; }
int64_t Hdf5TokenWriter::documents(const std::string& split) const { return impl_->get(split).docs; }

void Hdf5TokenWriter::finish() {
  Impl& m = *impl_;
  SY_CHECK(!m.finished, "finish called twice on {}", m.path);
  core::formats::hdf5_prepare();
  for (auto& [name, s] : m.splits) {
    if (s.total_tokens > s.doc_start) end_document(name);
    m.flush(s);
    s.offsets.reset();
    s.tokens.reset();
    s.group.reset();
  }
  if (!m.file.close()) throw_usage("{}: HDF5 error while closing (disk full?)", m.tmp);
  core::formats::fsync_path(m.tmp, /*directory=*/false);  // the data on disk before the name
  core::formats::rename_durable(m.tmp, m.path);
  m.finished = true;
}

}  // namespace switchyard::data
