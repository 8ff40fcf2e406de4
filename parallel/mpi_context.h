// parallel/mpi_context.h: MPI start-up and shutdown for the whole job, rank and size of the world,
// and the job-wide abort that makes a failing rank end every rank.
#pragma once

#include <string>

namespace switchyard::parallel {

class MpiContext {
 public:
  MpiContext(int* argc, char*** argv);  // MPI_Init unless already initialised
  ~MpiContext();                        // MPI_Finalize
  MpiContext(const MpiContext&) = delete;
  MpiContext& operator=(const MpiContext&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  // Ends every rank of the job with exit code `code` (MPI_Abort when size > 1).
  [[noreturn]] void abort_job(int code) const;

 private:
  int rank_ = 0, size_ = 1;
  bool owns_ = false;
};

}  // namespace switchyard::parallel
