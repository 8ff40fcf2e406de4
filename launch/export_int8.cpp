// launch/export_int8.cpp: see export_int8.h.
#include "launch/export_int8.h"

#include <algorithm>
#include <cmath>

#include "core/backend.h"
#include "core/error.h"
#include "data/token_source.h"
#include "launch/evaluate.h"
#include "launch/model_io.h"
#include "moe/model.h"

namespace switchyard::launch {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

bool int8_quantized_tensor(const std::string& name, const std::vector<int64_t>& shape) {
  if (shape.size() != 2) return false;
  // q/k/v/o_proj, gate/up/down_proj (dense MLP, shared expert, qwen experts), mixtral w1/w2/w3
  return ends_with(name, "_proj.weight") || name.find(".experts.") != std::string::npos ||
         name == "lm_head.weight";
}

Int8Tensor quantize_int8(const float* w, int64_t rows, int64_t cols) {
  Int8Tensor t;
  t.q.resize(static_cast<size_t>(rows * cols));
  t.scale.resize(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = w + r * cols;
    float amax = 0.0f;
    for (int64_t j = 0; j < cols; ++j) amax = std::max(amax, std::fabs(row[j]));
    const float scale = amax / 127.0f;
    t.scale[static_cast<size_t>(r)] = scale;
    int8_t* q = t.q.data() + r * cols;
    for (int64_t j = 0; j < cols; ++j) {
      const float v = scale > 0.0f ? std::nearbyint(row[j] / scale) : 0.0f;
      q[j] = static_cast<int8_t>(std::clamp(v, -127.0f, 127.0f));
    }
  }
  return t;
}

nlohmann::ordered_json int8_quantization_config() {
  return {{"quant_method", "switchyard_int8_weight_only"}, {"bits", 8}, {"group", "per_channel"}};
}

nlohmann::ordered_json int8_eval_report(const core::ModelConfig& model, const std::vector<float>& before,
                                        const std::string& after_dir, const std::string& data,
                                        const std::string& split, int64_t windows, int64_t seq_len) {
  const int64_t T = seq_len > 0 ? seq_len : model.max_seq_len;
  if (T > model.max_seq_len)
    throw_usage("export --eval-seq-len {} exceeds the model's max_seq_len {}", T, model.max_seq_len);
  auto source = data::open_token_source(data, split);
  const LoadedModel after = load_hf_model(after_dir);
  auto backend = core::make_backend(core::Device::cpu);
  const int64_t batch = std::max<int64_t>(1, std::min<int64_t>(windows, 4));
  // the export's config may differ in layout (qwen2_moe adds zero q/k/v biases), so one model each
  moe::Model mb(*backend, model, batch, T);
  mb.set_params_from_host(before.data());
  const EvalResult b = evaluate(mb, *source, T, batch, windows);
  moe::Model ma(*backend, after.config, batch, T);
  ma.set_params_from_host(after.params.data());
  const EvalResult a = evaluate(ma, *source, T, batch, windows);
  if (b.tokens == 0)
    throw_usage("export --eval-data {}: no complete window of {} tokens to evaluate", data, T + 1);
  return {{"quantize", "int8"},       {"eval_data", data},         {"split", split},
          {"windows", b.windows},
          {"tokens", b.tokens},       {"loss_before", b.loss},     {"loss_after", a.loss},
          {"relative_change", (a.loss - b.loss) / b.loss}};
}

}  // namespace switchyard::launch
