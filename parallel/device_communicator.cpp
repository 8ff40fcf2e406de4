// parallel/device_communicator.cpp: see device_communicator.h.
#include "parallel/device_communicator.h"

#include "core/device_check_backend.h"
#include "parallel/device_check_communicator.h"
#include "parallel/nccl_communicator.h"

namespace switchyard::parallel {

std::unique_ptr<Communicator> make_device_communicator(MpiCommunicator& world, core::Backend& be) {
  if (auto registry = core::device_check_registry(be)) return make_device_check_communicator(world, registry);
  if (be.device() < 0) return nullptr;
  return make_nccl_communicator(world, be.device(), be.stream());
}

}  // namespace switchyard::parallel
