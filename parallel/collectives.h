// parallel/collectives.h: a collective over a raw MPI_Comm for code that runs before or without a
// Communicator (the MPI test runner). Everything else uses parallel/communicator.h.
#pragma once

#include <mpi.h>

#include <cstdint>

namespace switchyard::parallel {

// Logical OR of a flag over the communicator (every rank learns whether any rank failed).
bool any_rank(bool flag, MPI_Comm comm);

}  // namespace switchyard::parallel
