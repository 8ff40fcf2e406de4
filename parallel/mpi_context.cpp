// parallel/mpi_context.cpp: MPI start-up, shutdown and job-wide abort.
#include "parallel/mpi_context.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>

namespace switchyard::parallel {

MpiContext::MpiContext(int* argc, char*** argv) {
  int initialised = 0;
  MPI_Initialized(&initialised);
  if (!initialised) {
    MPI_Init(argc, argv);
    owns_ = true;
  }
  // Errors on the world communicator return codes instead of aborting silently.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
}

MpiContext::~MpiContext() {
  if (owns_) {
    int finalised = 0;
    MPI_Finalized(&finalised);
    if (!finalised) MPI_Finalize();
  }
}

void MpiContext::abort_job(int code) const {
  std::fflush(stdout);
  std::fflush(stderr);
  if (size_ > 1) MPI_Abort(MPI_COMM_WORLD, code);
  if (owns_) MPI_Finalize();
  std::exit(code);
}

}  // namespace switchyard::parallel
