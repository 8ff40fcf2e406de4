// parallel/nccl_communicator.cpp: Communicator over NCCL on device memory (see the header for the
// mapping of each call). Compiled only where SWITCHYARD_HAVE_NCCL (parallel/no_nccl.cpp elsewhere).
// Unverified on a GPU so far: this machine compiles and links it but has none to run it on.
#include "parallel/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <string>

#include "core/cuda/cuda.h"
#include "core/cuda/cuda_check.h"
#include "parallel/nccl_check.h"
#include "parallel/watchdog.h"

namespace switchyard::parallel {

void nccl_fail(ncclResult_t result, const char* what, const char* file, int line) {
  const char* last = ncclGetLastError(nullptr);  // thread-local in NCCL; the comm is not read
  throw_internal("{}:{}: {} failed: {} (NCCL error {}){}{}", file, line, what, ncclGetErrorString(result),
                 static_cast<int>(result), last && *last ? ": " : "", last ? last : "");
}

namespace {

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }
cudaEvent_t as_event(void* e) { return static_cast<cudaEvent_t>(e); }

// What rank 0 broadcasts: its ncclGetUniqueId result with the id, so a failure there throws on
// every rank instead of leaving the others in the broadcast.
struct IdMessage {
  int result = ncclSuccess;
  ncclUniqueId id{};
};

}  // namespace

// Every NCCL call of a communicator goes through here: a failure marks it for ncclCommAbort.
#define SY_NCCL_COMM_CHECK(call) check(static_cast<int>(call), #call, __FILE__, __LINE__)

void NcclCommunicator::check(int result, const char* what, const char* file, int line) {
  if (result == ncclSuccess) return;
  failed_ = true;
  nccl_fail(static_cast<ncclResult_t>(result), what, file, line);
}

NcclCommunicator::NcclCommunicator(MpiCommunicator& mpi, int device, void* compute_stream)
    : mpi_(&mpi), device_(device), rank_(mpi.rank()), size_(mpi.size()), compute_(compute_stream) {
  SY_CUDA_CHECK(cudaSetDevice(device_));
  IdMessage msg;
  if (rank_ == 0) msg.result = ncclGetUniqueId(&msg.id);
  mpi.broadcast(&msg, sizeof msg, 0);
  nccl_check(static_cast<ncclResult_t>(msg.result), "ncclGetUniqueId (on rank 0)", __FILE__, __LINE__);
  ncclComm_t comm = nullptr;
  {
    const WaitScope wait("the NCCL communicator initialisation");
    SY_NCCL_CHECK(ncclCommInitRank(&comm, size_, msg.id, rank_));
  }
  comm_ = comm;
  make_stream();
}

NcclCommunicator::NcclCommunicator(ncclComm* comm, std::unique_ptr<MpiCommunicator> twin, int device,
                                   void* compute_stream)
    : mpi_(twin.get()), owned_mpi_(std::move(twin)), comm_(comm), device_(device), compute_(compute_stream) {
  rank_ = mpi_->rank();
  size_ = mpi_->size();
  int nccl_rank = -1, nccl_size = -1;
  const ncclResult_t a = ncclCommUserRank(comm_, &nccl_rank), b = ncclCommCount(comm_, &nccl_size);
  if (a != ncclSuccess || b != ncclSuccess || nccl_rank != rank_ || nccl_size != size_) {
    ncclCommAbort(comm_);  // no destructor runs for a constructor that throws
    SY_NCCL_CHECK(a);
    SY_NCCL_CHECK(b);
    throw_internal("{}:{}: NCCL split gave rank {} of {}, its MPI twin rank {} of {}", __FILE__, __LINE__,
                   nccl_rank, nccl_size, rank_, size_);
  }
  make_stream();
}

void NcclCommunicator::make_stream() {
  // The constructors call this last: a failure here leaves no destructor to run, so the
  // communicator is aborted before the error goes on.
  try {
    cudaStream_t s = nullptr;
    SY_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    stream_ = s;
    cudaEvent_t e = nullptr;
    SY_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    ready_ = e;
  } catch (...) {
    if (stream_ != nullptr) cudaStreamDestroy(as_stream(stream_));
    ncclCommAbort(comm_);
    throw;
  }
}

NcclCommunicator::~NcclCommunicator() {
  // A destructor cannot report: errors here are ignored.
  cudaSetDevice(device_);
  if (comm_ != nullptr) {
    if (failed_) {
      ncclCommAbort(comm_);
    } else {
      const WaitScope wait("the NCCL communicator's shutdown");
      if (stream_ != nullptr) cudaStreamSynchronize(as_stream(stream_));
      if (ncclCommFinalize(comm_) == ncclSuccess)
        ncclCommDestroy(comm_);
      else
        ncclCommAbort(comm_);
    }
  }
  for (auto& [id, e] : pending_) cudaEventDestroy(as_event(e));
  for (void* e : free_events_) cudaEventDestroy(as_event(e));
  if (ready_ != nullptr) cudaEventDestroy(as_event(ready_));
  if (stream_ != nullptr) cudaStreamDestroy(as_stream(stream_));
}

