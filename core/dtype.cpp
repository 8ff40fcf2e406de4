// core/dtype.cpp: names of the compute dtypes (core/backend.h), spelled as train.precision spells
// them in the config.
#include "core/backend.h"

namespace switchyard::core {

const char* dtype_name(Dtype d) {
  switch (d) {
    case Dtype::f32: return "fp32";
    case Dtype::bf16: return "bf16";
    case Dtype::f16: return "fp16";
  }
  return "unknown";
}

}  // namespace switchyard::core
