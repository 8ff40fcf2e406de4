// data/file_util.h: small file helpers shared by the data writers and readers (internal).
#pragma once

#include <cstdint>
#include <string>

namespace switchyard::data {

// Creates the parent folders of `path` if needed; a failure is a usage error.
void create_parent_dirs(const std::string& path);
// Usage error naming `path` with a hint when it does not exist or is not a regular file.
void require_regular_file(const std::string& path);

}  // namespace switchyard::data