void NcclCommunicator::begin() {
  SY_CUDA_CHECK(cudaSetDevice(device_));
  SY_CUDA_CHECK(cudaEventRecord(as_event(ready_), as_stream(compute_)));
  SY_CUDA_CHECK(cudaStreamWaitEvent(as_stream(stream_), as_event(ready_), 0));
}

void NcclCommunicator::end() {
  SY_CUDA_CHECK(cudaEventRecord(as_event(ready_), as_stream(stream_)));
  SY_CUDA_CHECK(cudaStreamWaitEvent(as_stream(compute_), as_event(ready_), 0));
}

void NcclCommunicator::synchronize() {
  SY_CUDA_CHECK(cudaSetDevice(device_));
  const WaitScope wait("the NCCL communication stream");
  SY_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream_)));
}

void NcclCommunicator::barrier() {
  synchronize();
  mpi_->barrier();
}

void NcclCommunicator::allreduce(void* data, int64_t n, int type) {
  SY_CHECK(n >= 0, "allreduce of {} elements", n);
  if (n == 0) return;  // n is the same on every rank
  begin();
  {
    // Blocks the host only while NCCL connects peers (the first collectives of a communicator).
    const WaitScope wait("an NCCL all-reduce");
    SY_NCCL_COMM_CHECK(ncclAllReduce(data, data, static_cast<size_t>(n), static_cast<ncclDataType_t>(type),
                                     ncclSum, comm_, as_stream(stream_)));
  }
}

void NcclCommunicator::allreduce_sum(float* data, int64_t n) {
  allreduce(data, n, ncclFloat32);
  end();
}
void NcclCommunicator::allreduce_sum(double* data, int64_t n) {
  allreduce(data, n, ncclFloat64);
  end();
}
void NcclCommunicator::allreduce_sum(int64_t* data, int64_t n) {
  allreduce(data, n, ncclInt64);
  end();
}

// Host control values: the MPI twin (communicator.h: blocking, host memory).
void NcclCommunicator::allreduce_max(int64_t* data, int64_t n) { mpi_->allreduce_max(data, n); }
void NcclCommunicator::allreduce_min(int64_t* data, int64_t n) { mpi_->allreduce_min(data, n); }
void NcclCommunicator::broadcast(void* data, int64_t bytes, int root) { mpi_->broadcast(data, bytes, root); }

