// parallel/collectives.h: the host-memory MPI collectives the single-group (data-parallel) trainer
// needs. Counts above INT_MAX are split into chunks. Errors throw with the MPI error string.
#pragma once

#include <mpi.h>

#include <cstdint>

namespace switchyard::parallel {

void allreduce_sum(float* data, int64_t n, MPI_Comm comm);
void allreduce_sum(double* data, int64_t n, MPI_Comm comm);
void allreduce_sum(int64_t* data, int64_t n, MPI_Comm comm);
// Logical OR of a flag over the communicator (every rank learns whether any rank failed).
bool any_rank(bool flag, MPI_Comm comm);

}  // namespace switchyard::parallel
