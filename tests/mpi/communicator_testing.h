// tests/mpi/communicator_testing.h: the cases shared by the tests of every Communicator
// (test_communicator.cpp for MPI, test_nccl_communicator.cpp for NCCL): values each rank can
// predict, built on the host (the NCCL test copies them to the device).
#pragma once

#include <cstdint>
#include <vector>

namespace switchyard::test {

// One variable all-to-all of bytes seen from rank `rank` of `size`: rank `from` sends rank `to`
// 0 or 3..25 bytes depending on the pair, with 2-byte gaps in `send` so displacements are
// honoured; `want` is what `recv` must hold afterwards.
struct AlltoallvCase {
  std::vector<int64_t> send_counts, send_displs, recv_counts, recv_displs;
  std::vector<uint8_t> send, want;
};
AlltoallvCase alltoallv_case(int rank, int size);

}  // namespace switchyard::test
