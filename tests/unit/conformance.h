// tests/unit/conformance.h: the harness of the backend conformance tests
// (test_backend_conformance.cpp, test_packed_conformance.cpp): the fixture Conformance, run on each
// backend ("cpu", "cuda", "device_check") with a CPU backend as the reference, buffers uploaded to
// both (Pair), fresh random inputs, NaN-poisoned outputs and the comparisons (relative L2 error,
// exact, bitwise).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "core/cuda/cuda.h"
#include "core/device_check_backend.h"
#include "core/error.h"
#include "core/half.h"
#include "tests/unit/testing.h"

namespace switchyard::core::conformance {

using test::randn;
inline constexpr double kTolF32 = 1e-5, kTolHalf = 5e-3;
inline const float kNaN = std::numeric_limits<float>::quiet_NaN();

// ||got - want|| / ||want|| (or ||got - want|| where want is 0); NaN or inf anywhere: +inf.
inline double rel_l2(const std::vector<float>& got, const std::vector<float>& want) {
  double d = 0, w = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double diff = static_cast<double>(got[i]) - want[i];
    d += diff * diff;
    w += static_cast<double>(want[i]) * want[i];
  }
  const double r = w > 0 ? std::sqrt(d / w) : std::sqrt(d);
  return std::isfinite(r) ? r : INFINITY;
}

// A buffer with the same contents on the backend under test and on the reference.
template <class T>
struct Pair {
  T* test = nullptr;
  T* ref = nullptr;
  int64_t n = 0;
};

// Pointer of pair p for the backend op() runs on.
template <class T>
T* on(const Pair<T>& p, bool ref) {
  return ref ? p.ref : p.test;
}

class Conformance : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "cuda") {
      if (cuda_device_count() == 0) GTEST_SKIP() << "skipped: no GPU";
      be_ = make_cuda_backend(0);
    } else if (GetParam() == "device_check") {
      be_ = make_device_check_backend(make_cpu_backend(2));
    } else {
      be_ = make_cpu_backend(2);
    }
    ref_ = make_cpu_backend(2);
  }
  void TearDown() override {
    for (auto& [be, p] : owned_) be->release(p);
  }

  template <class T>
  Pair<T> upload(const std::vector<T>& h) {
    Pair<T> p{nullptr, nullptr, static_cast<int64_t>(h.size())};
    const size_t bytes = h.size() * sizeof(T);
    p.test = static_cast<T*>(be_->alloc(bytes));
    owned_.emplace_back(be_.get(), p.test);
    p.ref = static_cast<T*>(ref_->alloc(bytes));
    owned_.emplace_back(ref_.get(), p.ref);
    if (bytes) {
      be_->copy_from_host(p.test, h.data(), bytes);
      ref_->copy_from_host(p.ref, h.data(), bytes);
    }
    return p;
  }
  Pair<float> rand(int64_t n, uint64_t seed, float stddev = 1.0f) { return upload(randn(n, seed, stddev)); }
  Pair<float> poisoned(int64_t n) { return upload(std::vector<float>(static_cast<size_t>(n), kNaN)); }
  Pair<int32_t> poisoned_i(int64_t n) { return upload(std::vector<int32_t>(static_cast<size_t>(n), -777)); }

  template <class T>
  std::vector<T> down(Backend& be, const T* p, int64_t n) {
    std::vector<T> h(static_cast<size_t>(n));
    be.synchronize();
    if (n) be.copy_to_host(h.data(), p, static_cast<size_t>(n) * sizeof(T));
    return h;
  }
  template <class T>
  std::pair<std::vector<T>, std::vector<T>> get(const Pair<T>& p) {
    return {down(*be_, p.test, p.n), down(*ref_, p.ref, p.n)};
  }
  void expect_close(const std::string& what, const Pair<float>& p, double tol) {
    const auto [got, want] = get(p);
    const double e = rel_l2(got, want);
    EXPECT_LE(e, tol) << what << " on " << GetParam() << ": relative L2 error " << e;
  }
  void expect_equal(const std::string& what, const Pair<int32_t>& p) {
    const auto [got, want] = get(p);
    EXPECT_EQ(got, want) << what << " on " << GetParam();
  }
  // Bitwise equal, any NaN matching any NaN.
  void expect_bitwise(const std::string& what, const Pair<float>& p) {
    const auto [got, want] = get(p);
    int64_t bad = 0;
    for (size_t i = 0; i < want.size(); ++i)
      if (!(std::isnan(got[i]) && std::isnan(want[i])) &&
          std::bit_cast<uint32_t>(got[i]) != std::bit_cast<uint32_t>(want[i]))
        ++bad;
    EXPECT_EQ(bad, 0) << what << " on " << GetParam() << ": elements differ";
  }
  // Runs op on both backends: op(backend, is_reference).
  template <class F>
  void both(F&& op) {
    op(*be_, false);
    op(*ref_, true);
  }
  // Runs an op the backend may not have yet: true when it ran, else the test is skipped.
  template <class F>
  bool try_both(F&& op) {
    try {
      both(op);
    } catch (const Error& e) {
      if (std::string(e.what()).find("not implemented yet") == std::string::npos) throw;
      return false;
    }
    return true;
  }

  // Forward then backward of attention on both backends from random qkv and dout (seeds seed,
  // seed+1), compared at fp32 tolerance; false when the backend does not have attention yet.
  bool attention_matches(const AttentionShape& s, uint64_t seed) {
    const int64_t rows = s.B * s.T;
    auto qkv = rand(rows * s.qkv_width(), seed), out = poisoned(rows * s.q_width());
    auto lse = poisoned(s.B * s.NH * s.T), dout = rand(rows * s.q_width(), seed + 1);
    auto dqkv = poisoned(rows * s.qkv_width());
    if (!try_both([&](Backend& be, bool r) {
          be.attention_forward(on(out, r), on(lse, r), on(qkv, r), s);
          be.attention_backward(on(dqkv, r), on(dout, r), on(out, r), on(lse, r), on(qkv, r), s);
        }))
      return false;
    expect_close("attention_forward out", out, kTolF32);
    expect_close("attention_forward lse", lse, kTolF32);
    expect_close("attention_backward", dqkv, kTolF32);
    return true;
  }

  std::unique_ptr<Backend> be_, ref_;
  std::vector<std::pair<Backend*, void*>> owned_;
};

inline std::vector<float> rounded(Dtype d, std::vector<float> v) {
  for (float& x : v) x = d == Dtype::bf16 ? bf16_to_f32(f32_to_bf16(x)) : f16_to_f32(f32_to_f16(x));
  return v;
}

inline std::vector<int32_t> random_ints(int64_t n, int32_t lo, int32_t hi, uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::uniform_int_distribution<int32_t> d(lo, hi);
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

}  // namespace switchyard::core::conformance
