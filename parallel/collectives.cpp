#include "parallel/collectives.h"

#include <algorithm>
#include <climits>

#include "core/error.h"
#include "parallel/mpi_check.h"
#include "parallel/watchdog.h"

namespace switchyard::parallel {
namespace {

template <class T>
void allreduce_chunks(T* data, int64_t n, MPI_Datatype type, MPI_Op op, MPI_Comm comm) {
  int size = 1;
  MPI_Comm_size(comm, &size);
  if (size == 1) return;
  const WaitScope wait("an all-reduce");
  for (int64_t begin = 0; begin < n; begin += INT_MAX / 2) {
    const int count = static_cast<int>(std::min<int64_t>(INT_MAX / 2, n - begin));
    SY_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data + begin, count, type, op, comm));
  }
}

}  // namespace

void allreduce_sum(float* data, int64_t n, MPI_Comm comm) { allreduce_chunks(data, n, MPI_FLOAT, MPI_SUM, comm); }
void allreduce_sum(double* data, int64_t n, MPI_Comm comm) { allreduce_chunks(data, n, MPI_DOUBLE, MPI_SUM, comm); }
void allreduce_sum(int64_t* data, int64_t n, MPI_Comm comm) { allreduce_chunks(data, n, MPI_INT64_T, MPI_SUM, comm); }

bool any_rank(bool flag, MPI_Comm comm) {
  int v = flag ? 1 : 0;
  allreduce_chunks(&v, 1, MPI_INT, MPI_LOR, comm);
  return v != 0;
}

}  // namespace switchyard::parallel
