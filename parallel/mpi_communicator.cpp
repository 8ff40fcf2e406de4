// parallel/mpi_communicator.cpp: Communicator over MPI on host memory (see the header for the
// mapping of each call to MPI).
#include "parallel/mpi_communicator.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "parallel/mpi_check.h"
#include "parallel/watchdog.h"

namespace switchyard::parallel {

void mpi_check(int rc, const char* what, const char* file, int line) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) len = 0;
  throw_internal("{}:{}: {} failed: {} (MPI error {})", file, line, what,
                 std::string(msg, static_cast<size_t>(len)), rc);
}

namespace {

bool mpi_finalized() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  return finalized != 0;
}

int to_int(int64_t v, const char* what) {
  SY_CHECK(v >= 0 && v <= INT_MAX, "{} = {} does not fit one MPI call", what, v);
  return static_cast<int>(v);
}

}  // namespace

std::unique_ptr<MpiCommunicator> MpiCommunicator::world() {
  int initialised = 0;
  SY_MPI_CHECK(MPI_Initialized(&initialised));
  SY_CHECK(initialised, "MpiCommunicator::world() needs MPI initialised (parallel::MpiContext)");
  MPI_Comm dup = MPI_COMM_NULL;
  SY_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &dup));
  return std::make_unique<MpiCommunicator>(dup, true);
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, bool owns) : comm_(comm), owns_(owns) {
  SY_CHECK(comm != MPI_COMM_NULL, "MpiCommunicator over MPI_COMM_NULL");
  SY_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  SY_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  SY_MPI_CHECK(MPI_Comm_size(comm_, &size_));
}

MpiCommunicator::~MpiCommunicator() {
  if (mpi_finalized()) return;
  // Requests never waited for (an exception unwound past wait()): complete them quietly, a
  // destructor cannot report.
  for (auto& [id, reqs] : pending_) MPI_Waitall(static_cast<int>(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE);
  if (owns_) MPI_Comm_free(&comm_);
}

void MpiCommunicator::set_max_count(int64_t max_count) {
  SY_CHECK(max_count >= 1 && max_count <= INT_MAX, "max_count {} outside [1, INT_MAX]", max_count);
  max_count_ = max_count;
}

void MpiCommunicator::barrier() {
  const WaitScope wait("a barrier");
  SY_MPI_CHECK(MPI_Barrier(comm_));
}

template <class T>
void MpiCommunicator::allreduce_chunks(T* data, int64_t n, MPI_Datatype type, MPI_Op op) {
  SY_CHECK(n >= 0, "allreduce of {} elements", n);
  if (size_ == 1) return;
  const WaitScope wait("an all-reduce");
  for (int64_t begin = 0; begin < n; begin += max_count_) {
    const int count = static_cast<int>(std::min(max_count_, n - begin));
    SY_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data + begin, count, type, op, comm_));
  }
}

void MpiCommunicator::allreduce_sum(float* data, int64_t n) { allreduce_chunks(data, n, MPI_FLOAT); }
void MpiCommunicator::allreduce_sum(double* data, int64_t n) { allreduce_chunks(data, n, MPI_DOUBLE); }
void MpiCommunicator::allreduce_sum(int64_t* data, int64_t n) { allreduce_chunks(data, n, MPI_INT64_T); }

void MpiCommunicator::allreduce_max(int64_t* data, int64_t n) { allreduce_chunks(data, n, MPI_INT64_T, MPI_MAX); }
void MpiCommunicator::allreduce_min(int64_t* data, int64_t n) { allreduce_chunks(data, n, MPI_INT64_T, MPI_MIN); }

void MpiCommunicator::broadcast(void* data, int64_t bytes, int root) {
  SY_CHECK(root >= 0 && root < size_, "broadcast from rank {} of {}", root, size_);
  const WaitScope wait("a broadcast");
  for (int64_t begin = 0; begin < bytes; begin += max_count_) {
    const int count = static_cast<int>(std::min(max_count_, bytes - begin));
    SY_MPI_CHECK(MPI_Bcast(static_cast<char*>(data) + begin, count, MPI_BYTE, root, comm_));
  }
}

Request MpiCommunicator::allreduce_sum_async(float* data, int64_t n) {
  SY_CHECK(n >= 0, "allreduce of {} elements", n);
  std::vector<MPI_Request> reqs;
  if (size_ > 1) {
    for (int64_t begin = 0; begin < n; begin += max_count_) {
      const int count = static_cast<int>(std::min(max_count_, n - begin));
      MPI_Request r = MPI_REQUEST_NULL;
      SY_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data + begin, count, MPI_FLOAT, MPI_SUM, comm_, &r));
      reqs.push_back(r);
    }
  }
  Request request{next_request_++};
  pending_.emplace(request.id, std::move(reqs));
  return request;
}

