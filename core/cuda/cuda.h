// core/cuda/cuda.h: the entry points of the CUDA backend, declared in every build. A build without
// CUDA (SWITCHYARD_CUDA=OFF, or no nvcc) links core/cuda/no_cuda.cpp instead: no devices, and
// make_cuda_backend() is a usage error that says so.
#pragma once

#include <memory>

#include "core/backend.h"

namespace switchyard::core {

// GPUs this process can use; 0 without a driver, without a GPU or in a build without CUDA. Never
// throws and never crashes (a failing cudaGetDeviceCount counts as 0).
int cuda_device_count();
// The CUDA backend on GPU `device` (0-based, < cuda_device_count()), with its own stream.
std::unique_ptr<Backend> make_cuda_backend(int device = 0);

}  // namespace switchyard::core
