// tests/mpi/test_nccl_communicator.cpp: the NCCL communicator under mpirun (2 and 4 ranks), the
// checks of test_communicator.cpp on device buffers (cudaMalloc / cudaMemcpy). Every case that
// needs a GPU skips ("skipped: no GPU") unless every rank has a GPU of its own (node-local rank <
// cuda_device_count(), agreed through the MPI communicator so all ranks skip together). Two cases
// run everywhere: a device this process cannot use is a usage error (in every build), and the
// message of SY_NCCL_CHECK (NCCL builds; ncclGetErrorString needs no GPU).
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "core/cuda/cuda.h"
#include "core/error.h"
#include "parallel/mpi_communicator.h"
#include "parallel/nccl_communicator.h"
#include "tests/mpi/communicator_testing.h"

#if SWITCHYARD_HAVE_NCCL
#include "core/cuda/cuda_check.h"
#include "parallel/nccl_check.h"
#endif

namespace switchyard::test {
namespace {

using parallel::Communicator;
using parallel::MpiCommunicator;

TEST(NcclCommunicator, DeviceThisProcessCannotUseIsAUsageError) {
  auto world = MpiCommunicator::world();
  try {
    (void)parallel::make_nccl_communicator(*world, core::cuda_device_count(), nullptr);
    ADD_FAILURE() << "a device past cuda_device_count() was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage) << e.what();
  }
  world->barrier();
}

#if SWITCHYARD_HAVE_NCCL

TEST(NcclCommunicator, FailingCallThrowsWithFileLineAndNcclString) {
  try {
    parallel::nccl_check(ncclInvalidArgument, "ncclSend(...)", "here.cpp", 12);
    ADD_FAILURE() << "ncclInvalidArgument was accepted";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::internal);
    EXPECT_NE(m.find("here.cpp:12"), std::string::npos) << m;
    EXPECT_NE(m.find("ncclSend(...)"), std::string::npos) << m;
    EXPECT_NE(m.find(ncclGetErrorString(ncclInvalidArgument)), std::string::npos) << m;
    EXPECT_NE(m.find("NCCL error"), std::string::npos) << m;
  }
  EXPECT_NO_THROW(SY_NCCL_CHECK(ncclSuccess));
}

// The MPI world, this rank's GPU (its node-local rank) and the NCCL communicator on it; empty
// `nccl` on every rank when any rank has no GPU of its own.
struct NcclSetup {
  std::unique_ptr<MpiCommunicator> world = MpiCommunicator::world();
  std::unique_ptr<Communicator> nccl;
  explicit NcclSetup(void* compute_stream = nullptr) {
    const int devices = core::cuda_device_count();
    auto node = world->split_shared_memory();
    int64_t ok = node->rank() < devices ? 1 : 0;
    world->allreduce_min(&ok, 1);
    if (ok == 0) return;
    SY_CUDA_CHECK(cudaSetDevice(node->rank()));
    nccl = parallel::make_nccl_communicator(*world, node->rank(), compute_stream);
  }
};

#define NCCL_SETUP(s)                                                                     \
  NcclSetup s;                                                                              \
  if (!s.nccl) GTEST_SKIP() << "skipped: no GPU (a GPU of its own on every rank needed)"

// A device array of T, copied from / to host vectors on the legacy default stream (ordered after
// the communicator's work: with a null compute stream, every call ends with that stream waiting).
template <class T>
class DeviceArray {
 public:
  explicit DeviceArray(const std::vector<T>& host) : n_(host.size()) {
    SY_CUDA_CHECK(cudaMalloc(&p_, std::max<size_t>(1, n_) * sizeof(T)));
    if (n_ > 0) SY_CUDA_CHECK(cudaMemcpy(p_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~DeviceArray() { cudaFree(p_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  T* get() { return static_cast<T*>(p_); }
  std::vector<T> host() const {
    std::vector<T> out(n_);
    if (n_ > 0) SY_CUDA_CHECK(cudaMemcpy(out.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return out;
  }

 private:
  size_t n_;
  void* p_ = nullptr;
};

TEST(NcclCommunicator, Basics) {
  NCCL_SETUP(s);
  EXPECT_EQ(s.nccl->rank(), s.world->rank());
  EXPECT_EQ(s.nccl->size(), s.world->size());
  EXPECT_EQ(s.nccl->name(), "nccl");
  EXPECT_EQ(s.nccl->memory_space(), parallel::MemorySpace::device);
  s.nccl->barrier();
}

TEST(NcclCommunicator, AllreduceSum) {
  NCCL_SETUP(s);
  const int N = s.nccl->size(), r = s.nccl->rank();
  for (int64_t n : {0, 1, 17, 1 << 20}) {
    std::vector<float> f(static_cast<size_t>(n));
    std::vector<double> d(static_cast<size_t>(n));
    std::vector<int64_t> i(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) {
      f[k] = static_cast<float>(r + k % 1000);
      d[k] = 0.5 * (r + k);
      i[k] = (int64_t{1} << 40) * r + k;
    }
    DeviceArray<float> df(f);
    DeviceArray<double> dd(d);
    DeviceArray<int64_t> di(i);
    s.nccl->allreduce_sum(df.get(), n);
    s.nccl->allreduce_sum(dd.get(), n);
    s.nccl->allreduce_sum(di.get(), n);
    f = df.host();
    d = dd.host();
    i = di.host();
    const int64_t rank_sum = int64_t{N} * (N - 1) / 2;
    for (int64_t k = 0; k < n; ++k) {
      ASSERT_EQ(f[k], static_cast<float>(rank_sum + N * (k % 1000))) << "n " << n << " k " << k;
      ASSERT_EQ(d[k], 0.5 * static_cast<double>(rank_sum + N * k)) << "n " << n << " k " << k;
      ASSERT_EQ(i[k], (int64_t{1} << 40) * rank_sum + N * k) << "n " << n << " k " << k;
    }
  }
}

// Host-control calls: host memory whatever memory_space() says (communicator.h).
TEST(NcclCommunicator, MaxMinAndBroadcastOnTheHost) {
  NCCL_SETUP(s);
  const int N = s.nccl->size(), r = s.nccl->rank();
  const int64_t n = 7;
  std::vector<int64_t> hi(n), lo(n);
  for (int64_t k = 0; k < n; ++k) hi[k] = lo[k] = ((r + k) % N) * 1000 - (int64_t{1} << 40) + k;
  s.nccl->allreduce_max(hi.data(), n);
  s.nccl->allreduce_min(lo.data(), n);
  for (int64_t k = 0; k < n; ++k) {
    EXPECT_EQ(hi[k], (N - 1) * 1000 - (int64_t{1} << 40) + k);
    EXPECT_EQ(lo[k], -(int64_t{1} << 40) + k);
  }
  for (int root = 0; root < N; ++root) {
    std::vector<char> bytes(11);
    for (size_t k = 0; k < bytes.size(); ++k) bytes[k] = static_cast<char>('a' + (r * 3 + static_cast<int>(k)) % 26);
    s.nccl->broadcast(bytes.data(), static_cast<int64_t>(bytes.size()), root);
    for (size_t k = 0; k < bytes.size(); ++k)
      EXPECT_EQ(bytes[k], static_cast<char>('a' + (root * 3 + static_cast<int>(k)) % 26)) << "root " << root;
  }
}

// With a compute stream of its own: buckets filled by copies on that stream, reduced, waited for
// (the compute stream waits), then read after the compute stream.
TEST(NcclCommunicator, AsyncAllreduceBucketsOnAComputeStream) {
  // The compute stream lives on this rank's device (its node-local rank, as NcclSetup picks it).
  auto world = MpiCommunicator::world();
  auto node = world->split_shared_memory();
  int64_t ok = node->rank() < core::cuda_device_count() ? 1 : 0;
  world->allreduce_min(&ok, 1);
  if (ok == 0) GTEST_SKIP() << "skipped: no GPU (a GPU of its own on every rank needed)";
  SY_CUDA_CHECK(cudaSetDevice(node->rank()));
  cudaStream_t compute = nullptr;
  SY_CUDA_CHECK(cudaStreamCreate(&compute));
  {
    auto nccl = parallel::make_nccl_communicator(*world, node->rank(), compute);
    const int N = nccl->size(), r = nccl->rank();
    std::vector<std::vector<float>> buckets(3, std::vector<float>(10));
    std::vector<float*> dev(3);
    std::vector<parallel::Request> reqs;
    for (int b = 0; b < 3; ++b) {
      for (int k = 0; k < 10; ++k) buckets[b][k] = static_cast<float>(r * 100 + b * 10 + k);
      SY_CUDA_CHECK(cudaMalloc(&dev[b], 10 * sizeof(float)));
      SY_CUDA_CHECK(cudaMemcpyAsync(dev[b], buckets[b].data(), 10 * sizeof(float), cudaMemcpyHostToDevice, compute));
      reqs.push_back(nccl->allreduce_sum_async(dev[b], 10));
      EXPECT_TRUE(reqs.back().pending());
    }
    for (int b = 2; b >= 0; --b) nccl->wait(reqs[b]);  // any order
    for (int b = 0; b < 3; ++b)
      SY_CUDA_CHECK(cudaMemcpyAsync(buckets[b].data(), dev[b], 10 * sizeof(float), cudaMemcpyDeviceToHost, compute));
    SY_CUDA_CHECK(cudaStreamSynchronize(compute));
    for (int b = 0; b < 3; ++b) {
      EXPECT_FALSE(reqs[b].pending());
      for (int k = 0; k < 10; ++k)
        EXPECT_EQ(buckets[b][k], static_cast<float>(100 * N * (N - 1) / 2 + N * (b * 10 + k)));
      cudaFree(dev[b]);
    }
    parallel::Request none;
    nccl->wait(none);     // no-op
    nccl->wait(reqs[0]);  // already completed: no-op
  }
  SY_CUDA_CHECK(cudaStreamDestroy(compute));
}

TEST(NcclCommunicator, AllgatherAlltoall) {
  NCCL_SETUP(s);
  const int N = s.nccl->size(), r = s.nccl->rank();
  DeviceArray<int64_t> send(std::vector<int64_t>{r, 10 * r}), got(std::vector<int64_t>(2 * N, -1));
  s.nccl->allgather(send.get(), got.get(), 2);
  const auto g = got.host();
  for (int q = 0; q < N; ++q) {
    EXPECT_EQ(g[2 * q], q);
    EXPECT_EQ(g[2 * q + 1], 10 * q);
  }
  std::vector<int64_t> a(static_cast<size_t>(2 * N));
  for (int q = 0; q < N; ++q) {
    a[2 * q] = 100 * r + q;  // what I send to q
    a[2 * q + 1] = -q;
  }
  DeviceArray<int64_t> da(a), db(std::vector<int64_t>(2 * N, -1));
  s.nccl->alltoall(da.get(), db.get(), 2);
  const auto b = db.host();
  for (int q = 0; q < N; ++q) {
    EXPECT_EQ(b[2 * q], 100 * q + r);
    EXPECT_EQ(b[2 * q + 1], -r);
  }
}

TEST(NcclCommunicator, AlltoallvBytes) {
  NCCL_SETUP(s);
  const int N = s.nccl->size(), r = s.nccl->rank();
  const auto c = alltoallv_case(r, N);
  DeviceArray<uint8_t> send(c.send), got(std::vector<uint8_t>(c.want.size(), 0));
  s.nccl->alltoallv(send.get(), c.send_counts, c.send_displs, got.get(), c.recv_counts, c.recv_displs);
  EXPECT_EQ(got.host(), c.want);
}

TEST(NcclCommunicator, SplitAndShared) {
  NCCL_SETUP(s);
  const int N = s.nccl->size(), r = s.nccl->rank();
  auto half = s.nccl->split(r % 2, -r);  // key reversed: highest rank first
  EXPECT_EQ(half->name(), "nccl");
  DeviceArray<int64_t> me(std::vector<int64_t>{r}), got(std::vector<int64_t>(half->size(), -1));
  half->allgather(me.get(), got.get(), 1);
  std::vector<int64_t> want;
  for (int q = N - 1; q >= 0; --q)
    if (q % 2 == r % 2) want.push_back(q);
  EXPECT_EQ(got.host(), want);
  int64_t highest = r;  // the MPI twin keeps host-control calls working on the split
  half->allreduce_max(&highest, 1);
  EXPECT_EQ(highest, want.front());
  auto shared = s.nccl->split_shared_memory();
  EXPECT_GE(shared->size(), 1);
  EXPECT_LE(shared->size(), N);
  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int len = 0;
  MPI_Get_processor_name(name, &len);
  const auto my_hash = static_cast<int64_t>(std::hash<std::string>{}(std::string(name, static_cast<size_t>(len))) >> 1);
  DeviceArray<int64_t> mine(std::vector<int64_t>{my_hash}), h(std::vector<int64_t>(shared->size(), 0));
  shared->allgather(mine.get(), h.get(), 1);
  for (int64_t v : h.host()) EXPECT_EQ(v, my_hash) << "ranks of one shared-memory group run on one host";
}

#endif  // SWITCHYARD_HAVE_NCCL

}  // namespace
}  // namespace switchyard::test
