// core/formats/durable.cpp: see durable.h.
#include "core/formats/durable.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace switchyard::core::formats {

namespace fs = std::filesystem;

std::string temp_path_next_to(const std::string& path) {
  static std::atomic<int64_t> counter{0};
  return fmt::format("{}.tmp-{}-{}", path, static_cast<long>(::getpid()), counter++);
}

void fsync_path(const fs::path& p, bool directory) {
  const int fd = ::open(p.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) throw_usage("{}: cannot open to flush it to disk: {}", p.string(), std::strerror(errno));
  const int r = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (r != 0) throw_usage("{}: fsync failed: {} (is the file system full or read-only?)", p.string(), std::strerror(err));
}

void rename_durable(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::rename(from, to, ec);
  if (ec) throw_usage("cannot rename {} to {}: {}", from.string(), to.string(), ec.message());
  fsync_path(to.has_parent_path() ? to.parent_path() : fs::path("."), true);
}

void write_file_durable(const std::string& path, const std::function<bool(std::FILE*)>& write) {
  const std::string tmp = temp_path_next_to(path);
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw_usage("{}: cannot create {}: {} (is the folder writable?)", path, tmp, std::strerror(errno));
  bool ok = write(f);
  int err = ok ? 0 : errno;
  if (ok && (std::fflush(f) != 0 || ::fsync(::fileno(f)) != 0)) ok = false, err = errno;
  if (std::fclose(f) != 0 && ok) ok = false, err = errno;
  if (!ok) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw_usage("{}: writing failed: {}{}", path, std::strerror(err),
                err == ENOSPC ? " (free disk space and run again)" : "");
  }
  try {
    rename_durable(tmp, path);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
}

void write_text_durable(const std::string& path, std::string_view text) {
  write_file_durable(path, [&](std::FILE* f) { return std::fwrite(text.data(), 1, text.size(), f) == text.size(); });
}

}  // namespace switchyard::core::formats