Request NcclCommunicator::allreduce_sum_async(float* data, int64_t n) {
  allreduce(data, n, ncclFloat32);
  cudaEvent_t e = nullptr;
  if (!free_events_.empty()) {
    e = as_event(free_events_.back());
    free_events_.pop_back();
  } else {
    SY_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  Request request{next_request_++};
  pending_.emplace(request.id, e);
  SY_CUDA_CHECK(cudaEventRecord(e, as_stream(stream_)));
  return request;
}

void NcclCommunicator::wait(Request& request) {
  if (!request.pending()) return;
  auto it = pending_.find(request.id);
  SY_CHECK(it != pending_.end(), "wait on request {} that this communicator did not start (or already completed)",
           request.id);
  void* e = it->second;
  pending_.erase(it);
  request.id = -1;
  free_events_.push_back(e);
  SY_CUDA_CHECK(cudaSetDevice(device_));
  SY_CUDA_CHECK(cudaStreamWaitEvent(as_stream(compute_), as_event(e), 0));
}

void NcclCommunicator::allgather(const int64_t* send, int64_t* recv, int64_t count) {
  SY_CHECK(count >= 0, "allgather of {} values", count);
  if (count == 0) return;
  begin();
  {
    const WaitScope wait("an NCCL all-gather");
    SY_NCCL_COMM_CHECK(ncclAllGather(send, recv, static_cast<size_t>(count), ncclInt64, comm_, as_stream(stream_)));
  }
  end();
}

void NcclCommunicator::alltoall(const int64_t* send, int64_t* recv, int64_t count) {
  SY_CHECK(count >= 0, "alltoall of {} values", count);
  if (count == 0) return;
  begin();
  {
    const WaitScope wait("an NCCL all-to-all (token counts)");
    SY_NCCL_COMM_CHECK(ncclAlltoAll(send, recv, static_cast<size_t>(count), ncclInt64, comm_, as_stream(stream_)));
  }
  end();
}

void NcclCommunicator::alltoallv(const void* send, std::span<const int64_t> send_counts,
                                 std::span<const int64_t> send_displs, void* recv,
                                 std::span<const int64_t> recv_counts,
                                 std::span<const int64_t> recv_displs) {
  const auto n = static_cast<size_t>(size_);
  SY_CHECK(send_counts.size() == n && send_displs.size() == n && recv_counts.size() == n &&
               recv_displs.size() == n,
           "alltoallv spans must have {} entries", n);
  for (size_t r = 0; r < n; ++r)
    SY_CHECK(send_counts[r] >= 0 && recv_counts[r] >= 0 && send_displs[r] >= 0 && recv_displs[r] >= 0,
             "alltoallv: negative count or displacement for rank {}", r);
  SY_CHECK(send_counts[rank_] == recv_counts[rank_], "alltoallv: {} bytes to self, {} expected from self",
           send_counts[rank_], recv_counts[rank_]);
  const auto* src = static_cast<const std::byte*>(send);
  auto* dst = static_cast<std::byte*>(recv);
  begin();
  if (send_counts[rank_] > 0)
    SY_CUDA_CHECK(cudaMemcpyAsync(dst + recv_displs[rank_], src + send_displs[rank_],
                                  static_cast<size_t>(send_counts[rank_]), cudaMemcpyDeviceToDevice,
                                  as_stream(stream_)));
  {
    const WaitScope wait("the token exchange (NCCL grouped send/recv of token rows)");
    SY_NCCL_COMM_CHECK(ncclGroupStart());
    // Every call inside the group is enqueued; ncclGroupEnd launches them together. An error inside
    // still needs the group closed, so the first one is kept and thrown after ncclGroupEnd.
    ncclResult_t first = ncclSuccess;
    const char* first_what = "";
    for (int step = 1; step < size_; ++step) {  // rotated order, as the MPI twin
      const int to = (rank_ + step) % size_, from = (rank_ - step + size_) % size_;
      if (send_counts[to] > 0 && first == ncclSuccess) {
        first = ncclSend(src + send_displs[to], static_cast<size_t>(send_counts[to]), ncclUint8, to, comm_,
                         as_stream(stream_));
        first_what = "ncclSend(...)";
      }
      if (recv_counts[from] > 0 && first == ncclSuccess) {
        first = ncclRecv(dst + recv_displs[from], static_cast<size_t>(recv_counts[from]), ncclUint8, from, comm_,
                         as_stream(stream_));
        first_what = "ncclRecv(...)";
      }
    }
    const ncclResult_t group = ncclGroupEnd();
    check(static_cast<int>(first), first_what, __FILE__, __LINE__);
    SY_NCCL_COMM_CHECK(group);
  }
  end();
}

std::unique_ptr<Communicator> NcclCommunicator::split_with(std::unique_ptr<MpiCommunicator> twin, int color,
                                                           int key) {
  SY_CUDA_CHECK(cudaSetDevice(device_));
  ncclComm_t out = nullptr;
  {
    const WaitScope wait("an NCCL communicator split");
    SY_NCCL_COMM_CHECK(ncclCommSplit(comm_, color, key, &out, nullptr));
  }
  SY_CHECK(out != nullptr, "ncclCommSplit with color {} gave no communicator", color);
  return std::unique_ptr<Communicator>(new NcclCommunicator(out, std::move(twin), device_, compute_));
}

namespace {

std::unique_ptr<MpiCommunicator> as_mpi(std::unique_ptr<Communicator> c) {
  auto* mpi = dynamic_cast<MpiCommunicator*>(c.get());
  SY_CHECK(mpi != nullptr, "the MPI twin's split is not an MpiCommunicator");
  c.release();
  return std::unique_ptr<MpiCommunicator>(mpi);
}

}  // namespace

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key) {
  SY_CHECK(color >= 0, "NCCL split color {} (must be >= 0: every rank joins a group)", color);
  auto twin = as_mpi(mpi_->split(color, key));  // MPI orders ties by rank; NCCL too
  return split_with(std::move(twin), color, key);
}

std::unique_ptr<Communicator> NcclCommunicator::split_shared_memory() {
  auto node = as_mpi(mpi_->split_shared_memory());  // ordered by rank here
  int64_t color = rank_;                            // the node's lowest rank here names the node
  node->broadcast(&color, sizeof color, 0);
  return split_with(std::move(node), static_cast<int>(color), rank_);
}

std::unique_ptr<Communicator> make_nccl_communicator(MpiCommunicator& mpi, int device, void* compute_stream) {
  const int devices = core::cuda_device_count();
  if (device < 0 || device >= devices)
    throw_usage("NCCL communicator on cuda:{} asked for, but this process sees {} GPU(s)", device, devices);
  return std::make_unique<NcclCommunicator>(mpi, device, compute_stream);
}

}  // namespace switchyard::parallel
