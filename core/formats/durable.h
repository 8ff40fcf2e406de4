// core/formats/durable.h: the one protocol for every file Switchyard writes. The bytes go to a
// temporary next to the final name (same folder, so the rename is atomic), are flushed and fsynced,
// the temporary is renamed over the final name and the folder is fsynced. A reader never sees half
// a file, and a crash or power loss after the rename keeps the whole one. A failure removes the
// temporary and is a usage Error naming the file (and a full disk, when that was the cause).
#pragma once

#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>

namespace switchyard::core::formats {

// A temporary name next to `path`: "<path>.tmp-<pid>-<n>" (n counts up within the process).
std::string temp_path_next_to(const std::string& path);
// fsync of a file or (directory = true) a folder.
void fsync_path(const std::filesystem::path& p, bool directory);
// Renames `from` over `to` (a file or a folder), then fsyncs the folder that holds `to`.
void rename_durable(const std::filesystem::path& from, const std::filesystem::path& to);
// Writes `path` by the protocol above; `write` writes the bytes to the open temporary and returns
// false when a write failed.
void write_file_durable(const std::string& path, const std::function<bool(std::FILE*)>& write);
void write_text_durable(const std::string& path, std::string_view text);

}  // namespace switchyard::core::formats
