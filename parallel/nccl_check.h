// parallel/nccl_check.h: SY_NCCL_CHECK(call) throws an internal switchyard::Error with file, line,
// the call, NCCL's error string and its last-error message. Needs nccl.h (SWITCHYARD_HAVE_NCCL).
#pragma once

#include <nccl.h>

#include "core/error.h"

namespace switchyard::parallel {

// Throws unless result == ncclSuccess (ncclInProgress too: Switchyard's communicators block).
[[noreturn]] void nccl_fail(ncclResult_t result, const char* what, const char* file, int line);
inline void nccl_check(ncclResult_t result, const char* what, const char* file, int line) {
  if (result != ncclSuccess) nccl_fail(result, what, file, line);
}

}  // namespace switchyard::parallel

#define SY_NCCL_CHECK(call) ::switchyard::parallel::nccl_check((call), #call, __FILE__, __LINE__)
