// tests/unit/test_golden.cpp: the C++ model against the independent PyTorch reference.
// tests/golden/make_golden.py (Debian's python3-torch, float64) writes Hugging Face weights and the
// loss, logits, expert counts and every parameter gradient of one batch, plus a 10-step AdamW
// trajectory. Here the weights come in through the --init-from loader (launch::load_hf_model) and
// every tensor is compared in fp32.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>

#include "core/backend.h"
#include "core/safetensors.h"
#include "launch/model_io.h"
#include "moe/model.h"
#include "optim/adamw.h"
#include "optim/lr_schedule.h"

namespace sy = switchyard;
namespace fs = std::filesystem;

namespace {

fs::path golden_root() {
  if (const char* env = std::getenv("SWITCHYARD_GOLDEN_DIR")) return env;
  return fs::path(SWITCHYARD_BINARY_DIR) / "golden";
}

std::vector<float> f32(const sy::core::SafetensorsFile& f, const std::string& name) {
  const auto& t = f.at(name);
  std::vector<float> v(static_cast<size_t>(t.numel()));
  sy::core::to_f32(t, v.data());
  return v;
}

std::vector<int32_t> i32(const sy::core::SafetensorsFile& f, const std::string& name) {
  const auto& t = f.at(name);
  EXPECT_EQ(t.dtype, "I32");
  std::vector<int32_t> v(static_cast<size_t>(t.numel()));
  std::memcpy(v.data(), t.data, v.size() * sizeof(int32_t));
  return v;
}

// ||a - b|| / ||b||: the tolerance is stated per tensor in this norm.
double norm_rel(const float* a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

double meta(const sy::core::SafetensorsFile& f, const std::string& key) { return std::stod(f.metadata().at(key)); }

class Golden : public ::testing::TestWithParam<std::string> {};

// Every tensor within 1e-5 (norm-relative) of the float64 reference.
constexpr double kTol = 1e-5;

TEST_P(Golden, LossLogitsCountsAndEveryGradient) {
  const fs::path dir = golden_root() / GetParam();
  ASSERT_TRUE(fs::exists(dir / "golden.safetensors")) << "run tests/golden/make_golden.py first: " << dir;
  sy::core::SafetensorsFile g((dir / "golden.safetensors").string());
  auto loaded = sy::launch::load_hf_model((dir / "model").string());
  loaded.config.moe.aux_loss_coef = meta(g, "aux_loss_coef");
  loaded.config.moe.z_loss_coef = meta(g, "z_loss_coef");
  const auto tokens = i32(g, "tokens"), targets = i32(g, "targets");
  const int64_t B = g.at("tokens").shape[0], T = g.at("tokens").shape[1];

  auto be = sy::core::make_cpu_backend(2);
  sy::moe::Model model(*be, loaded.config, B, T);
  model.set_params_from_host(loaded.params.data());
  const auto r = model.forward(tokens.data(), targets.data(), B, T);
  EXPECT_NEAR(r.loss, f32(g, "loss")[0], kTol * std::abs(f32(g, "loss")[0]));
  EXPECT_NEAR(r.ce, f32(g, "ce")[0], kTol * std::abs(f32(g, "ce")[0]));
  EXPECT_NEAR(r.aux, f32(g, "aux")[0], kTol * std::abs(f32(g, "aux")[0]) + 1e-9);
  EXPECT_NEAR(r.z, f32(g, "z")[0], kTol * std::abs(f32(g, "z")[0]) + 1e-9);
  EXPECT_LT(norm_rel(model.logits(), f32(g, "logits")), kTol);

  const auto counts = i32(g, "expert_counts");
  const auto ours = model.expert_counts();
  const int64_t E = loaded.config.moe.n_experts;
  ASSERT_EQ(static_cast<int64_t>(counts.size()), model.num_moe_layers() * E);
  for (size_t l = 0; l < ours.size(); ++l)
    for (int64_t e = 0; e < E; ++e) EXPECT_EQ(ours[l][e], counts[l * E + e]) << "layer " << l << " expert " << e;

  model.zero_grads();
  model.backward();
  std::vector<float> grads(static_cast<size_t>(model.num_params()));
  be->copy_to_host(grads.data(), model.grads(), grads.size() * sizeof(float));
  int compared = 0;
  for (const auto& p : model.table().specs()) {
    const auto ref = f32(g, "grad." + p.name);
    ASSERT_EQ(static_cast<int64_t>(ref.size()), p.numel) << p.name;
    double ref_norm = 0;
    for (float x : ref) ref_norm += static_cast<double>(x) * x;
    if (ref_norm == 0) {  // e.g. an expert that received no tokens: exactly zero
      for (int64_t i = 0; i < p.numel; ++i) ASSERT_EQ(grads[p.offset + i], 0.0f) << p.name;
    } else {
      EXPECT_LT(norm_rel(grads.data() + p.offset, ref), kTol) << p.name;
    }
    ++compared;
  }
  EXPECT_EQ(compared, static_cast<int>(model.table().size()));
}

TEST_P(Golden, TenStepAdamWTrajectory) {
  const fs::path dir = golden_root() / GetParam();
  ASSERT_TRUE(fs::exists(dir / "golden.safetensors")) << dir;
  sy::core::SafetensorsFile g((dir / "golden.safetensors").string());
  auto loaded = sy::launch::load_hf_model((dir / "model").string());
  loaded.config.moe.aux_loss_coef = meta(g, "aux_loss_coef");
  loaded.config.moe.z_loss_coef = meta(g, "z_loss_coef");
  sy::core::OptimConfig oc;
  oc.lr = meta(g, "lr");
  oc.min_lr = meta(g, "min_lr");
  oc.warmup_steps = static_cast<int64_t>(meta(g, "warmup_steps"));
  oc.weight_decay = meta(g, "weight_decay");
  oc.beta1 = meta(g, "beta1");
  oc.beta2 = meta(g, "beta2");
  oc.eps = meta(g, "eps");
  oc.grad_clip = meta(g, "grad_clip");
  const int64_t S = static_cast<int64_t>(meta(g, "steps"));
  const auto tokens = i32(g, "traj.tokens"), targets = i32(g, "traj.targets");
  const auto ref_loss = f32(g, "traj.loss"), ref_norm = f32(g, "traj.grad_norm"), ref_lr = f32(g, "traj.lr");
  const int64_t B = g.at("traj.tokens").shape[1], T = g.at("traj.tokens").shape[2];

  auto be = sy::core::make_cpu_backend(2);
  sy::moe::Model model(*be, loaded.config, B, T);
  model.set_params_from_host(loaded.params.data());
  sy::optim::AdamW adamw(*be, model.table(), oc);
  for (int64_t s = 0; s < S; ++s) {
    model.zero_grads();
    const auto r = model.forward(tokens.data() + s * B * T, targets.data() + s * B * T, B, T);
    model.backward();
    const double norm = sy::optim::grad_norm(*be, model.grads(), model.num_params());
    const double lr = sy::optim::lr_at(oc, s, S);
    EXPECT_NEAR(lr, ref_lr[s], 1e-6 * ref_lr[s]) << "step " << s;
    // The trajectory compounds fp32 rounding through ten Adam steps: 1e-4 relative.
    EXPECT_NEAR(r.loss, ref_loss[s], 1e-4 * std::abs(ref_loss[s])) << "step " << s;
    EXPECT_NEAR(norm, ref_norm[s], 1e-4 * std::abs(ref_norm[s])) << "step " << s;
    adamw.step(model.params(), model.grads(), lr, sy::optim::clip_coefficient(norm, oc.grad_clip));
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, Golden, ::testing::Values("mixtral_k2", "mixtral_k1", "qwen_shared"));

// The same weights stored as BF16 in two shards with an index: the loader converts them and the
// logits match the reference computed from the bf16-rounded weights.
TEST(GoldenLoader, Bf16ShardedCheckpoint) {
  const fs::path dir = golden_root() / "mixtral_k2";
  ASSERT_TRUE(fs::exists(dir / "golden_bf16_logits.safetensors")) << dir;
  sy::core::SafetensorsFile g((dir / "golden_bf16_logits.safetensors").string());
  auto loaded = sy::launch::load_hf_model((dir / "model_bf16_sharded").string());
  const auto tokens = i32(g, "tokens"), targets = i32(g, "targets");
  const int64_t B = g.at("tokens").shape[0], T = g.at("tokens").shape[1];
  auto be = sy::core::make_cpu_backend(2);
  sy::moe::Model model(*be, loaded.config, B, T);
  model.set_params_from_host(loaded.params.data());
  model.forward(tokens.data(), targets.data(), B, T);
  EXPECT_LT(norm_rel(model.logits(), f32(g, "logits")), kTol);
}

}  // namespace
