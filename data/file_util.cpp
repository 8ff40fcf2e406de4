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

std::string temp_path_next_to(const std::string& path) {
  static std::atomic<int64_t> counter{0};
  return fmt::format("{}.tmp-{}-{}", path, static_cast<long>(::getpid()), counter++);
}

void rename_into_place(const std::string& tmp, const std::string& path) {
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    std::error_code ec;
    fs::remove(tmp, ec);
    throw_usage("cannot rename {} to {}: {}", tmp, path, std::strerror(e));
  }
}

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
                "or point the data path at an existing llm.c .bin shard", path);
  }
  if (fs::is_directory(st)) {
    throw_usage("{} is a folder, not a token file; give the HDF5 file written by `switchyard prepare` "
                "or an llm.c .bin shard", path);
  }
  if (!fs::is_regular_file(st)) throw_usage("{} is not a regular file", path);
}

}  // namespace switchyard::data
