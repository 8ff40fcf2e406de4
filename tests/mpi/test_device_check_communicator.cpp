// tests/mpi/test_device_check_communicator.cpp: the device-discipline checker's communicator
// (parallel/device_check_communicator.h) over MPI, under mpirun (2 and 4 ranks), on buffers of a
// device-check backend: the stream-ordered calls move device memory and give MPI's results, a host
// buffer where device memory belongs (or the reverse) throws on every rank before any
// communication, host() works on host memory, an asynchronous all-reduce keeps only its own
// buffer open until wait(), and a data-parallel step (buckets started during backward) runs
// device-clean with the plain run's gradients.
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "core/backend.h"
#include "core/device_check_backend.h"
#include "launch/param_sharding.h"
#include "moe/model.h"
#include "parallel/device_check_communicator.h"
#include "parallel/mpi_communicator.h"
#include "parallel/process_groups.h"
#include "tests/mpi/communicator_testing.h"
#include "tests/unit/testing.h"

namespace switchyard::test {
namespace {

using parallel::Communicator;
using parallel::MpiCommunicator;

// An MPI world behind the checker, on the regions of a device-check CPU backend.
struct Checked {
  std::unique_ptr<core::Backend> be = core::make_device_check_backend(core::make_cpu_backend(1));
  std::shared_ptr<core::DeviceCheckRegistry> registry = core::device_check_registry(*be);
  std::unique_ptr<MpiCommunicator> mpi = MpiCommunicator::world();
  std::unique_ptr<Communicator> comm = parallel::make_device_check_communicator(*mpi, registry);

