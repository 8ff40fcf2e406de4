// tests/mpi/test_communicator.cpp: the MPI communicator under mpirun (2 and 4 ranks): every call
// against values each rank can predict, with MPI's per-call limit lowered so the chunked paths run.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"
#include "parallel/mpi_check.h"
#include "parallel/mpi_communicator.h"
#include "tests/mpi/communicator_testing.h"

namespace switchyard::test {
namespace {

using parallel::MpiCommunicator;

TEST(MpiCommunicator, Basics) {
  auto world = MpiCommunicator::world();
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  EXPECT_EQ(world->rank(), rank);
  EXPECT_EQ(world->size(), size);
  EXPECT_EQ(world->name(), "mpi");
  EXPECT_EQ(world->memory_space(), parallel::MemorySpace::host);
  world->barrier();
}

TEST(MpiCommunicator, AllreduceChunked) {
  auto world = MpiCommunicator::world();
  const int N = world->size(), r = world->rank();
  for (int64_t max_count : {int64_t{INT_MAX}, int64_t{3}}) {
    world->set_max_count(max_count);
    for (int64_t n : {0, 1, 17}) {
      std::vector<float> f(static_cast<size_t>(n));
      std::vector<double> d(static_cast<size_t>(n));
      std::vector<int64_t> i(static_cast<size_t>(n));
      for (int64_t k = 0; k < n; ++k) {
        f[k] = static_cast<float>(r + k);
        d[k] = 0.5 * (r + k);
        i[k] = (int64_t{1} << 40) * r + k;
      }
      world->allreduce_sum(f.data(), n);
      world->allreduce_sum(d.data(), n);
      world->allreduce_sum(i.data(), n);
      const int64_t rank_sum = int64_t{N} * (N - 1) / 2;
      for (int64_t k = 0; k < n; ++k) {
        EXPECT_EQ(f[k], static_cast<float>(rank_sum + N * k));
        EXPECT_EQ(d[k], 0.5 * static_cast<double>(rank_sum + N * k));
        EXPECT_EQ(i[k], (int64_t{1} << 40) * rank_sum + N * k);
      }
    }
  }
}

// max / min agree on values no rank holds alone: element k's extreme comes from a different rank
// for each k; broadcast copies the root's bytes, whatever the others held.
TEST(MpiCommunicator, MaxMinAndBroadcast) {
  auto world = MpiCommunicator::world();
  const int N = world->size(), r = world->rank();
  for (int64_t max_count : {int64_t{INT_MAX}, int64_t{3}}) {
    world->set_max_count(max_count);
    const int64_t n = 7;
    std::vector<int64_t> hi(n), lo(n);
    for (int64_t k = 0; k < n; ++k) hi[k] = lo[k] = ((r + k) % N) * 1000 - (int64_t{1} << 40) + k;
    world->allreduce_max(hi.data(), n);
    world->allreduce_min(lo.data(), n);
    for (int64_t k = 0; k < n; ++k) {
      EXPECT_EQ(hi[k], (N - 1) * 1000 - (int64_t{1} << 40) + k) << "max_count " << max_count;
      EXPECT_EQ(lo[k], -(int64_t{1} << 40) + k) << "max_count " << max_count;
    }
    for (int root = 0; root < N; ++root) {
      std::vector<char> bytes(11);
      for (size_t k = 0; k < bytes.size(); ++k) bytes[k] = static_cast<char>('a' + (r * 3 + static_cast<int>(k)) % 26);
      world->broadcast(bytes.data(), static_cast<int64_t>(bytes.size()), root);
      for (size_t k = 0; k < bytes.size(); ++k)
        EXPECT_EQ(bytes[k], static_cast<char>('a' + (root * 3 + static_cast<int>(k)) % 26)) << "root " << root;
    }
  }
}

TEST(MpiCommunicator, AsyncAllreduceBuckets) {
  auto world = MpiCommunicator::world();
  world->set_max_count(4);  // 3 buckets of 10: several MPI requests each
  const int N = world->size(), r = world->rank();
  std::vector<std::vector<float>> buckets(3, std::vector<float>(10));
  std::vector<parallel::Request> reqs;
  for (int b = 0; b < 3; ++b) {
    for (int k = 0; k < 10; ++k) buckets[b][k] = static_cast<float>(r * 100 + b * 10 + k);
    reqs.push_back(world->allreduce_sum_async(buckets[b].data(), 10));
    EXPECT_TRUE(reqs.back().pending());
  }
  for (int b = 2; b >= 0; --b) world->wait(reqs[b]);  // any order
  for (int b = 0; b < 3; ++b) {
    EXPECT_FALSE(reqs[b].pending());
    for (int k = 0; k < 10; ++k) EXPECT_EQ(buckets[b][k], static_cast<float>(100 * N * (N - 1) / 2 + N * (b * 10 + k)));
  }
  parallel::Request none;
  world->wait(none);     // no-op
  world->wait(reqs[0]);  // already completed: no-op
}

TEST(MpiCommunicator, AllgatherAlltoall) {
  auto world = MpiCommunicator::world();
  const int N = world->size(), r = world->rank();
  std::vector<int64_t> send = {r, 10 * r}, got(static_cast<size_t>(2 * N));
  world->allgather(send.data(), got.data(), 2);
  for (int q = 0; q < N; ++q) {
    EXPECT_EQ(got[2 * q], q);
    EXPECT_EQ(got[2 * q + 1], 10 * q);
  }
  std::vector<int64_t> a(static_cast<size_t>(2 * N)), b(static_cast<size_t>(2 * N));
  for (int q = 0; q < N; ++q) {
    a[2 * q] = 100 * r + q;  // what I send to q
    a[2 * q + 1] = -q;
  }
  world->alltoall(a.data(), b.data(), 2);
  for (int q = 0; q < N; ++q) {
    EXPECT_EQ(b[2 * q], 100 * q + r);
    EXPECT_EQ(b[2 * q + 1], -r);
  }
}

TEST(MpiCommunicator, AlltoallvBytes) {
  auto world = MpiCommunicator::world();
  const int N = world->size(), r = world->rank();
  for (int64_t max_count : {int64_t{INT_MAX}, int64_t{5}}) {
    world->set_max_count(max_count);
    const auto c = alltoallv_case(r, N);
    std::vector<uint8_t> got(c.want.size(), 0);
    world->alltoallv(c.send.data(), c.send_counts, c.send_displs, got.data(), c.recv_counts, c.recv_displs);
    EXPECT_EQ(got, c.want) << "max_count " << max_count;
  }
}

TEST(MpiCommunicator, SplitAndShared) {
  auto world = MpiCommunicator::world();
  const int N = world->size(), r = world->rank();
  auto half = world->split(r % 2, -r);  // key reversed: highest rank first
  const int64_t me = r;
  std::vector<int64_t> got(static_cast<size_t>(half->size()));
  half->allgather(&me, got.data(), 1);
  std::vector<int64_t> want;
  for (int q = N - 1; q >= 0; --q)
    if (q % 2 == r % 2) want.push_back(q);
  EXPECT_EQ(got, want);
  auto shared = world->split_shared_memory();
  EXPECT_GE(shared->size(), 1);
  EXPECT_LE(shared->size(), N);
  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int len = 0;
  MPI_Get_processor_name(name, &len);
  std::vector<int64_t> h(static_cast<size_t>(shared->size()));
  const auto my_hash = static_cast<int64_t>(std::hash<std::string>{}(std::string(name, static_cast<size_t>(len))) >> 1);
  shared->allgather(&my_hash, h.data(), 1);
  for (int64_t v : h) EXPECT_EQ(v, my_hash) << "ranks of one shared-memory group run on one host";
}

TEST(MpiCommunicator, FailingCallThrowsWithFileLineAndMpiString) {
  auto world = MpiCommunicator::world();
  int buf = 0;
  try {
    SY_MPI_CHECK(MPI_Bcast(&buf, -1, MPI_INT, 0, world->comm()));
    ADD_FAILURE() << "a negative count was accepted";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::internal);
    EXPECT_NE(m.find("test_communicator.cpp:"), std::string::npos) << m;
    EXPECT_NE(m.find("MPI_Bcast"), std::string::npos) << m;
    EXPECT_NE(m.find("MPI error"), std::string::npos) << m;
  }
  EXPECT_THROW(parallel::mpi_check(MPI_ERR_COUNT, "MPI_Send(...)", "here.cpp", 12), Error);
  world->barrier();  // every rank is still in step
}

}  // namespace
}  // namespace switchyard::test
