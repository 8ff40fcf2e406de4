// core/backend.cpp: the one place that chooses the backend a command runs on.
#include "core/backend.h"

namespace switchyard::core {

std::unique_ptr<Backend> make_backend(int threads) { return make_cpu_backend(threads); }

}  // namespace switchyard::core
