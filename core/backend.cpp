// core/backend.cpp: the one place that chooses the backend a command runs on.
#include "core/backend.h"

#include <cstdlib>
#include <string_view>

#include "core/cuda/cuda.h"
#include "core/device_check_backend.h"
#include "core/error.h"

namespace switchyard::core {

std::unique_ptr<Backend> make_backend(Device device, int threads, int local_rank, std::string_view key) {
  if (device == Device::cpu) {
    // test hook: the CPU backend behind the device-discipline checker (core/device_check_backend.h),
    // so a whole run proves that nothing touches backend memory from the host
    if (const char* check = std::getenv("SWITCHYARD_TEST_DEVICE_CHECK"); check && std::string_view(check) == "1")
      return make_device_check_backend(make_cpu_backend(threads));
    return make_cpu_backend(threads);
  }
  const int gpus = cuda_device_count();
  if (gpus == 0)
    throw_usage("{}: cuda, but no CUDA GPU is usable in this process (no GPU, no driver, or a build "
                "without the CUDA toolkit); run on a GPU machine or set {}: cpu",
                key, key);
  return make_cuda_backend(local_rank % gpus);  // ranks of one machine share its GPUs round-robin
}

}  // namespace switchyard::core