  // A device buffer holding `h` (released with the backend's registry).
  template <class T>
  T* put(const std::vector<T>& h) {
    auto* p = static_cast<T*>(be->alloc(h.size() * sizeof(T)));
    be->copy_from_host(p, h.data(), h.size() * sizeof(T));
    return p;
  }
  template <class T>
  std::vector<T> take(const T* p, size_t n) {
    std::vector<T> h(n);
    be->copy_to_host(h.data(), p, n * sizeof(T));
    return h;
  }
};

TEST(DeviceCheckCommunicator, Basics) {
  Checked c;
  EXPECT_EQ(c.comm->name(), "device-check(mpi)");
  EXPECT_EQ(c.comm->memory_space(), parallel::MemorySpace::device);
  EXPECT_EQ(c.comm->rank(), c.mpi->rank());
  EXPECT_EQ(c.comm->size(), c.mpi->size());
  EXPECT_EQ(&c.comm->host(), c.mpi.get()) << "host(): the MPI communicator itself";
  c.comm->barrier();
}

TEST(DeviceCheckCommunicator, StreamOrderedCallsOnDeviceBuffers) {
  Checked c;
  c.mpi->set_max_count(5);  // chunked MPI calls underneath
  const int N = c.comm->size(), r = c.comm->rank();
  const auto a = alltoallv_case(r, N);
  auto* send = c.put(a.send);
  auto* recv = c.put(std::vector<uint8_t>(a.want.size(), 0));
  c.comm->alltoallv(send, a.send_counts, a.send_displs, recv, a.recv_counts, a.recv_displs);
  EXPECT_EQ(c.take(recv, a.want.size()), a.want);

  std::vector<float> f(11);
  std::vector<double> d(11);
  std::vector<int64_t> i(11);
  for (int k = 0; k < 11; ++k) {
    f[k] = static_cast<float>(r + k);
    d[k] = 0.25 * (r + k);
    i[k] = (int64_t{1} << 40) * r + k;
  }
  float* fd = c.put(f);
  double* dd = c.put(d);
  int64_t* id = c.put(i);
  c.comm->allreduce_sum(fd, 11);
  c.comm->allreduce_sum(dd, 11);
  c.comm->allreduce_sum(id, 11);
  const auto fs = c.take(fd, 11);
  const auto ds = c.take(dd, 11);
  const auto is = c.take(id, 11);
  const int64_t rank_sum = int64_t{N} * (N - 1) / 2;
  for (int k = 0; k < 11; ++k) {
    EXPECT_EQ(fs[k], static_cast<float>(rank_sum + N * k));
    EXPECT_EQ(ds[k], 0.25 * static_cast<double>(rank_sum + N * k));
    EXPECT_EQ(is[k], (int64_t{1} << 40) * rank_sum + N * k);
  }

  int64_t* mine = c.put(std::vector<int64_t>{r, 10 * r});
  int64_t* all = c.put(std::vector<int64_t>(2 * N));
  c.comm->allgather(mine, all, 2);
  const auto got = c.take(all, 2 * N);
  for (int q = 0; q < N; ++q) EXPECT_EQ(got[2 * q + 1], 10 * q);
  std::vector<int64_t> to(2 * N);
  for (int q = 0; q < 2 * N; ++q) to[q] = 100 * r + q / 2;  // two values for each peer
  int64_t* send_counts = c.put(to);
  int64_t* recv_counts = c.put(std::vector<int64_t>(2 * N));
  c.comm->alltoall(send_counts, recv_counts, 2);
  const auto from = c.take(recv_counts, 2 * N);
  for (int q = 0; q < N; ++q) EXPECT_EQ(from[2 * q], 100 * q + r);
  EXPECT_FALSE(c.registry->accessible(recv)) << "regions close after each call";
}

TEST(DeviceCheckCommunicator, WrongMemoryThrowsOnEveryRankBeforeCommunicating) {
  Checked c;
  const int N = c.comm->size();
  std::vector<float> host(4, 1.f);
  std::string m = internal_error([&] { c.comm->allreduce_sum(host.data(), 4); });
  EXPECT_HAS(m, "device-check: allreduce_sum: data (0x");
  EXPECT_HAS(m, "is not device memory (a host pointer passed to a stream-ordered collective)");
  float* dev = c.put(host);
  EXPECT_HAS(internal_error([&] { c.comm->allreduce_sum(dev, 5); }), "runs past the end of its device allocation");
  auto* dev64 = c.put(std::vector<int64_t>(4));
  EXPECT_HAS(internal_error([&] { c.comm->allreduce_max(dev64, 4); }), "allreduce_max: data (");
  EXPECT_HAS(internal_error([&] { c.comm->broadcast(dev64, 8, 0); }),
             "overlaps device memory (a device pointer where host memory belongs)");
  std::vector<int64_t> host_counts(static_cast<size_t>(N), 0);
  EXPECT_HAS(internal_error([&] {
               c.comm->alltoallv(dev64, host_counts, host_counts, host.data(), host_counts, host_counts);
             }),
             "alltoallv: recv (");
  EXPECT_HAS(internal_error([&] {
               c.comm->alltoallv(dev, std::span<const int64_t>(dev64, static_cast<size_t>(N)), host_counts, dev,
                                 host_counts, host_counts);
             }),
             "alltoallv: send_counts (");
  c.comm->barrier();  // every rank threw alike and is still in step
}

TEST(DeviceCheckCommunicator, HostWorksOnHostMemory) {
  Checked c;
  const int N = c.comm->size(), r = c.comm->rank();
  Communicator& host = c.comm->host();
  EXPECT_EQ(host.memory_space(), parallel::MemorySpace::host);
  std::vector<int64_t> v = {r, -r};
  host.allreduce_sum(v.data(), 2);
  EXPECT_EQ(v[0], int64_t{N} * (N - 1) / 2);
  std::vector<int64_t> hi = {r};
  c.comm->allreduce_max(hi.data(), 1);  // host-control calls take host memory on the checker too
  EXPECT_EQ(hi[0], N - 1);
  std::vector<char> bytes = {static_cast<char>('a' + r), 'x'};
  c.comm->broadcast(bytes.data(), 2, N - 1);
  EXPECT_EQ(bytes[0], static_cast<char>('a' + N - 1));
}

TEST(DeviceCheckCommunicator, AsyncAllreduceKeepsOnlyItsBufferOpenUntilWait) {
  Checked c;
  c.mpi->set_max_count(4);  // several MPI requests per bucket
  const int N = c.comm->size(), r = c.comm->rank();
  std::vector<float*> buckets;
  std::vector<parallel::Request> reqs;
  float* other = c.put(std::vector<float>(4));
  for (int b = 0; b < 3; ++b) {
    std::vector<float> h(10);
    for (int k = 0; k < 10; ++k) h[k] = static_cast<float>(r * 100 + b * 10 + k);
    buckets.push_back(c.put(h));
    reqs.push_back(c.comm->allreduce_sum_async(buckets.back(), 10));
  }
  for (float* b : buckets) EXPECT_TRUE(c.registry->accessible(b)) << "in flight: open for MPI";
  EXPECT_FALSE(c.registry->accessible(other)) << "the other regions stay protected meanwhile";
  EXPECT_HAS(internal_error([&] { c.be->release(buckets[1]); }), "while a kernel or collective uses it");
  for (int b = 2; b >= 0; --b) {
    c.comm->wait(reqs[b]);
    EXPECT_FALSE(c.registry->accessible(buckets[b])) << "closed again by its wait";
  }
  for (int b = 0; b < 3; ++b) {
    const auto got = c.take(buckets[b], 10);
    for (int k = 0; k < 10; ++k) EXPECT_EQ(got[k], static_cast<float>(100 * N * (N - 1) / 2 + N * (b * 10 + k)));
  }
  EXPECT_HAS(internal_error([&] { (void)c.comm->allreduce_sum_async(std::vector<float>(2).data(), 2); }),
             "allreduce_sum_async: data (");
  parallel::Request none;
  c.comm->wait(none);
}

TEST(DeviceCheckCommunicator, SplitsKeepChecking) {
  Checked c;
  const int r = c.comm->rank();
  auto half = c.comm->split(r % 2, r);
  EXPECT_EQ(half->memory_space(), parallel::MemorySpace::device);
  float* x = c.put(std::vector<float>{1.f});
  half->allreduce_sum(x, 1);
  EXPECT_EQ(c.take(x, 1)[0], static_cast<float>(half->size()));
  float host = 1.f;
  EXPECT_HAS(internal_error([&] { half->allreduce_sum(&host, 1); }), "is not device memory");
  auto shared = c.comm->split_shared_memory();
  EXPECT_HAS(internal_error([&] { shared->allreduce_sum(&host, 1); }), "is not device memory");
  auto owning = parallel::make_device_check_communicator(MpiCommunicator::world(), c.registry);
  owning->allreduce_sum(x, 1);
  EXPECT_EQ(c.take(x, 1)[0], static_cast<float>(half->size() * c.comm->size()));
}

// Data parallelism (expert_parallel 1) as the trainer runs it: gradient buckets reduced during
// backward, then the global norm; the same gradients bit for bit as on the CPU backend and MPI.
TEST(DeviceCheckCommunicator, DataParallelStepRunsDeviceClean) {
  Checked c;
  auto cfg = small_moe_model(2);
  const int64_t B = 2, T = 16;
  std::vector<int32_t> tokens(B * T), targets(B * T);
  for (size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<int32_t>((i * 7 + static_cast<size_t>(c.comm->rank())) % 64);
    targets[i] = static_cast<int32_t>((i * 3 + 1) % 64);
  }
  auto cpu = core::make_cpu_backend(1);
  std::vector<float> grads[2];
  double norm[2];
  for (int which = 0; which < 2; ++which) {
    core::Backend& be = which == 0 ? *c.be : *cpu;
    parallel::ProcessGroups groups(which == 0 ? *c.comm : *c.mpi, {1, 0});
    moe::Model model(be, cfg, B, T);
    model.init_random(7);
    model.zero_grads();
    model.forward(tokens.data(), targets.data(), B, T);
    launch::GradientReducer reducer(model.table(), groups, static_cast<int>(cfg.n_layers));
    model.backward(0.5f, [&](int layer) { reducer.start_bucket(model.grads(), layer); });
    reducer.finish(model.grads());
    norm[which] = reducer.global_norm(be, model.grads());
    grads[which].resize(static_cast<size_t>(model.num_params()));
    be.copy_to_host(grads[which].data(), model.grads(), grads[which].size() * sizeof(float));
  }
  EXPECT_EQ(norm[0], norm[1]);
  EXPECT_EQ(grads[0], grads[1]);
}

}  // namespace
}  // namespace switchyard::test
