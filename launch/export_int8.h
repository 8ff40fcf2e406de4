// launch/export_int8.h: `switchyard export --quantize int8`, per-output-channel symmetric
// weight-only int8 of the linear weights, and the eval-loss report before / after.
//
// Quantized: every linear weight [out, in] (attention q/k/v/o projections, routed experts, the
// shared expert, dense MLPs, lm_head). Kept in --dtype: norms, embeddings, routers (gate,
// shared_expert_gate), biases.
//   scale[c] = max_j |W[c, j]| / 127 (fp32 arithmetic); q = rint(W / scale) (fp32 division, ties to
//   even), clamped to [-127, 127]; a row of zeros gets scale 0 and q 0. Dequantized: q * scale.
// In the safetensors: `<name>` I8 [out, in] and `<name>_scale` F32 [out]; config.json gets
// "quantization_config": {"quant_method": "switchyard_int8_weight_only", "bits": 8,
// "group": "per_channel"}. The --init-from loader (core/formats/hf_model.cpp) dequantizes an I8
// tensor that has a `_scale` companion.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/config.h"

namespace switchyard::launch {

// Whether the HF tensor `name` of that shape is quantized by --quantize int8.
bool int8_quantized_tensor(const std::string& name, const std::vector<int64_t>& shape);

struct Int8Tensor {
  std::vector<int8_t> q;      // [rows, cols]
  std::vector<float> scale;   // [rows]
};
Int8Tensor quantize_int8(const float* w, int64_t rows, int64_t cols);

// The config.json entry.
nlohmann::ordered_json int8_quantization_config();

// Mean eval loss of the fp32 weights `before` and of the model folder `after_dir` (read with the
// --init-from loader, so dequantized) over the first `windows` windows of `seq_len`+1 tokens of
// `split` of the token file `data` (an llm.c shard is read whole). Returns the JSON report line.
nlohmann::ordered_json int8_eval_report(const core::ModelConfig& model, const std::vector<float>& before,
                                        const std::string& after_dir, const std::string& data,
                                        const std::string& split, int64_t windows, int64_t seq_len);

}  // namespace switchyard::launch
