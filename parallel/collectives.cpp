#include "parallel/collectives.h"

#include "core/error.h"
#include "parallel/mpi_check.h"
#include "parallel/watchdog.h"

namespace switchyard::parallel {

bool any_rank(bool flag, MPI_Comm comm) {
  int v = flag ? 1 : 0;
  int size = 1;
  MPI_Comm_size(comm, &size);
  if (size == 1) return flag;
  const WaitScope wait("an all-reduce");
  SY_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_LOR, comm));
  return v != 0;
}

}  // namespace switchyard::parallel
