// core/cuda/no_cuda.cpp: core/cuda/cuda.h in a build without the CUDA backend.
#include "core/cuda/cuda.h"
#include "core/error.h"

namespace switchyard::core {

int cuda_device_count() { return 0; }

std::unique_ptr<Backend> make_cuda_backend(int device) {
  throw_usage("device cuda:{} asked for, but this build has no CUDA backend (configured with "
              "SWITCHYARD_CUDA=OFF or without nvcc); rebuild with the CUDA toolkit or use the cpu "
              "device", device);
}

}  // namespace switchyard::core
