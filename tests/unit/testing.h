// tests/unit/testing.h: helpers shared by the unit tests (random tensors, tolerances, buffers in a
// backend's memory, temp dirs).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <exception>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "core/config.h"
#include "core/error.h"

// EXPECT_HAS(message, part): the message contains part.
#define EXPECT_HAS(msg, part) EXPECT_NE((msg).find(part), std::string::npos) << "message: " << (msg)

namespace switchyard::test {

// Deterministic normal(0, stddev) values.
std::vector<float> randn(int64_t n, uint64_t seed, float stddev = 1.0f);
// Largest |a-b| / max(|b|, floor) over the elements (relative error with an absolute floor).
double max_rel_error(const float* a, const float* b, int64_t n, double floor = 1e-3);

// Central finite differences of f at every coordinate in `coords` of v (float inputs, double
// loss; the step is the float-rounded +-eps actually taken).
std::vector<double> fd_grad(std::vector<float>& v, const std::vector<int64_t>& coords, float eps,
                            const std::function<double()>& f);
// 0, 1, ..., n-1.
std::vector<int64_t> all_coords(int64_t n);
// |a - b| <= atol + rtol * |b| for each pair (analytic at coords[j] against fd[j]); atol is
// atol_frac of the largest |fd|. Reports the first 5 that differ.
void expect_grad_close(const std::vector<double>& fd, const std::vector<float>& analytic,
                       const std::vector<int64_t>& coords, double rtol, double atol_frac,
                       const std::string& what);

// A buffer in a backend's memory holding a copy of `host`, read back by host(); released with it.
template <class T>
class DeviceCopy {
 public:
  DeviceCopy(core::Backend& be, const std::vector<T>& host) : be_(be), n_(host.size()) {
    p_ = static_cast<T*>(be_.alloc(bytes()));
    if (n_ > 0) be_.copy_from_host(p_, host.data(), bytes());
  }
  ~DeviceCopy() { be_.release(p_); }
  DeviceCopy(const DeviceCopy&) = delete;
  DeviceCopy& operator=(const DeviceCopy&) = delete;
  T* get() { return p_; }
  std::vector<T> host() const {
    std::vector<T> h(n_);
    if (n_ > 0) be_.copy_to_host(h.data(), p_, bytes());
    return h;
  }

 private:
  size_t bytes() const { return n_ * sizeof(T); }
  core::Backend& be_;
  size_t n_;
  T* p_ = nullptr;
};

// A small Mixtral-layout model for whole-model tests: vocab 64, d_model 32, 4 heads / 2 kv heads,
// max_seq_len 16, 4 experts top-2 of width 24, z-loss 0.001; n_layers as given.
core::ModelConfig small_moe_model(int64_t n_layers);
// The backend a whole-model test runs on, from SWITCHYARD_TEST_BACKEND: cpu (the default, with
// `threads` threads) or cuda (the first GPU; a usage error without one). scripts/gpu_check.sh runs
// the golden tests on the GPU through it, unchanged.
std::unique_ptr<core::Backend> test_backend(int threads = 2);
// n values of backend memory, copied to the host.
template <class T>
std::vector<T> to_host(core::Backend& be, const T* p, int64_t n) {
  std::vector<T> out(static_cast<size_t>(n));
  be.copy_to_host(out.data(), p, out.size() * sizeof(T));
  return out;
}
// A fresh empty directory under the build tree, named after the current test.
std::filesystem::path temp_dir(const std::string& name);

// Runs f, expects an Error of `kind` and returns its message ("" when none was thrown).
template <class F>
std::string error_of_kind(ErrorKind kind, F&& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_EQ(e.exit_code(), static_cast<int>(kind));
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected switchyard::Error, got std::exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected " << (kind == ErrorKind::usage ? "a usage" : "an internal") << " error, none thrown";
  return "";
}
// A usage Error (exit code 2), an internal Error (exit code 1): its message.
template <class F>
std::string usage_error(F&& f) {
  return error_of_kind(ErrorKind::usage, std::forward<F>(f));
}
template <class F>
std::string internal_error(F&& f) {
  return error_of_kind(ErrorKind::internal, std::forward<F>(f));
}

}  // namespace switchyard::test
