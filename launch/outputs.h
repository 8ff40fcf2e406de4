// launch/outputs.h: the one ownership rule for the folders Switchyard writes (run folders,
// checkpoint folders, the final weights, exports), and the checks every output gets before any
// work starts.
//
// The rule: a folder Switchyard writes carries a marker file `.switchyard.json` naming the command
// that wrote it ("writer") and the entries it owns there (names; a trailing '*' matches a prefix).
// Switchyard removes or replaces only entries that a marker of its own lists: an owned entry that
// is a folder with its own marker loses only what that marker lists, recursively; one without is
// owned whole. Everything else in such a folder (a user's notes, a .git) is never touched.
//
// An output folder that already holds something is an error unless the user asks to replace it
// (--overwrite, or --resume for a run), and even then what another writer or the user put there
// stays: a name Switchyard is about to write that it does not own is an error naming the file.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace switchyard::launch {

namespace fs = std::filesystem;

// The writers, as markers name them.
inline constexpr const char* kWriterRun = "switchyard train";             // a run folder
inline constexpr const char* kWriterWeights = "switchyard train weights"; // <run>/model/
inline constexpr const char* kWriterTensorBoard = "switchyard train tensorboard";  // <run>/tensorboard/
inline constexpr const char* kWriterCheckpoints = "switchyard checkpoints";
inline constexpr const char* kWriterExport = "switchyard export";

// The marker's writer, or "" when `dir` has none (or it is unreadable).
std::string folder_writer(const fs::path& dir);

// Writes (replaces) the marker of existing folder `dir`: written by `writer`, owning `entries`.
void mark_folder(const fs::path& dir, const std::string& writer, const std::vector<std::string>& entries);

// Removes what the marker of `dir` lists (see the rule above), then the marker, then `dir` if it is
// empty. Does nothing where `dir` has no marker.
void remove_owned(const fs::path& dir);

// Creates `dir` if needed and proves it writable (a probe file created, flushed and removed);
// otherwise a usage Error naming `what` (the config key or flag that chose the folder) and `dir`.
// Without `keep`, the folders it had to create are removed again (nothing is left behind).
void require_writable_folder(const fs::path& dir, const std::string& what, bool keep = true);

// Before `writer` (re)writes output folder `dir` with the entry names `names` (entries as in
// mark_folder): missing or empty is fine (folders holding only markers count as empty); otherwise a usage Error unless `overwrite`, saying what
// `dir` holds and `hint` (another way out: "--resume to continue it", ...). With `overwrite`, a
// marker of another writer, or a name in `names` that is there but not owned by `writer`, is a
// usage Error naming it. Throws if `dir` exists and is not a folder. Changes nothing.
void check_output_folder(const fs::path& dir, const std::string& writer, const std::vector<std::string>& names,
                         bool overwrite, const std::string& what, const std::string& hint);

}  // namespace switchyard::launch
