// tests/mpi/communicator_testing.cpp: see communicator_testing.h.
#include "tests/mpi/communicator_testing.h"

#include <cstddef>

namespace switchyard::test {

namespace {

// What rank `from` sends to rank `to`; empty for some pairs.
std::vector<uint8_t> message(int from, int to) {
  const int n = (from * 7 + to * 3) % 5 == 0 ? 0 : 3 + (from * 11 + to * 5) % 23;
  std::vector<uint8_t> v(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(from * 31 + to * 17 + i);
  return v;
}

}  // namespace

AlltoallvCase alltoallv_case(int rank, int size) {
  AlltoallvCase c;
  for (int q = 0; q < size; ++q) {
    const auto out = message(rank, q), in = message(q, rank);
    c.send_displs.push_back(static_cast<int64_t>(c.send.size()) + 2);
    c.send.resize(c.send.size() + 2, 0xee);
    c.send.insert(c.send.end(), out.begin(), out.end());
    c.send_counts.push_back(static_cast<int64_t>(out.size()));
    c.recv_displs.push_back(static_cast<int64_t>(c.want.size()));
    c.recv_counts.push_back(static_cast<int64_t>(in.size()));
    c.want.insert(c.want.end(), in.begin(), in.end());
  }
  return c;
}

}  // namespace switchyard::test
