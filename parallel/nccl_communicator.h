// parallel/nccl_communicator.h: the Communicator over NCCL, on device memory (built where the CUDA
// backend and NCCL are found: SWITCHYARD_HAVE_NCCL; make_nccl_communicator is declared in every
// build and is a usage error elsewhere). Not wired into the trainer yet.
//
// How each call maps to NCCL (all on this communicator's own communication stream, each preceded
// by "the communication stream waits for the compute stream" so inputs written there are ready,
// and each followed by "the compute stream waits for the communication stream", so later compute
// work sees the result; no host synchronisation):
//   allreduce_sum        ncclAllReduce in place (float, double, int64)      [stream-ordered]
//   allreduce_sum_async  ncclAllReduce, then an event recorded after it; wait() makes the compute
//                        stream wait on the event (the host does not wait)
//   allgather, alltoall  ncclAllGather, ncclAlltoAll (int64)                 [stream-ordered]
//   alltoallv            ncclSend/ncclRecv of the non-empty messages inside ncclGroupStart/End,
//                        the self part by cudaMemcpyAsync                    [stream-ordered]
//   barrier              the host waits for the communication stream, then an MPI barrier
//   allreduce_max/min,   the MPI twin (blocking, host memory: communicator.h)
//   broadcast, host()
//   split                ncclCommSplit, and MPI_Comm_split of the twin with the same color/key
//   split_shared_memory  the twin's node split; the NCCL side by ncclCommSplit with the node's
//                        lowest rank as color
// NCCL counts are size_t: nothing is chunked. Every NCCL call goes through SY_NCCL_CHECK
// (parallel/nccl_check.h); a failed call marks the communicator, whose destructor then uses
// ncclCommAbort instead of finalize + destroy. Blocking host waits (initialisation, splits, the
// first collectives that connect peers, synchronize, barrier) run inside a parallel::WaitScope.
//
// CUDA and NCCL types stay out of this header: streams are void* (cudaStream_t), the NCCL
// communicator an opaque ncclComm*.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"

struct ncclComm;  // nccl.h: typedef struct ncclComm* ncclComm_t

namespace switchyard::parallel {

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `mpi`: rank 0 makes the unique id, `mpi` broadcasts it, every rank joins on
  // CUDA device `device` (one device per rank). `compute_stream` (cudaStream_t; nullptr: the legacy
  // default stream) is the stream the caller computes on. `mpi` must outlive this communicator.
  NcclCommunicator(MpiCommunicator& mpi, int device, void* compute_stream);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int device() const { return device_; }
  void* stream() const { return stream_; }  // the communication stream (cudaStream_t)
  // The host waits until everything enqueued on the communication stream has completed.
  void synchronize();

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "nccl"; }
  MemorySpace memory_space() const override { return MemorySpace::device; }
  Communicator& host() override { return *mpi_; }

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
  // A communicator made by split: owns its MPI twin.
  NcclCommunicator(ncclComm* comm, std::unique_ptr<MpiCommunicator> twin, int device, void* compute_stream);
  void make_stream();
  std::unique_ptr<Communicator> split_with(std::unique_ptr<MpiCommunicator> twin, int color, int key);
  void begin();  // current device; the communication stream waits for the compute stream
  void end();    // the compute stream waits for the communication stream
  void allreduce(void* data, int64_t n, int type);
  void check(int result, const char* what, const char* file, int line);  // SY_NCCL_CHECK + mark

  MpiCommunicator* mpi_ = nullptr;              // the MPI twin: host-control calls and splits
  std::unique_ptr<MpiCommunicator> owned_mpi_;  // set for communicators made by split
  ncclComm* comm_ = nullptr;
  int device_ = 0, rank_ = 0, size_ = 1;
  void* compute_ = nullptr;  // cudaStream_t
  void* stream_ = nullptr;   // cudaStream_t, non-blocking, owned
  void* ready_ = nullptr;    // cudaEvent_t: recorded on one stream for the other to wait on
  bool failed_ = false;      // an NCCL call failed: abort at destruction
  int64_t next_request_ = 0;
  std::map<int64_t, void*> pending_;  // request id -> cudaEvent_t recorded after its all-reduce
  std::vector<void*> free_events_;
};

// The NCCL communicator over `mpi` on CUDA device `device`, `compute_stream` a cudaStream_t (see
// NcclCommunicator). A usage error in a build without NCCL, or when `device` is not a GPU this
// process can use.
std::unique_ptr<Communicator> make_nccl_communicator(MpiCommunicator& mpi, int device, void* compute_stream);

}  // namespace switchyard::parallel
