// tests/unit/test_device_check.cpp: the device-discipline checker (core/device_check_backend.h).
// A kernel handed a host pointer, or a device pointer with a short allocation, throws naming the
// method and the argument; copies check both sides; host code that dereferences device memory dies
// with SIGSEGV; and kernels through the checker give the CPU backend's results bit for bit (the
// whole table is also run by test_backend_conformance.cpp's device_check case); a whole model's
// forward and backward run device-clean through it.
#include <gtest/gtest.h>

#include <csignal>
#include <cstring>
#include <memory>
#include <vector>

#include "core/backend.h"
#include "core/device_check_backend.h"
#include "core/precision.h"
#include "moe/model.h"
#include "tests/unit/testing.h"

namespace switchyard {
namespace {

using core::Backend;
using test::internal_error;

struct Checked {
  std::unique_ptr<Backend> be = core::make_device_check_backend(core::make_cpu_backend(2));
  std::shared_ptr<core::DeviceCheckRegistry> registry = core::device_check_registry(*be);
};

// A new buffer of `be` holding `h`.
template <class T>
T* put(Backend& be, const std::vector<T>& h) {
  auto* p = static_cast<T*>(be.alloc(h.size() * sizeof(T)));
  be.copy_from_host(p, h.data(), h.size() * sizeof(T));
  return p;
}
template <class T>
std::vector<T> take(Backend& be, const T* p, size_t n) {
  std::vector<T> h(n);
  be.copy_to_host(h.data(), p, n * sizeof(T));
  return h;
}

TEST(DeviceCheck, NameAllocationsAndMemoryStats) {
  Checked c;
  EXPECT_EQ(c.be->name(), "device-check(cpu)");
  ASSERT_NE(c.registry, nullptr);
  auto cpu = core::make_cpu_backend(1);
  EXPECT_EQ(core::device_check_registry(*cpu), nullptr);

  void* a = c.be->alloc(0);
  void* b = c.be->alloc(0);
  void* d = c.be->alloc(1000);
  EXPECT_NE(a, b);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(d) % 64, 0u);
  EXPECT_TRUE(c.registry->is_device(a, 0));
  EXPECT_FALSE(c.registry->is_device(a, 1));
  EXPECT_TRUE(c.registry->is_device(static_cast<char*>(d) + 1000, 0));  // one past the end
  EXPECT_FALSE(c.registry->is_device(static_cast<char*>(d) + 999, 2));
  EXPECT_EQ(c.registry->live_regions(), 3u);
  EXPECT_EQ(c.be->memory_stats().live_bytes, 64 + 64 + 1024);  // as the CPU backend counts

  std::vector<char> host(16);
  EXPECT_FALSE(c.registry->is_device(host.data(), 1));
  EXPECT_FALSE(c.registry->overlaps_device(host.data(), host.size()));
  EXPECT_TRUE(c.registry->overlaps_device(static_cast<char*>(d) - 8, 16));

