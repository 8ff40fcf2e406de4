#include "data/file_util.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "core/error.h"

namespace switchyard::data {

namespace fs = std::filesystem;

void create_parent_dirs(const std::string& path) {
  fs::path parent = fs::path(path).parent_path();
  if (parent.empty()) return;
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) throw_usage("cannot create folder {} for {}: {}", parent.string(), path, ec.message());
}

void require_regular_file(const std::string& path) {
  std::error_code ec;
  auto st = fs::status(path, ec);
  if (ec || !fs::exists(st)) {
    throw_usage("{}: no such file; make a token file with `switchyard prepare` (text files -> HDF5) "
                "or point the data path at an existing llm.c .bin shard or Megatron dataset (PREFIX, with "
                "PREFIX.idx + PREFIX.bin)", path);
  }
  if (fs::is_directory(st)) {
    throw_usage("{} is a folder, not a token file; give the HDF5 file written by `switchyard prepare` "
                "or an llm.c .bin shard", path);
  }
  if (!fs::is_regular_file(st)) throw_usage("{} is not a regular file", path);
}

}  // namespace switchyard::data
