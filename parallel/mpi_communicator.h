// parallel/mpi_communicator.h: the Communicator over an MPI communicator, on host memory.
//
// How each call maps to MPI:
//   allreduce_sum        MPI_Allreduce(MPI_IN_PLACE), in chunks of at most max_count() elements
//   allreduce_sum_async  MPI_Iallreduce per chunk; wait() is MPI_Waitall over them
//   allreduce_max/min    MPI_Allreduce with MPI_MAX / MPI_MIN (int64)
//   broadcast            MPI_Bcast of bytes
//   allgather, alltoall  MPI_Allgather, MPI_Alltoall (int64)
//   alltoallv            MPI_Irecv/MPI_Isend of the non-empty messages only (chunks of at most
//                        max_count() bytes, fixed tag: MPI's non-overtaking order matches them),
//                        the self part by memcpy, then MPI_Waitall. Pairwise like NCCL's grouped
//                        send/recv; a message too large for one MPI call needs no global agreement
//                        (MPI_Alltoallv's int counts and displacements would need one).
//   split                MPI_Comm_split; split_shared_memory: MPI_Comm_split_type(SHARED)
// Every MPI call goes through SY_MPI_CHECK; every communicator made here returns errors
// (MPI_ERRORS_RETURN) so they become exceptions.
#pragma once

#include <mpi.h>

#include <climits>
#include <map>
#include <memory>
#include <vector>

#include "parallel/communicator.h"

namespace switchyard::parallel {

class MpiCommunicator final : public Communicator {
 public:
  // A private duplicate of MPI_COMM_WORLD (its own message space). MPI must be initialised.
  static std::unique_ptr<MpiCommunicator> world();
  // Wraps `comm`; with `owns`, MPI_Comm_free at destruction.
  MpiCommunicator(MPI_Comm comm, bool owns);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  MPI_Comm comm() const { return comm_; }
  // Most elements (bytes for alltoallv) one MPI call carries; larger counts are chunked. INT_MAX
  // by default; tests lower it to exercise the chunked paths.
  int64_t max_count() const { return max_count_; }
  void set_max_count(int64_t max_count);

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "mpi"; }
  MemorySpace memory_space() const override { return MemorySpace::host; }

  void barrier() override;
  void allreduce_sum(float* data, int64_t n) override;
  void allreduce_sum(double* data, int64_t n) override;
  void allreduce_sum(int64_t* data, int64_t n) override;
  void allreduce_max(int64_t* data, int64_t n) override;
  void allreduce_min(int64_t* data, int64_t n) override;
  void broadcast(void* data, int64_t bytes, int root) override;
  Request allreduce_sum_async(float* data, int64_t n) override;
  void wait(Request& request) override;
  void allgather(const int64_t* send, int64_t* recv, int64_t count) override;
  void alltoall(const int64_t* send, int64_t* recv, int64_t count) override;
  void alltoallv(const void* send, std::span<const int64_t> send_counts,
                 std::span<const int64_t> send_displs, void* recv,
                 std::span<const int64_t> recv_counts,
                 std::span<const int64_t> recv_displs) override;
  std::unique_ptr<Communicator> split(int color, int key) override;
  std::unique_ptr<Communicator> split_shared_memory() override;

 private:
  template <class T>
  void allreduce_chunks(T* data, int64_t n, MPI_Datatype type, MPI_Op op = MPI_SUM);

  MPI_Comm comm_ = MPI_COMM_NULL;
  bool owns_ = false;
  int rank_ = 0, size_ = 1;
  int64_t max_count_ = INT_MAX;
  int64_t next_request_ = 0;
  std::map<int64_t, std::vector<MPI_Request>> pending_;  // started, not yet waited for
  std::vector<MPI_Request> p2p_;                         // alltoallv scratch
};

}  // namespace switchyard::parallel
