// core/cpu/cpu_requirements.cpp: the instruction-set level this build was compiled for
// (SWITCHYARD_ARCH, default x86-64-v3: AVX2, FMA, F16C, BMI2), checked on the CPU that runs it.
// Compiled for baseline x86-64 (core/CMakeLists.txt), and run as a constructor before any other
// static initialiser, so that a CPU without those instructions gets one clear line and exit 2
// instead of an "illegal instruction" crash somewhere later. Everything above that level (AVX-512,
// bf16, AMX) is detected where it is used (oneDNN at run time, core/cpu/bf16_matmul.h).
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/cpu/cpu_backend.h"

#ifndef SWITCHYARD_BUILD_ARCH
#define SWITCHYARD_BUILD_ARCH ""
#endif

namespace switchyard::core {
namespace {

int build_level() {
  const char* arch = SWITCHYARD_BUILD_ARCH;
  if (std::strncmp(arch, "x86-64-v", 8) == 0) return std::atoi(arch + 8);
  return std::strcmp(arch, "native") == 0 ? -1 : 1;  // native: the build machine's; not checkable by level
}

}  // namespace

const char* missing_cpu_feature() {
  __builtin_cpu_init();
  struct Feature {
    const char* name;
    int level;  // the lowest x86-64-vN that requires it
    bool present;
  };
#define SY_FEATURE(name, level) Feature{name, level, __builtin_cpu_supports(name) != 0}
  const Feature features[] = {SY_FEATURE("sse4.2", 2),   SY_FEATURE("popcnt", 2),   SY_FEATURE("avx", 3),
                              SY_FEATURE("avx2", 3),     SY_FEATURE("fma", 3),      SY_FEATURE("bmi", 3),
                              SY_FEATURE("bmi2", 3),     SY_FEATURE("f16c", 3),     SY_FEATURE("avx512f", 4),
                              SY_FEATURE("avx512bw", 4), SY_FEATURE("avx512dq", 4), SY_FEATURE("avx512vl", 4)};
#undef SY_FEATURE
  const int level = build_level();
  for (const Feature& f : features)
    if (f.level <= level && !f.present) return f.name;
  return nullptr;
}

namespace {
__attribute__((constructor(101))) void require_cpu_features() {
  if (const char* missing = missing_cpu_feature()) {
    std::fprintf(stderr,
                 "switchyard: error: this build needs an %s CPU and this CPU has no %s; rebuild with "
                 "SWITCHYARD_CMAKE_ARGS=-DSWITCHYARD_ARCH=x86-64-v2 (slower kernels) or run on a newer CPU\n",
                 SWITCHYARD_BUILD_ARCH, missing);
    std::_Exit(2);
  }
}
}  // namespace

}  // namespace switchyard::core
