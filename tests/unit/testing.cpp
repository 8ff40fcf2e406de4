#include "tests/unit/testing.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <random>

namespace switchyard::test {

std::unique_ptr<core::Backend> test_backend(int threads) {
  const char* env = std::getenv("SWITCHYARD_TEST_BACKEND");
  const std::string name = env && *env ? env : "cpu";
  const auto device = core::value_named<core::Device>(name);
  if (!device)
    throw_usage("SWITCHYARD_TEST_BACKEND={}: expected one of {}", name, core::names_of<core::Device>());
  return core::make_backend(*device, threads, 0, "SWITCHYARD_TEST_BACKEND");
}

core::ModelConfig small_moe_model(int64_t n_layers) {
  core::ModelConfig m;
  m.vocab_size = 64;
  m.d_model = 32;
  m.n_layers = n_layers;
  m.n_heads = 4;
  m.n_kv_heads = 2;
  m.max_seq_len = 16;
  m.moe.n_experts = 4;
  m.moe.top_k = 2;
  m.moe.expert_size = 24;
  m.moe.z_loss_coef = 0.001;
  return m;
}

std::vector<float> randn(int64_t n, uint64_t seed, float stddev) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.f, stddev);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

double max_rel_error(const float* a, const float* b, int64_t n, double floor) {
  double worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    double e = std::abs(static_cast<double>(a[i]) - b[i]) / std::max(std::abs(static_cast<double>(b[i])), floor);
    if (!(e <= worst)) worst = e;  // NaN propagates as worst
  }
  return worst;
}

std::filesystem::path temp_dir(const std::string& name) {
  auto p = std::filesystem::path(SWITCHYARD_BINARY_DIR) / "test-tmp" / name;
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

}  // namespace switchyard::test
