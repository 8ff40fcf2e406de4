// parallel/device_communicator.h: the communicator that moves a backend's memory between ranks,
// chosen in this one place. Host-memory backends (the CPU) need none: the MPI world serves host
// and backend memory alike. A CUDA backend gets the NCCL communicator on its GPU, ordered against
// its stream; its host() is the MPI world. The device-discipline checker's backend (a test hook)
// gets the checking communicator over the world.
#pragma once

#include <memory>

#include "core/backend.h"
#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"

namespace switchyard::parallel {

// Collective over `world` (which must outlive the result). Null where `be` computes in host memory.
// A usage error where `be` is on a GPU and this build has no NCCL.
std::unique_ptr<Communicator> make_device_communicator(MpiCommunicator& world, core::Backend& be);

}  // namespace switchyard::parallel
