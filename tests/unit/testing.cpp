#include "tests/unit/testing.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>
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

std::vector<double> fd_grad(std::vector<float>& v, const std::vector<int64_t>& coords, float eps,
                            const std::function<double()>& f) {
  std::vector<double> g;
  for (int64_t i : coords) {
    const float v0 = v[i];
    v[i] = v0 + eps;
    const float up = v[i];
    const double fp = f();
    v[i] = v0 - eps;
    const float dn = v[i];
    const double fm = f();
    v[i] = v0;
    g.push_back((fp - fm) / (static_cast<double>(up) - dn));
  }
  return g;
}

std::vector<int64_t> all_coords(int64_t n) {
  std::vector<int64_t> c(static_cast<size_t>(n));
  std::iota(c.begin(), c.end(), 0);
  return c;
}

void expect_grad_close(const std::vector<double>& fd, const std::vector<float>& analytic,
                       const std::vector<int64_t>& coords, double rtol, double atol_frac,
                       const std::string& what) {
  double scale = 0;
  for (double v : fd) scale = std::max(scale, std::abs(v));
  const double atol = atol_frac * std::max(scale, 1e-6);
  int bad = 0;
  for (size_t j = 0; j < coords.size(); ++j) {
    const double a = analytic[static_cast<size_t>(coords[j])], b = fd[j];
    if (!(std::abs(a - b) <= atol + rtol * std::abs(b))) {
      if (++bad <= 5)
        ADD_FAILURE() << what << ": coordinate " << coords[j] << " analytic " << a << " fd " << b;
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << coords.size() << " gradients differ";
}

}  // namespace switchyard::test