void MpiCommunicator::wait(Request& request) {
  if (!request.pending()) return;
  auto it = pending_.find(request.id);
  SY_CHECK(it != pending_.end(), "wait on request {} that this communicator did not start (or already completed)",
           request.id);
  std::vector<MPI_Request> reqs = std::move(it->second);
  pending_.erase(it);
  request.id = -1;
  const WaitScope wait("the wait for an asynchronous all-reduce (gradient reduction)");
  if (!reqs.empty()) SY_MPI_CHECK(MPI_Waitall(static_cast<int>(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE));
}

void MpiCommunicator::allgather(const int64_t* send, int64_t* recv, int64_t count) {
  to_int(count * size_, "allgather count");
  const WaitScope wait("an all-gather");
  SY_MPI_CHECK(MPI_Allgather(send, static_cast<int>(count), MPI_INT64_T, recv, static_cast<int>(count),
                             MPI_INT64_T, comm_));
}

void MpiCommunicator::alltoall(const int64_t* send, int64_t* recv, int64_t count) {
  to_int(count * size_, "alltoall count");
  const WaitScope wait("an all-to-all (token counts)");
  SY_MPI_CHECK(MPI_Alltoall(send, static_cast<int>(count), MPI_INT64_T, recv, static_cast<int>(count),
                            MPI_INT64_T, comm_));
}

void MpiCommunicator::alltoallv(const void* send, std::span<const int64_t> send_counts,
                                std::span<const int64_t> send_displs, void* recv,
                                std::span<const int64_t> recv_counts,
                                std::span<const int64_t> recv_displs) {
  const auto n = static_cast<size_t>(size_);
  SY_CHECK(send_counts.size() == n && send_displs.size() == n && recv_counts.size() == n &&
               recv_displs.size() == n,
           "alltoallv spans must have {} entries", n);
  const auto* src = static_cast<const std::byte*>(send);
  auto* dst = static_cast<std::byte*>(recv);
  constexpr int kTag = 7301;  // one tag: MPI's non-overtaking rule keeps chunks and calls in order
  p2p_.clear();
  for (int r = 0; r < size_; ++r) {  // receives first, so eager sends find them posted
    if (r == rank_ || recv_counts[r] == 0) continue;
    for (int64_t off = 0; off < recv_counts[r]; off += max_count_) {
      const int count = static_cast<int>(std::min(max_count_, recv_counts[r] - off));
      p2p_.push_back(MPI_REQUEST_NULL);
      SY_MPI_CHECK(MPI_Irecv(dst + recv_displs[r] + off, count, MPI_BYTE, r, kTag, comm_, &p2p_.back()));
    }
  }
  // Sends in a rotated order (rank+1, rank+2, ...) so that not every rank targets rank 0 first.
  for (int step = 1; step < size_; ++step) {
    const int r = (rank_ + step) % size_;
    if (send_counts[r] == 0) continue;
    for (int64_t off = 0; off < send_counts[r]; off += max_count_) {
      const int count = static_cast<int>(std::min(max_count_, send_counts[r] - off));
      p2p_.push_back(MPI_REQUEST_NULL);
      SY_MPI_CHECK(MPI_Isend(src + send_displs[r] + off, count, MPI_BYTE, r, kTag, comm_, &p2p_.back()));
    }
  }
  SY_CHECK(send_counts[rank_] == recv_counts[rank_], "alltoallv: {} bytes to self, {} expected from self",
           send_counts[rank_], recv_counts[rank_]);
  if (send_counts[rank_] > 0)
    std::memmove(dst + recv_displs[rank_], src + send_displs[rank_], static_cast<size_t>(send_counts[rank_]));
  const WaitScope wait("the token exchange (all-to-all of token rows)");
  if (!p2p_.empty())
    SY_MPI_CHECK(MPI_Waitall(static_cast<int>(p2p_.size()), p2p_.data(), MPI_STATUSES_IGNORE));
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
  MPI_Comm out = MPI_COMM_NULL;
  const WaitScope wait("a communicator split");
  SY_MPI_CHECK(MPI_Comm_split(comm_, color, key, &out));
  return std::make_unique<MpiCommunicator>(out, true);
}

std::unique_ptr<Communicator> MpiCommunicator::split_shared_memory() {
  MPI_Comm out = MPI_COMM_NULL;
  const WaitScope wait("a communicator split");
  SY_MPI_CHECK(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &out));
  return std::make_unique<MpiCommunicator>(out, true);
}

}  // namespace switchyard::parallel
