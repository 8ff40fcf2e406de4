// parallel/mpi_check.h: SY_MPI_CHECK(call), the check every MPI call of parallel/ goes through.
// A failing call throws an internal switchyard::Error with file, line, the call and MPI's own
// error string. Communicators made here use MPI_ERRORS_RETURN, so failures reach this check
// instead of aborting inside MPI.
#pragma once

#include <mpi.h>

#include "core/error.h"

namespace switchyard::parallel {

// Throws (internal error) when rc is not MPI_SUCCESS; `what` is the failing call as written.
void mpi_check(int rc, const char* what, const char* file, int line);

}  // namespace switchyard::parallel

#define SY_MPI_CHECK(call) ::switchyard::parallel::mpi_check((call), #call, __FILE__, __LINE__)