  c.be->release(a);
  c.be->release(b);
  c.be->release(d);
  EXPECT_EQ(c.be->memory_stats().live_bytes, 0);
  EXPECT_EQ(c.be->memory_stats().peak_bytes, 64 + 64 + 1024);
  EXPECT_HAS(internal_error([&] { c.be->release(d); }), "did not return (or released twice)");
  EXPECT_HAS(internal_error([&] { c.be->release(host.data()); }), "did not return");
}

TEST(DeviceCheck, HostPointerPassedToAKernelThrowsNamingTheArgument) {
  Checked c;
  std::vector<float> src_h = test::randn(40, 1);
  std::vector<int64_t> index_h = {3, 1, -1, 0};
  float* src = put(*c.be, src_h);
  float* dst = static_cast<float*>(c.be->alloc(4 * 10 * sizeof(float)));
  int64_t* index = put(*c.be, index_h);

  std::string m = internal_error([&] { c.be->gather_rows(dst, src, index_h.data(), 4, 40); });
  EXPECT_HAS(m, "device-check: gather_rows: index (0x");
  EXPECT_HAS(m, "is not device memory (a host pointer passed to a kernel)");
  m = internal_error([&] { c.be->gather_rows(dst, src_h.data(), index, 4, 40); });
  EXPECT_HAS(m, "gather_rows: src (");
  m = internal_error([&] { c.be->add(dst, src, src_h.data(), 8); });
  EXPECT_HAS(m, "add: b (");
  m = internal_error([&] { c.be->rmsnorm_forward(dst, dst + 30, src, src_h.data(), 3, 10, 1e-5f); });
  EXPECT_HAS(m, "rmsnorm_forward: w (");
  EXPECT_EQ(c.be->sum_squares(nullptr, 0), 0.0) << "null pointers are not checked";
  for (void* p : {static_cast<void*>(src), static_cast<void*>(dst), static_cast<void*>(index)}) c.be->release(p);
}

TEST(DeviceCheck, ExtentPastTheAllocationThrows) {
  Checked c;
  float* a = put(*c.be, test::randn(250, 2));  // 1000 bytes
  std::string m = internal_error([&] { c.be->add(a, a, a, 251); });
  EXPECT_HAS(m, "add: out (");
  EXPECT_HAS(m, "1004 bytes) runs past the end of its device allocation (");
  EXPECT_HAS(m, "1000 bytes)");
  // A: 10 x 25 with lda 25 fits exactly; lda 26 reaches one float past the end.
  float* C = static_cast<float*>(c.be->alloc(10 * sizeof(float)));
  EXPECT_NO_THROW(c.be->gemm(false, false, 10, 1, 25, 1.f, a, 25, a, 1, 0.f, C, 1));
  EXPECT_HAS(internal_error([&] { c.be->gemm(false, false, 10, 1, 25, 1.f, a, 26, a, 1, 0.f, C, 1); }), "gemm: A (");
  EXPECT_HAS(internal_error([&] { c.be->gemm(true, false, 10, 2, 25, 1.f, a, 10, a, 2, 0.f, C, 2); }), "gemm: C (");
  // Rows addressed by an index reach past src: index 25 of rows of 40 bytes needs 1040 bytes.
  int64_t* index = put(*c.be, std::vector<int64_t>{0, 25});
  float* dst = static_cast<float*>(c.be->alloc(80));
  m = internal_error([&] { c.be->gather_rows(dst, a, index, 2, 40); });
  EXPECT_HAS(m, "gather_rows: src (");
  EXPECT_HAS(m, "1040 bytes) runs past");
  for (void* p : {static_cast<void*>(a), static_cast<void*>(C), static_cast<void*>(index), static_cast<void*>(dst)})
    c.be->release(p);
}

TEST(DeviceCheck, CopiesCheckTheDeviceAndTheHostSide) {
  Checked c;
  std::vector<float> h(8, 1.f), back(8);
  float* d = put(*c.be, h);
  float* e = static_cast<float*>(c.be->alloc(32));
  EXPECT_HAS(internal_error([&] { c.be->copy_to_host(back.data(), h.data(), 32); }),
             "copy_to_host: src (");
  EXPECT_HAS(internal_error([&] { c.be->copy_to_host(e, d, 32); }),
             "copy_to_host: host_dst (");
  EXPECT_HAS(internal_error([&] { c.be->copy_to_host(e, d, 32); }),
             "overlaps device memory (a device pointer where host memory belongs)");
  EXPECT_HAS(internal_error([&] { c.be->copy_from_host(back.data(), h.data(), 32); }), "copy_from_host: dst (");
  EXPECT_HAS(internal_error([&] { c.be->copy_from_host(e, d, 32); }), "copy_from_host: host_src (");
  EXPECT_HAS(internal_error([&] { c.be->copy(back.data(), d, 32); }), "copy: dst (");
  EXPECT_HAS(internal_error([&] { c.be->copy(e, d, 36); }), "copy: dst (");
  EXPECT_HAS(internal_error([&] { c.be->zero(back.data(), 32); }), "zero: p (");
  c.be->copy(e, d, 32);
  c.be->copy_to_host(back.data(), e, 32);
  EXPECT_EQ(back, h);
  c.be->release(d);
  c.be->release(e);
}

// Device memory is closed to the host except inside a call that was handed it, or while held open.
TEST(DeviceCheck, RegionsOpenOnlyForTheirCallsOrWhileHeld) {
  Checked c;
  float* p = put(*c.be, std::vector<float>{1.f, 2.f, 3.f});
  float* q = static_cast<float*>(c.be->alloc(12));
  EXPECT_FALSE(c.registry->accessible(p));
  {
    core::DeviceCheckRegistry::Access outer(*c.registry, "test", "a test"), inner(*c.registry, "test", "a test");
    outer.device("p", p, 12).open();
    inner.device("p", p, 12).open();
    outer.close();
    EXPECT_TRUE(c.registry->accessible(p)) << "regions count their open calls";
    EXPECT_FALSE(c.registry->accessible(q)) << "only the call's own regions open";
    EXPECT_HAS(internal_error([&] { c.be->release(p); }), "while a kernel or collective uses it");
  }
  EXPECT_FALSE(c.registry->accessible(p));
  c.registry->hold_open();
  c.registry->hold_open();
  c.registry->release_open();
  EXPECT_TRUE(c.registry->accessible(p) && c.registry->accessible(q));
  EXPECT_EQ(p[2], 3.f) << "held open, the host may read device memory";
  float* later = static_cast<float*>(c.be->alloc(4));
  EXPECT_TRUE(c.registry->accessible(later)) << "a region made while held starts open";
  c.registry->release_open();
  EXPECT_FALSE(c.registry->accessible(p) || c.registry->accessible(later));
  EXPECT_HAS(internal_error([&] { c.registry->release_open(); }), "without hold_open");
  for (float* x : {p, q, later}) c.be->release(x);
}

// The bug class the checker exists for: host code reading or writing device memory, such as a
// loss read straight from a kernel's output.
TEST(DeviceCheckDeathTest, HostDereferenceOfDeviceMemoryDiesWithSigsegv) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        Checked c;
        float* p = put(*c.be, std::vector<float>{1.f, 2.f});
        volatile float x = p[1];
        (void)x;
        std::exit(0);
      },
      ::testing::KilledBySignal(SIGSEGV), "");
  EXPECT_EXIT(
      {
        Checked c;
        float* p = static_cast<float*>(c.be->alloc(8));
        c.be->scale(p, 2.f, 2);  // a checked kernel runs, then closes the region again
        p[0] = 1.f;
        std::exit(0);
      },
      ::testing::KilledBySignal(SIGSEGV), "");
}

bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(DeviceCheck, KernelsGiveTheCpuBackendsResultsBitForBit) {
  Checked c;
  auto cpu = core::make_cpu_backend(2);
  const int64_t M = 13, N = 7, K = 19, pad = 2;
  const auto A = test::randn(K * (M + pad), 3), B = test::randn(K * (N + pad), 4), X = test::randn(M * K, 5),
             w = test::randn(K, 6);
  const std::vector<int32_t> idx = {0, 2, 1, 2, 2, 0, -1, 1};  // N=4 tokens, K=2, E=3
  const std::vector<int64_t> index = {2, -1, 0, 1, 1};
  std::vector<std::vector<float>> out[2];
  std::vector<std::vector<int32_t>> plan[2];
  for (int which = 0; which < 2; ++which) {
    Backend& be = which == 0 ? *c.be : *cpu;
    std::vector<void*> owned;
    auto keep = [&](auto* p) { owned.push_back(p); return p; };
    float *a = keep(put(be, A)), *b = keep(put(be, B)), *x = keep(put(be, X)), *wd = keep(put(be, w));
    float* y = keep(static_cast<float*>(be.alloc(M * (N + pad) * sizeof(float))));
    be.gemm(true, false, M, N, K, 0.5f, a, M + pad, b, N + pad, 0.f, y, N + pad);
    out[which].push_back(take(be, y, static_cast<size_t>(M * (N + pad))));
    float *norm = keep(static_cast<float*>(be.alloc(M * K * sizeof(float)))),
          *rstd = keep(static_cast<float*>(be.alloc(M * sizeof(float))));
    be.rmsnorm_forward(norm, rstd, x, wd, M, K, 1e-5f);
    out[which].push_back(take(be, norm, static_cast<size_t>(M * K)));
    out[which].push_back(take(be, rstd, static_cast<size_t>(M)));
    int32_t* id = keep(put(be, idx));
    int32_t *pos = keep(static_cast<int32_t*>(be.alloc(8 * sizeof(int32_t)))),
            *offsets = keep(static_cast<int32_t*>(be.alloc(4 * sizeof(int32_t))));
    be.route_plan(pos, offsets, id, 4, 3, 2);
    plan[which] = {take(be, pos, 8), take(be, offsets, 4)};
    int64_t* ix = keep(put(be, index));
    float* rows = keep(put(be, std::vector<float>(5 * K, -1.f)));
    be.gather_rows(rows, x, ix, 5, K * sizeof(float));
    out[which].push_back(take(be, rows, static_cast<size_t>(5 * K)));
    for (void* p : owned) be.release(p);
  }
  const char* names[] = {"gemm", "rmsnorm out", "rmsnorm rstd", "gather_rows"};
  for (size_t i = 0; i < out[0].size(); ++i) EXPECT_TRUE(bit_equal(out[0][i], out[1][i])) << names[i];
  EXPECT_EQ(plan[0], plan[1]);
  EXPECT_EQ(plan[0][1], (std::vector<int32_t>{0, 2, 4, 7}));
}

// The layers obey the discipline: a whole model (dense first layer, shared expert, q/k/v biases,
// bf16 GEMMs, selective recomputation) runs forward and backward through the checker and gives
// the CPU backend's loss and gradients bit for bit.
TEST(DeviceCheck, AWholeModelRunsDeviceClean) {
  core::ModelConfig cfg = test::small_moe_model(3);
  cfg.qkv_bias = true;
  cfg.first_dense_layers = 1;
  cfg.dense_ffn_size = 40;
  cfg.moe.shared_expert_size = 20;
  moe::ModelOptions opts;
  opts.recompute = core::Recompute::selective;
  opts.precision = core::PrecisionPolicy{core::Dtype::bf16};
  const int64_t B = 2, T = 16;
  std::vector<int32_t> tokens(B * T), targets(B * T);
  for (size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<int32_t>((i * 7 + 3) % 64);
    targets[i] = static_cast<int32_t>((i * 5 + 1) % 64);
  }
  double loss[2];
  std::vector<float> grads[2];
  for (int which = 0; which < 2; ++which) {
    auto be = which == 0 ? core::make_device_check_backend(core::make_cpu_backend(2)) : core::make_cpu_backend(2);
    moe::Model model(*be, cfg, B, T, {}, opts);
    model.init_random(7);
    model.zero_grads();
    loss[which] = model.forward(tokens.data(), targets.data(), B, T).loss;
    model.backward(1.0f);
    grads[which] = take(*be, model.grads(), static_cast<size_t>(model.num_params()));
  }
  EXPECT_EQ(loss[0], loss[1]);
  EXPECT_TRUE(bit_equal(grads[0], grads[1])) << "gradients differ";
}

}  // namespace
}  // namespace switchyard
