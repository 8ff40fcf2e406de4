#include "launch/data_checkpoint.h"

#include <hdf5.h>

#include <algorithm>
#include <filesystem>
#include <vector>

#include "core/error.h"
#include "core/formats/crc32c.h"
#include "core/formats/durable.h"
#include "core/formats/hdf5.h"

namespace switchyard::launch {
namespace fs = std::filesystem;
using core::formats::H5Handle;
using core::formats::h5_check;
using core::formats::h5_checked;

namespace {

constexpr const char* kFormat = "switchyard-data-state";
constexpr int64_t kVersion = 1;

void write_attr(hid_t obj, const char* name, int64_t value, const std::string& file) {
  H5Handle space = h5_checked(H5Screate(H5S_SCALAR), H5Sclose, file, "create a dataspace");
  H5Handle a = h5_checked(H5Acreate2(obj, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose, file,
                          std::string("create attribute ") + name);
  h5_check(H5Awrite(a.get(), H5T_NATIVE_INT64, &value), file, std::string("write attribute ") + name);
}

int64_t read_attr(hid_t obj, const char* name, const std::string& file) {
  H5Handle a = h5_checked(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose, file, std::string("open attribute ") + name);
  int64_t v = 0;
  h5_check(H5Aread(a.get(), H5T_NATIVE_INT64, &v), file, std::string("read attribute ") + name);
  return v;
}

template <class T>
void write_dataset(hid_t f, const char* name, const std::vector<T>& data, std::vector<hsize_t> dims, hid_t file_type,
                   hid_t mem_type, const std::string& file) {
  H5Handle space = h5_checked(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose, file,
                              std::string("create a dataspace for ") + name);
  H5Handle ds = h5_checked(H5Dcreate2(f, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                           H5Dclose, file, std::string("create dataset ") + name);
  if (!data.empty())
    h5_check(H5Dwrite(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()), file,
             std::string("write ") + name);
  const uint32_t crc = core::formats::crc32c(data.data(), data.size() * sizeof(T));
  H5Handle scalar = h5_checked(H5Screate(H5S_SCALAR), H5Sclose, file, "create a dataspace");
  H5Handle a = h5_checked(H5Acreate2(ds.get(), "crc32c", H5T_STD_U32LE, scalar.get(), H5P_DEFAULT, H5P_DEFAULT),
                          H5Aclose, file, std::string("create the crc32c attribute of ") + name);
  h5_check(H5Awrite(a.get(), H5T_NATIVE_UINT32, &crc), file, std::string("write the crc32c attribute of ") + name);
}

template <class T>
std::vector<T> read_dataset(hid_t f, const char* name, hid_t mem_type, int64_t expect, const std::string& file) {
  H5Handle ds = h5_checked(H5Dopen2(f, name, H5P_DEFAULT), H5Dclose, file, std::string("open dataset ") + name);
  H5Handle space = h5_checked(H5Dget_space(ds.get()), H5Sclose, file, std::string("read the shape of ") + name);
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  if (n < 0 || (expect >= 0 && n != expect))
    throw_usage("{}: dataset {} holds {} values, expected {}; the file is damaged or from another run", file, name,
                n, expect);
  std::vector<T> out(static_cast<size_t>(n));
  if (n > 0) h5_check(H5Dread(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()), file,
                      std::string("read ") + name);
  H5Handle a = h5_checked(H5Aopen(ds.get(), "crc32c", H5P_DEFAULT), H5Aclose, file,
                          std::string("open the crc32c attribute of ") + name);
  uint32_t stored = 0;
  h5_check(H5Aread(a.get(), H5T_NATIVE_UINT32, &stored), file, std::string("read the crc32c attribute of ") + name);
  if (stored != core::formats::crc32c(out.data(), out.size() * sizeof(T)))
    throw_usage("{}: dataset {} fails its CRC32C check (the file is damaged); resume from another checkpoint",
                file, name);
  return out;
}

}  // namespace

void save_data_state(const std::string& folder, const data::TrainData& data, parallel::Communicator& world) {
  if (!data.documents()) return;
  const data::DataState mine = data.state();
  const data::DrawState& own = mine.ranks.at(0);
  int64_t pool = static_cast<int64_t>(own.pool.size());
  world.allreduce_max(&pool, 1);
  std::vector<int64_t> send(static_cast<size_t>(pool + 1), -1), all(send.size() * static_cast<size_t>(world.size()));
  send[0] = own.drawn;
  std::copy(own.pool.begin(), own.pool.end(), send.begin() + 1);
  world.allgather(send.data(), all.data(), pool + 1);
  if (world.rank() != 0) return;
  core::formats::hdf5_prepare();
  const std::string file = (fs::path(folder) / kDataStateFile).string();
  H5Handle f = h5_checked(H5Fcreate(file.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT), H5Fclose, file,
                          "create the data state file (check that the folder is writable)");
  H5Handle root = h5_checked(H5Gopen2(f.get(), "/", H5P_DEFAULT), H5Gclose, file, "open /");
  H5Handle str = h5_checked(H5Tcopy(H5T_C_S1), H5Tclose, file, "create a string type");
  h5_check(H5Tset_size(str.get(), std::string(kFormat).size()), file, "size a string type");
  {
    H5Handle space = h5_checked(H5Screate(H5S_SCALAR), H5Sclose, file, "create a dataspace");
    H5Handle a = h5_checked(H5Acreate2(root.get(), "format", str.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
                            H5Aclose, file, "create attribute format");
    h5_check(H5Awrite(a.get(), str.get(), kFormat), file, "write attribute format");
  }
  const int64_t S = static_cast<int64_t>(mine.table.size() / 5);
  write_attr(root.get(), "version", kVersion, file);
  write_attr(root.get(), "steps", mine.steps, file);
  write_attr(root.get(), "samples", S, file);
  write_attr(root.get(), "world_size", world.size(), file);
  const auto S5 = std::vector<hsize_t>{static_cast<hsize_t>(S), 5};
  write_dataset(f.get(), "stats", mine.table, S5, H5T_STD_U16LE, H5T_NATIVE_UINT16, file);
  if (const auto& w = mine.lagged) {
    const auto S1 = std::vector<hsize_t>{static_cast<hsize_t>(S)};
    write_dataset(f.get(), "lagged_cumulative", w->cumulative, S1, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, file);
    std::vector<uint8_t> noisy = w->noisy;
    noisy.resize(static_cast<size_t>(S), 0);
    write_dataset(f.get(), "lagged_noisy", noisy, S1, H5T_STD_U8LE, H5T_NATIVE_UINT8, file);
    const std::vector<double> summary = {static_cast<double>(w->noisy_count), static_cast<double>(w->hard_count),
                                         w->min_weight, w->max_weight};
    write_dataset(f.get(), "lagged_summary", summary, {4}, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, file);
  }
  std::vector<int64_t> drawn, pools;
  for (int r = 0; r < world.size(); ++r) {
    const auto* row = all.data() + static_cast<size_t>(r) * static_cast<size_t>(pool + 1);
    drawn.push_back(row[0]);
    pools.insert(pools.end(), row + 1, row + 1 + pool);
  }
  write_dataset(f.get(), "drawn", drawn, {static_cast<hsize_t>(world.size())}, H5T_STD_I64LE, H5T_NATIVE_INT64, file);
  write_dataset(f.get(), "pool", pools, {static_cast<hsize_t>(world.size()), static_cast<hsize_t>(pool)},
                H5T_STD_I64LE, H5T_NATIVE_INT64, file);
  root.reset();
  str.reset();
  if (!f.close()) throw_usage("{}: HDF5 error: cannot close (flush) the data state file", file);
  core::formats::fsync_path(file, false);
}

data::DataState load_data_state(const std::string& folder) {
  core::formats::hdf5_prepare();
  const std::string file = (fs::path(folder) / kDataStateFile).string();
  if (!fs::exists(file))
    throw_usage("{}: missing; this checkpoint was written without data.sample: document (or is damaged); resume "
                "with the data.sample it was trained with", file);
  H5Handle f = h5_checked(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose, file, "open the data state");
  H5Handle root = h5_checked(H5Gopen2(f.get(), "/", H5P_DEFAULT), H5Gclose, file, "open /");
  if (read_attr(root.get(), "version", file) != kVersion)
    throw_usage("{}: data state version {} is not supported (this build reads version {})", file,
                read_attr(root.get(), "version", file), kVersion);
  data::DataState s;
  s.steps = read_attr(root.get(), "steps", file);
  const int64_t S = read_attr(root.get(), "samples", file);
  const int64_t world = read_attr(root.get(), "world_size", file);
  if (s.steps < 0 || S < 0 || world < 1)
    throw_usage("{}: damaged attributes (steps {}, samples {}, world_size {})", file, s.steps, S, world);
  s.table = read_dataset<uint16_t>(f.get(), "stats", H5T_NATIVE_UINT16, S * 5, file);
  if (H5Lexists(f.get(), "lagged_cumulative", H5P_DEFAULT) > 0) {
    auto w = std::make_shared<data::DrawWeights>();
    w->cumulative = read_dataset<double>(f.get(), "lagged_cumulative", H5T_NATIVE_DOUBLE, S, file);
    w->noisy = read_dataset<uint8_t>(f.get(), "lagged_noisy", H5T_NATIVE_UINT8, S, file);
    const auto summary = read_dataset<double>(f.get(), "lagged_summary", H5T_NATIVE_DOUBLE, 4, file);
    w->noisy_count = static_cast<int64_t>(summary[0]);
    w->hard_count = static_cast<int64_t>(summary[1]);
    w->min_weight = static_cast<float>(summary[2]);
    w->max_weight = static_cast<float>(summary[3]);
    s.lagged = std::move(w);
  }
  const auto drawn = read_dataset<int64_t>(f.get(), "drawn", H5T_NATIVE_INT64, world, file);
  const auto pools = read_dataset<int64_t>(f.get(), "pool", H5T_NATIVE_INT64, -1, file);
  if (pools.size() % static_cast<size_t>(world) != 0)
    throw_usage("{}: dataset pool holds {} values for {} ranks; the file is damaged", file, pools.size(), world);
  const size_t P = pools.size() / static_cast<size_t>(world);
  for (int64_t r = 0; r < world; ++r) {
    data::DrawState d;
    d.drawn = drawn[static_cast<size_t>(r)];
    for (size_t i = 0; i < P; ++i)
      if (const int64_t v = pools[static_cast<size_t>(r) * P + i]; v >= 0) d.pool.push_back(v);
    s.ranks.push_back(std::move(d));
  }
  return s;
}

}  // namespace switchyard::launch
