// launch/outputs.cpp: see outputs.h for the ownership rule.
#include "launch/outputs.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "core/error.h"
#include "core/formats/durable.h"

namespace switchyard::launch {
namespace {

constexpr const char* kMarker = ".switchyard.json";
constexpr const char* kMarkerFormat = "switchyard-owner";

struct Marker {
  std::string writer;
  std::vector<std::string> owns;
};

std::optional<Marker> read_marker(const fs::path& dir) {
  std::ifstream f(dir / kMarker);
  if (!f) return std::nullopt;
  const nlohmann::json j = nlohmann::json::parse(f, nullptr, false);
  if (j.is_discarded() || !j.is_object() || j.value("format", "") != kMarkerFormat) return std::nullopt;
  Marker m;
  m.writer = j.value("written_by", "");
  if (j.contains("owns") && j["owns"].is_array())
    for (const auto& e : j["owns"])
      if (e.is_string()) m.owns.push_back(e.get<std::string>());
  if (m.writer.empty()) return std::nullopt;
  return m;
}

bool matches(const std::string& pattern, const std::string& name) {
  if (!pattern.empty() && pattern.back() == '*') return name.rfind(pattern.substr(0, pattern.size() - 1), 0) == 0;
  return pattern == name;
}

bool owned_by(const std::vector<std::string>& patterns, const std::string& name) {
  return std::any_of(patterns.begin(), patterns.end(), [&](const std::string& p) { return matches(p, name); });
}

// A folder that holds nothing but markers and such folders (what a run that failed before its
// first write leaves): it counts as empty. Stops at the first thing it finds.
bool vacant(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_directory(fs::symlink_status(p, ec))) return false;
  for (const auto& e : fs::directory_iterator(p, ec))
    if (e.path().filename() != kMarker && !vacant(e.path())) return false;
  return true;
}

// The entries of `dir` other than its marker and vacant folders, by name, sorted.
std::vector<std::string> entries_of(const fs::path& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name != kMarker && !vacant(e.path())) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string listing(const std::vector<std::string>& names) {
  constexpr size_t kShown = 5;
  std::vector<std::string> shown(names.begin(), names.begin() + static_cast<long>(std::min(names.size(), kShown)));
  return fmt::format("{}{}", fmt::join(shown, ", "),
                     names.size() > kShown ? fmt::format(" and {} more", names.size() - kShown) : "");
}

}  // namespace

std::string folder_writer(const fs::path& dir) {
  const auto m = read_marker(dir);
  return m ? m->writer : std::string();
}

void mark_folder(const fs::path& dir, const std::string& writer, const std::vector<std::string>& entries) {
  const nlohmann::json j = {{"format", kMarkerFormat}, {"version", 1}, {"written_by", writer}, {"owns", entries}};
  core::formats::write_text_durable((dir / kMarker).string(), j.dump(1) + "\n");
}

void remove_owned(const fs::path& dir) {
  const auto m = read_marker(dir);
  if (!m) return;
  std::error_code ec;
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir, ec)) names.push_back(e.path().filename().string());
  for (const std::string& name : names) {
    if (name == kMarker || !owned_by(m->owns, name)) continue;
    const fs::path p = dir / name;
    const bool real_dir = fs::is_directory(fs::symlink_status(p, ec));
    if (real_dir && read_marker(p)) remove_owned(p);
    else fs::remove_all(p, ec);  // a link is removed, never followed
    if (ec) throw_usage("cannot remove {}: {}", p.string(), ec.message());
  }
  fs::remove(dir / kMarker, ec);
  if (fs::is_empty(dir, ec)) fs::remove(dir, ec);
}

void require_writable_folder(const fs::path& dir, const std::string& what, bool keep) {
  std::error_code ec;
  if (fs::exists(dir, ec) && !fs::is_directory(dir, ec))
    throw_usage("{} {}: exists and is not a folder; choose a folder path", what, dir.string());
  std::vector<fs::path> created;  // the folders this call makes, outermost first
  for (fs::path p = fs::absolute(dir, ec); !p.empty() && !fs::exists(p, ec); p = p.parent_path()) {
    created.insert(created.begin(), p);
    if (p == p.parent_path()) break;
  }
  fs::create_directories(dir, ec);
  if (ec) throw_usage("{} {}: cannot create it: {}; choose a writable place", what, dir.string(), ec.message());
  const fs::path probe = dir / fmt::format(".switchyard-probe-{}", ::getpid());
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  int err = fd < 0 ? errno : 0;
  if (fd >= 0) {
    if (::write(fd, "x", 1) != 1 || ::fsync(fd) != 0) err = errno ? errno : EIO;
    ::close(fd);
    ::unlink(probe.c_str());
  }
  if (!keep || err)
    for (auto it = created.rbegin(); it != created.rend(); ++it) fs::remove(*it, ec);
  if (err)
    throw_usage("{} {}: cannot write there ({}); choose a writable folder", what, dir.string(), std::strerror(err));
}

void check_output_folder(const fs::path& dir, const std::string& writer, const std::vector<std::string>& names,
                         bool overwrite, const std::string& what, const std::string& hint) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(dir, ec))) return;
  if (!fs::is_directory(dir, ec))
    throw_usage("{} {}: exists and is not a folder; choose another path", what, dir.string());
  const std::vector<std::string> there = entries_of(dir);
  if (there.empty()) return;
  if (!overwrite)
    throw_usage("{} {} is not empty (it holds {}); {}, or pass --overwrite to replace what Switchyard wrote there "
                "(other files are kept)", what, dir.string(), listing(there), hint);
  const auto m = read_marker(dir);
  if (m && m->writer != writer)
    throw_usage("{} {} was written by `{}`, not by `{}`; --overwrite replaces only a folder of the same kind: "
                "choose another folder", what, dir.string(), m->writer, writer);
  for (const std::string& name : there)
    if (owned_by(names, name) && !(m && owned_by(m->owns, name)))
      throw_usage("{} {}: {} is there and was not written by `{}`; not replacing it: move it away or choose "
                  "another folder", what, dir.string(), name, writer);
}

}  // namespace switchyard::launch
