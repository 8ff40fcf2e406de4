// launch/checkpoint.cpp: see checkpoint.h for the format and the atomicity protocol.
#include "launch/checkpoint.h"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <array>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/formats/crc32c.h"
#include "core/formats/durable.h"
#include "core/formats/hdf5.h"
#include "core/params.h"
#include "launch/data_checkpoint.h"
#include "launch/outputs.h"
#include "launch/plan.h"
#include "parallel/watchdog.h"

namespace switchyard::launch {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kFormat = "switchyard-checkpoint";
constexpr int kVersion = 1;
constexpr std::array<const char*, 3> kGroups = {"param", "exp_avg", "exp_avg_sq"};

// ---- checksums: core/formats/crc32c.h ----
using core::formats::crc32c;

// ---- HDF5: core/formats/hdf5.h ----
using core::formats::disk_full_note;
using core::formats::H5Handle;
using core::formats::h5_check;
using core::formats::h5_checked;

// ---- durable files: core/formats/durable.h ----
using core::formats::fsync_path;
using core::formats::rename_durable;
using core::formats::write_text_durable;

// The ranks of a save wait for each other between its phases (watched: parallel/watchdog.h).
void save_barrier(parallel::Communicator& world) {
  const parallel::WaitScope wait("a checkpoint save (a barrier between its phases)");
  world.barrier();
}

// Test hook (SWITCHYARD_TEST_HOLD_SAVE=STEP:POINT): the save of that step stops at that point
// until the process is killed, so a test kills it exactly there, whatever the machine's load.
void test_hold(int64_t step, const char* point) {
  const char* hold = std::getenv("SWITCHYARD_TEST_HOLD_SAVE");
  if (!hold || fmt::format("{}:{}", step, point) != hold) return;
  for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

std::string file_name_of_rank(int rank) { return fmt::format("rank-{:05d}.h5", rank); }

// step number of a complete checkpoint folder name "step-NNNNNN", else -1
int64_t step_of_folder(const std::string& name) {
  if (name.size() <= 5 || name.rfind("step-", 0) != 0) return -1;
  const std::string digits = name.substr(5);
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) return -1;
  return std::stoll(digits);
}

// When a complete checkpoint folder was saved (its manifest's saved_at_ns; 0 for manifests older
// than that field, or unreadable ones).
int64_t saved_at(const fs::path& folder) {
  std::ifstream f(folder / "manifest.json");
  const json man = json::parse(f, nullptr, false);
  return !man.is_discarded() && man.is_object() ? man.value("saved_at_ns", int64_t{0}) : 0;
}

// Removes temporary folders of saves that never finished (another pid: a killed job), and complete
// checkpoints beyond the keep_last most recently saved (save order, not step order: a run resumed
// from an earlier step saves lower steps than an abandoned later one). `own` (just saved) stays.
void prune(const fs::path& root, int64_t keep_last, const std::string& own_tmp, const std::string& own) {
  std::vector<std::tuple<int64_t, int64_t, fs::path>> complete;  // (saved at, step, folder)
  for (const auto& e : fs::directory_iterator(root)) {
    if (!e.is_directory()) continue;
    const std::string name = e.path().filename().string();
    if (name.rfind("step-", 0) == 0 && name.find(".tmp-") != std::string::npos && name != own_tmp) {
      std::error_code ec;
      fs::remove_all(e.path(), ec);
    } else if (const int64_t s = step_of_folder(name); s >= 0 && name != own) {
      complete.emplace_back(saved_at(e.path()), s, e.path());
    }
  }
  std::sort(complete.rbegin(), complete.rend());  // most recent first
  for (size_t i = static_cast<size_t>(std::max<int64_t>(keep_last - 1, 0)); i < complete.size(); ++i) {
    std::error_code ec;
    fs::remove_all(std::get<2>(complete[i]), ec);
  }
}

// This rank's tensors into `path`: its experts, and every dense tensor when `dense`.
void write_rank_file(const fs::path& path, const core::ParamTable& table, bool dense,
                     const std::array<const float*, 3>& arenas) {
  core::formats::hdf5_prepare();
  const std::string file = path.string();
  H5Handle f = h5_checked(H5Fcreate(file.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT), H5Fclose, file,
                       "create the checkpoint file (check that the folder is writable)");
  for (size_t g = 0; g < kGroups.size(); ++g) {
    H5Handle grp = h5_checked(H5Gcreate2(f.get(), kGroups[g], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose,
                           file, fmt::format("create group {}", kGroups[g]));
    for (const auto& p : table.specs()) {
      if (p.kind != core::ParamKind::expert && !dense) continue;
      const std::string what = fmt::format("{}/{}", kGroups[g], p.name);
      std::vector<hsize_t> dims(p.shape.begin(), p.shape.end());
      H5Handle space = h5_checked(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose,
                               file, "create a dataspace for " + what);
      H5Handle ds = h5_checked(H5Dcreate2(grp.get(), p.name.c_str(), H5T_IEEE_F32LE, space.get(), H5P_DEFAULT,
                                       H5P_DEFAULT, H5P_DEFAULT),
                            H5Dclose, file, "create dataset " + what);
      const float* data = arenas[g] + p.offset;
      h5_check(H5Dwrite(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), file, "write " + what);
      const uint32_t crc = crc32c(data, sizeof(float) * static_cast<size_t>(p.numel));
      H5Handle scalar = h5_checked(H5Screate(H5S_SCALAR), H5Sclose, file, "create a dataspace");
      H5Handle attr = h5_checked(H5Acreate2(ds.get(), "crc32c", H5T_STD_U32LE, scalar.get(), H5P_DEFAULT, H5P_DEFAULT),
                              H5Aclose, file, "create the crc32c attribute of " + what);
      h5_check(H5Awrite(attr.get(), H5T_NATIVE_UINT32, &crc), file, "write the crc32c attribute of " + what);
    }
  }
  if (!f.close()) throw_usage("{}: HDF5 error: cannot close (flush) the checkpoint file", file);
  fsync_path(path, false);
}

json make_manifest(int64_t step, int64_t steps_taken, const core::ExperimentConfig& cfg, int world,
                   const optim::LossScalerState* ls, const std::vector<float>& selection_bias,
                   const optim::ExpertDecay* xd) {
  const int E = static_cast<int>(cfg.parallel.expert_parallel);
  json tensors = json::object(), files = json::array();
  for (int q = 0; q < E; ++q) {
    files.push_back(file_name_of_rank(q));
    const core::ParamTable table = core::make_param_table(cfg.model, q, E);
    for (const auto& p : table.specs())
      if (p.kind == core::ParamKind::expert || q == 0)
        tensors[p.name] = {{"file", file_name_of_rank(q)}, {"shape", p.shape}};
  }
  json man = {{"format", kFormat},
          {"version", kVersion},
          {"step", step},
          {"steps_taken", steps_taken},
          {"saved_at_ns", std::chrono::duration_cast<std::chrono::nanoseconds>(
                              std::chrono::system_clock::now().time_since_epoch()).count()},
          {"layout", {{"world_size", world}, {"expert_parallel", E}}},
          {"files", files},
          {"tensors", tensors},
          {"config", core::to_yaml(cfg)}};
  if (ls)
    man["loss_scaler"] = {{"scale", ls->scale}, {"clean_steps", ls->clean_steps},
                          {"hysteresis_left", ls->hysteresis_left},
                          {"overflows_at_min", ls->overflows_at_min}, {"skipped_steps", ls->skipped_steps}};
  if (!selection_bias.empty()) man["selection_bias"] = selection_bias;  // exact: float -> JSON -> float
  if (xd && xd->dynamic()) {  // nlohmann writes doubles with round-trip precision: resumed bit for bit
    json loads = json::array();
    for (size_t i = 0; i < xd->loads().size(); i += static_cast<size_t>(xd->n_experts()))
      loads.push_back(std::vector<double>(xd->loads().begin() + static_cast<std::ptrdiff_t>(i),
                                          xd->loads().begin() + static_cast<std::ptrdiff_t>(i) + xd->n_experts()));
    man["expert_decay"] = {{"loads", loads}};
  }
  return man;
}

// The selection bias of a manifest ([MoE layers * E], empty when none was saved); `expected`:
// the size the model wants (0: none).
std::vector<float> manifest_selection_bias(const json& man, size_t expected, const std::string& manifest_path) {
  if (!man.contains("selection_bias")) return {};
  std::vector<float> b;
  try {
    b = man.at("selection_bias").get<std::vector<float>>();
  } catch (const json::exception& e) {
    throw_usage("{}: malformed selection_bias: {}", manifest_path, e.what());
  }
  if (expected != 0 && b.size() != expected)
    throw_usage("{}: selection_bias holds {} values, the model's MoE layers need {} (is this the right "
                "checkpoint?)", manifest_path, b.size(), expected);
  return b;
}

}  // namespace

std::string checkpoint_folder_name(int64_t step) { return fmt::format("step-{:06d}", step); }

std::string save_checkpoint(const std::string& root_str, int64_t step, const core::ExperimentConfig& cfg,
                            const moe::Model& model, const optim::AdamW& adamw, parallel::ProcessGroups& groups,
                            const optim::LossScalerState* scaler, const optim::ExpertDecay* expert_decay,
                            const data::TrainData* data) {
  const fs::path root(root_str);
  const int rank = groups.world().rank();
  const std::string name = checkpoint_folder_name(step);
  // rank 0 names the temporary folder (its pid) and creates it; the others learn the pid
  int64_t pid = static_cast<int64_t>(::getpid());
  {
    const parallel::WaitScope wait("a checkpoint save (the folder name from rank 0)");
    groups.world().broadcast(&pid, sizeof(pid), 0);
  }
  const std::string tmp_name = fmt::format("{}.tmp-{}", name, pid);
  const fs::path tmp = root / tmp_name, final_dir = root / name;
  if (rank == 0) {
    std::error_code ec;
    fs::create_directories(root, ec);
    if (ec) throw_usage("cannot create the checkpoint folder {}: {} (set checkpoint.dir)", root.string(), ec.message());
    if (folder_writer(root).empty()) mark_folder(root, kWriterCheckpoints, kCheckpointEntries);
    fs::remove_all(tmp, ec);
    fs::create_directory(tmp, ec);
    if (ec) throw_usage("cannot create {}: {} (check that checkpoint.dir is writable)", tmp.string(), ec.message());
  }
  save_barrier(groups.world());

  if (groups.expert_group_index() == 0) {  // world ranks 0..E-1 hold every expert once
    const int64_t n = model.num_params();
    std::vector<float> params(static_cast<size_t>(n)), m(params.size()), v(params.size());
    model.params_to_host(params.data());
    adamw.state_to_host(m.data(), v.data());
    write_rank_file(tmp / file_name_of_rank(rank), model.table(), rank == 0, {params.data(), m.data(), v.data()});
    test_hold(step, "files");  // kill point 1: files in the temporary folder, no manifest yet
  }
  if (data) save_data_state(tmp.string(), *data, groups.world().host());
  save_barrier(groups.world());

  if (rank == 0) {
    // the manifest's rename fsyncs the folder, which also makes the rank files' entries durable
    write_text_durable((tmp / "manifest.json").string(),
                       make_manifest(step, adamw.steps_taken(), cfg, groups.world().size(), scaler,
                                     model.selection_bias(), expert_decay).dump(1) + "\n");
    std::error_code ec;
    if (fs::exists(final_dir)) {  // the same step saved before (e.g. by a run resumed earlier)
      const fs::path old = root / fmt::format("{}.tmp-{}-old", name, pid);
      fs::remove_all(old, ec);
      rename_durable(final_dir, old);
    }
    rename_durable(tmp, final_dir);
    test_hold(step, "renamed");  // kill point 2: the new folder complete, `latest` not moved yet
    write_text_durable((root / "latest").string(), name + "\n");
    prune(root, cfg.checkpoint.keep_last, tmp_name, name);
  }
  save_barrier(groups.world());
  return final_dir.string();
}

std::string resolve_checkpoint(const std::string& path) {
  const fs::path p(path);
  if (fs::exists(p / "manifest.json")) return p.string();
  if (fs::exists(p / "latest")) {
    std::ifstream f(p / "latest");
    std::string name(64, '\0');
    f.read(name.data(), static_cast<std::streamsize>(name.size()));
    name.resize(static_cast<size_t>(f.gcount()));
    while (!name.empty() && (name.back() == '\n' || name.back() == '\r' || name.back() == ' ')) name.pop_back();
    if (step_of_folder(name) < 0)  // never echo what a damaged file holds
      throw_usage("{}: damaged (it should hold one line `step-NNNNNN`); pass a step-NNNNNN folder to --resume",
                  (p / "latest").string());
    const fs::path folder = p / name;
    if (name.empty() || !fs::exists(folder / "manifest.json"))
      throw_usage("{}: `latest` names '{}', which is not a complete checkpoint (no manifest.json); pass a "
                  "step-NNNNNN folder to --resume", (p / "latest").string(), name);
    return folder.string();
  }
  if (!fs::exists(p))
    throw_usage("--resume {}: no such folder (expected a checkpoint folder step-NNNNNN or a checkpoint directory "
                "with a `latest` file; nothing has been saved there yet?)", path);
  throw_usage("--resume {}: not a checkpoint (no manifest.json) nor a checkpoint directory (no `latest`)", path);
}

namespace {

// manifest.json of a checkpoint folder, its format and version checked.
json read_manifest(const fs::path& folder) {
  core::formats::hdf5_prepare();
  const fs::path manifest_path = folder / "manifest.json";
  json man;
  try {
    std::ifstream f(manifest_path);
    if (!f) throw_usage("{}: cannot open the checkpoint manifest", manifest_path.string());
    man = json::parse(f);
    if (man.value("format", "") != kFormat)
      throw_usage("{}: not a Switchyard checkpoint manifest (format '{}')", manifest_path.string(),
                  man.value("format", ""));
    if (man.at("version").get<int>() != kVersion)
      throw_usage("{}: checkpoint version {} is not supported (this build reads version {})",
                  manifest_path.string(), man.at("version").get<int>(), kVersion);
  } catch (const json::exception& e) {
    throw_usage("{}: malformed checkpoint manifest: {}", manifest_path.string(), e.what());
  }
  return man;
}

// Reads the first `n_groups` of kGroups (param, exp_avg, exp_avg_sq) of every tensor of `table` into
// dst[g] + offset, by name from the file the manifest names, verifying shapes and CRCs.
void read_tensors(const fs::path& folder, const json& man, const core::ParamTable& table, size_t n_groups,
                  const std::array<float*, 3>& dst) {
  const fs::path manifest_path = folder / "manifest.json";
  json tensors;
  try {
    tensors = man.at("tensors");
  } catch (const json::exception& e) {
    throw_usage("{}: malformed checkpoint manifest: {}", manifest_path.string(), e.what());
  }
  std::map<std::string, H5Handle> files;  // opened once each
  for (const auto& p : table.specs()) {
    if (!tensors.contains(p.name))
      throw_usage("{}: the checkpoint has no tensor {} (was it written for another model? compare model.* "
                  "of your config with the manifest's config)", manifest_path.string(), p.name);
    std::string fname;
    std::vector<int64_t> shape;
    try {
      fname = tensors.at(p.name).at("file").get<std::string>();
      shape = tensors.at(p.name).at("shape").get<std::vector<int64_t>>();
    } catch (const json::exception& e) {
      throw_usage("{}: malformed entry for tensor {}: {}", manifest_path.string(), p.name, e.what());
    }
    const std::string file = (folder / fname).string();
    if (shape != p.shape)
      throw_usage("{}: tensor {} has shape {} in the checkpoint, the model expects {} (another model config?)",
                  manifest_path.string(), p.name, json(shape).dump(), json(p.shape).dump());
    auto it = files.find(fname);
    if (it == files.end())
      it = files.emplace(fname, h5_checked(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose, file,
                                        "open the checkpoint file (missing or damaged)")).first;
    for (size_t g = 0; g < n_groups; ++g) {
      const std::string what = fmt::format("{}/{}", kGroups[g], p.name);
      H5Handle ds = h5_checked(H5Dopen2(it->second.get(), what.c_str(), H5P_DEFAULT), H5Dclose, file,
                            "open dataset " + what + " (damaged checkpoint file?)");
      H5Handle space = h5_checked(H5Dget_space(ds.get()), H5Sclose, file, "read the shape of " + what);
      const int rank = H5Sget_simple_extent_ndims(space.get());
      std::vector<hsize_t> dims(static_cast<size_t>(std::max(rank, 0)));
      if (rank >= 0) H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
      if (rank < 0 || !std::equal(dims.begin(), dims.end(), p.shape.begin(), p.shape.end(),
                                  [](hsize_t a, int64_t b) { return static_cast<int64_t>(a) == b; }))
        throw_usage("{}: dataset {} does not have the shape {} the manifest states (damaged checkpoint file)", file,
                    what, json(p.shape).dump());
      float* out_ptr = dst[g] + p.offset;
      h5_check(H5Dread(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out_ptr), file,
            "read dataset " + what + " (damaged checkpoint file?)");
      H5Handle attr = h5_checked(H5Aopen(ds.get(), "crc32c", H5P_DEFAULT), H5Aclose, file,
                              "open the crc32c attribute of " + what + " (damaged checkpoint file?)");
      uint32_t stored = 0;
      h5_check(H5Aread(attr.get(), H5T_NATIVE_UINT32, &stored), file, "read the crc32c attribute of " + what);
      const uint32_t actual = crc32c(out_ptr, sizeof(float) * static_cast<size_t>(p.numel));
      if (actual != stored)
        throw_usage("{}: checksum mismatch in dataset {} (crc32c {:08x}, stored {:08x}): the checkpoint file is "
                    "damaged; resume from an older checkpoint folder (--resume <checkpoint dir>/step-NNNNNN)",
                    file, what, actual, stored);
    }
  }
}

}  // namespace

LoadedCheckpoint load_checkpoint(const std::string& folder_str, moe::Model& model, optim::AdamW& adamw) {
  const fs::path folder(folder_str);
  const json man = read_manifest(folder);
  LoadedCheckpoint out;
  out.folder = folder.string();
  try {
    out.step = man.at("step").get<int64_t>();
    out.steps_taken = man.at("steps_taken").get<int64_t>();
    out.world_size = man.at("layout").at("world_size").get<int64_t>();
    out.expert_parallel = man.at("layout").at("expert_parallel").get<int64_t>();
    if (man.contains("loss_scaler")) {
      const json& ls = man.at("loss_scaler");
      out.has_loss_scaler = true;
      out.loss_scaler.scale = ls.at("scale").get<double>();
      out.loss_scaler.clean_steps = ls.at("clean_steps").get<int64_t>();
      out.loss_scaler.hysteresis_left = ls.at("hysteresis_left").get<int64_t>();
      out.loss_scaler.overflows_at_min = ls.at("overflows_at_min").get<int64_t>();
      out.loss_scaler.skipped_steps = ls.at("skipped_steps").get<int64_t>();
    }
    if (man.contains("expert_decay"))
      for (const auto& layer : man.at("expert_decay").at("loads"))
        for (const auto& load : layer) out.expert_decay_loads.push_back(load.get<double>());
  } catch (const json::exception& e) {
    throw_usage("{}: malformed checkpoint manifest: {}", (folder / "manifest.json").string(), e.what());
  }
  const size_t n = static_cast<size_t>(model.num_params());
  std::vector<float> params(n), m(n), v(n);
  read_tensors(folder, man, model.table(), 3, {params.data(), m.data(), v.data()});
  model.set_params_from_host(params.data());
  adamw.set_state(m.data(), v.data(), out.steps_taken);
  // the selection bias resumes exactly; a checkpoint without one (bias turned on at resume) starts it at 0
  const size_t nb = model.selection_bias().size();
  const std::vector<float> bias = manifest_selection_bias(man, nb, (folder / "manifest.json").string());
  if (nb > 0 && !bias.empty()) model.set_selection_bias(bias);
  return out;
}

std::pair<core::ExperimentConfig, int64_t> load_checkpoint_config(const std::string& folder_str) {
  const fs::path folder(folder_str);
  const json man = read_manifest(folder);
  const std::string manifest_path = (folder / "manifest.json").string();
  std::string yaml;
  int64_t step = 0;
  try {
    step = man.at("step").get<int64_t>();
    yaml = man.at("config").get<std::string>();
  } catch (const json::exception& e) {
    throw_usage("{}: malformed checkpoint manifest: {}", manifest_path, e.what());
  }
  return {core::parse_experiment_config(yaml, manifest_path + " (config)"), step};
}

CheckpointParams load_checkpoint_params(const std::string& folder_str) {
  const fs::path folder(folder_str);
  const json man = read_manifest(folder);
  const std::string manifest_path = (folder / "manifest.json").string();
  CheckpointParams out;
  out.folder = folder.string();
  std::tie(out.config, out.step) = load_checkpoint_config(folder_str);
  const core::ParamTable table = core::make_param_table(out.config.model);
  require_host_memory(4.0 * static_cast<double>(table.total()), fmt::format("the model of {}", manifest_path),
                      "is this the right checkpoint?");
  out.params.resize(static_cast<size_t>(table.total()));
  read_tensors(folder, man, table, 1, {out.params.data(), nullptr, nullptr});
  out.selection_bias = manifest_selection_bias(man, 0, manifest_path);
  return out;
}

}  // namespace switchyard::launch
