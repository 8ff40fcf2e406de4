// parallel/no_nccl.cpp: make_nccl_communicator in a build without NCCL (no CUDA backend, or no
// nccl.h / libnccl under the CUDA toolkit).
#include "core/error.h"
#include "parallel/nccl_communicator.h"

namespace switchyard::parallel {

std::unique_ptr<Communicator> make_nccl_communicator(MpiCommunicator& mpi, int device, void* compute_stream) {
  throw_usage("NCCL communicator on cuda:{} asked for, but this build has no NCCL (it needs the CUDA "
              "backend and nccl.h / libnccl in the CUDA toolkit); use the MPI communicator", device);
}

}  // namespace switchyard::parallel
