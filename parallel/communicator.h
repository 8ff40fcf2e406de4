// parallel/communicator.h: the communicator interface every parallel algorithm of Switchyard is
// written against (DESIGN decision 4). Implementations:
//   MpiCommunicator  (parallel/mpi_communicator.h)  host memory, over an MPI_Comm
//   NCCL             (with the CUDA backend)         device memory, over an ncclComm_t
//
// Rules for every implementation:
//  - Every call is collective over the communicator: all ranks call it, in the same order.
//  - Buffers are in memory_space(): host pointers for MPI, device pointers for NCCL.
//  - Counts are elements (bytes for alltoallv), int64: implementations split what their library
//    cannot express in one call.
//  - Errors throw switchyard::Error with the library's error string, file and line.
//  - Blocking calls return when the result is in place on this rank. [stream-ordered] marks the
//    calls an NCCL implementation enqueues on its communication stream instead: they return once
//    enqueued, and the result is ordered before later work on that stream (a caller that reads
//    the result on the host synchronizes first). alltoall of counts is [stream-ordered] too: the
//    token exchange copies the received counts to the host, because sizes of later buffers
//    depend on them.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace switchyard::parallel {

enum class MemorySpace { host, device };

// Handle of a non-blocking collective; wait() completes it. Default-constructed: no operation.
struct Request {
  int64_t id = -1;
  bool pending() const { return id >= 0; }
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // "mpi", "nccl": for logs
  virtual MemorySpace memory_space() const = 0;
  // The same ranks in the same order on host memory: where host-side data travels (topology, the
  // token exchange's counts and slot metadata, gathering parameters for a save). An MPI
  // communicator is its own; NCCL's is its MPI twin.
  virtual Communicator& host() { return *this; }

  virtual void barrier() = 0;

  // ---- reductions, in place ---- [stream-ordered]
  virtual void allreduce_sum(float* data, int64_t n) = 0;
  virtual void allreduce_sum(double* data, int64_t n) = 0;
  virtual void allreduce_sum(int64_t* data, int64_t n) = 0;

  // Element-wise max / min, in place: agreements on host control values (stop signals, a GEMM
  // path, the first rank that saw inf/NaN). Blocking, host memory whatever memory_space() says.
  virtual void allreduce_max(int64_t* data, int64_t n) = 0;
  virtual void allreduce_min(int64_t* data, int64_t n) = 0;
  // The `bytes` bytes at `data` on rank `root` are copied into `data` on every rank. Blocking,
  // host memory.
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;

  // Non-blocking in-place float sum, for bucketed gradient reduction: start one per bucket while
  // backward continues, wait() for all before the optimizer reads the buffer. The buffer must not
  // be touched between start and wait. [stream-ordered: NCCL starts it on the communication
  // stream; wait makes the compute stream wait for it]
  virtual Request allreduce_sum_async(float* data, int64_t n) = 0;
  // Completes `request` and resets it; a default Request is a no-op.
  virtual void wait(Request& request) = 0;

  // recv[r*count + i] = send[i] of rank r (count int64 values from every rank). [stream-ordered]
  virtual void allgather(const int64_t* send, int64_t* recv, int64_t count) = 0;
  // recv[r*count + i] = send[me*count + i] of rank r: `count` int64 values to every peer, the
  // counts exchange that precedes a variable all-to-all. [stream-ordered]
  virtual void alltoall(const int64_t* send, int64_t* recv, int64_t count) = 0;
  // Variable all-to-all of bytes: bytes [send_displs[r], +send_counts[r]) of `send` go to rank r,
  // which receives them at [recv_displs[me], +recv_counts[me]) of its `recv`. Each span has size()
  // entries; counts must agree pairwise (what r sends to me is what I expect from r). The token
  // exchange's payloads travel here. [stream-ordered: NCCL implements it as grouped send/recv]
  virtual void alltoallv(const void* send, std::span<const int64_t> send_counts,
                         std::span<const int64_t> send_displs, void* recv,
                         std::span<const int64_t> recv_counts,
                         std::span<const int64_t> recv_displs) = 0;

  // ---- sub-communicators (collective) ----
  // Ranks with the same color form one communicator, ordered by key (then by rank here).
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
  // The ranks that share this rank's machine (MPI_COMM_TYPE_SHARED), ordered by rank here:
  // topology discovery.
  virtual std::unique_ptr<Communicator> split_shared_memory() = 0;
};

}  // namespace switchyard::parallel
