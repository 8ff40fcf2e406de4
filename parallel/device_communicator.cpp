// parallel/device_communicator.cpp: see device_communicator.h.
#include "parallel/device_communicator.h"

#include "parallel/nccl_communicator.h"

namespace switchyard::parallel {

std::unique_ptr<Communicator> make_device_communicator(MpiCommunicator& world, core::Backend& be) {
  if (be.device() < 0) return nullptr;
  return make_nccl_communicator(world, be.device(), be.stream());
}

}  // namespace switchyard::parallel
