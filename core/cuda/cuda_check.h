// core/cuda/cuda_check.h: check macros for CUDA runtime and cuBLAS calls (host code only). A
// failing call throws an internal switchyard::Error with file, line, the call and the library's
// own name and description of the error.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/error.h"

#define SY_CUDA_CHECK(call)                                                                       \
  do {                                                                                            \
    const cudaError_t sy_err_ = (call);                                                           \
    if (sy_err_ != cudaSuccess) {                                                                 \
      ::switchyard::throw_internal("{}:{}: {} failed: {} ({})", __FILE__, __LINE__, #call,       \
                                   cudaGetErrorName(sy_err_), cudaGetErrorString(sy_err_));       \
    }                                                                                             \
  } while (0)

#define SY_CUBLAS_CHECK(call)                                                                     \
  do {                                                                                            \
    const cublasStatus_t sy_st_ = (call);                                                         \
    if (sy_st_ != CUBLAS_STATUS_SUCCESS) {                                                        \
      ::switchyard::throw_internal("{}:{}: {} failed: {} ({})", __FILE__, __LINE__, #call,       \
                                   cublasGetStatusName(sy_st_), cublasGetStatusString(sy_st_));   \
    }                                                                                             \
  } while (0)

// After a kernel launch: reports a bad launch configuration (errors inside the kernel surface at
// the next synchronising call).
#define SY_CUDA_CHECK_LAUNCH() SY_CUDA_CHECK(cudaGetLastError())
