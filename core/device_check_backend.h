// core/device_check_backend.h: the device-discipline checker, a Backend that wraps another (the CPU
// backend in practice) so that a CPU-only machine proves what code written for a GPU backend
// would do wrong there: touch device memory from the host, or hand host memory to a kernel.
//
//  - Memory: alloc() maps its own region (core/device_check_registry.h), inaccessible to the host
//    except while a call that was handed it runs; host code dereferencing device memory gets
//    SIGSEGV. memory_stats() counts these regions as the CPU backend would (sizes rounded up to
//    64); the inner backend's own scratch is host memory and not counted.
//  - Every kernel checks each non-null pointer argument: inside one live allocation, with the
//    extent the kernel touches (from the dimensions of core/backend.h; rows addressed by an index
//    array up to its largest entry), then opens those regions and forwards to the inner backend.
//    copy_to_host / copy_from_host: the device side inside an allocation, the host side
//    overlapping none; zero / copy: device memory only. A failed check throws an internal Error:
//      device-check: gather_rows: index (0x...) is not device memory (a host pointer passed to a kernel)
//  - gemm_path / use_reference_gemm go to the inner backend; virtuals that core/backend.h may add
//    with default implementations call this backend's own (checked) kernels.
// What it cannot see: stream ordering and races (kernels run synchronously on the CPU), and the
// device kernels themselves (the CPU's run instead).
#pragma once

#include <memory>
#include <string>

#include "core/backend.h"
#include "core/device_check_registry.h"
#include "core/memory_ledger.h"

namespace switchyard::core {

class DeviceCheckBackend final : public Backend {
 public:
  explicit DeviceCheckBackend(std::unique_ptr<Backend> inner);
  DeviceCheckBackend(const DeviceCheckBackend&) = delete;
  DeviceCheckBackend& operator=(const DeviceCheckBackend&) = delete;

  std::string name() const override { return "device-check(" + inner_->name() + ")"; }
  // Its memory is "device" memory: code that decides by memory space takes the device path.
  bool host_memory() const override { return false; }
  Backend& inner() { return *inner_; }
  // The regions of this backend, shared with parallel::DeviceCheckCommunicator.
  const std::shared_ptr<DeviceCheckRegistry>& registry() const { return registry_; }

  void* alloc(size_t bytes) override;
  void release(void* p) override;
  void zero(void* p, size_t bytes) override;
  void copy_to_host(void* host_dst, const void* src, size_t bytes) override;
  void copy_from_host(void* dst, const void* host_src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void synchronize() override { inner_->synchronize(); }
  MemoryStats memory_stats() const override { return ledger_.stats(); }
  void reset_peak_memory() override { ledger_.reset_peak(); }

  void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, const GemmRounding& rounding = {}) override;
  void round_to(Dtype d, float* x, int64_t n) override;
  std::optional<GemmPath> gemm_path(Dtype operands) override { return inner_->gemm_path(operands); }
  void use_reference_gemm(Dtype operands, const std::string& why) override { inner_->use_reference_gemm(operands, why); }

  void add(float* out, const float* a, const float* b, int64_t n) override;
  void axpy(float* y, float alpha, const float* x, int64_t n) override;
  void add_bias(float* x, const float* bias, int64_t rows, int64_t cols) override;
  void bias_backward(float* dbias, const float* dout, int64_t rows, int64_t cols) override;
  double sum_squares(const float* x, int64_t n) override;
  void scale(float* x, float alpha, int64_t n) override;
  void adamw_update(float* p, const float* grads, float* m, float* v, int64_t n, float grad_scale, float lr, float beta1, float beta2, float eps, float weight_decay, float bc1, float bc2, float* p_compute = nullptr, Dtype compute = Dtype::f32) override;
  void embedding_forward(float* out, const int32_t* tokens, const float* wte, int64_t N, int64_t C) override;
  void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int64_t N, int64_t C) override;
  void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int64_t N, int64_t C, float eps) override;
  void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w, const float* rstd, int64_t N, int64_t C) override;
  void add_rmsnorm_forward(float* sum, float* out, float* rstd, const float* a, const float* b, const float* w, int64_t N, int64_t C, float eps) override;
  void rmsnorm_backward_accumulate(float* dx, float* dw, const float* dout, const float* x, const float* w, const float* rstd, int64_t N, int64_t C) override;
  void rope_forward(float* qkv, const AttentionShape& s, float theta) override;
  void rope_backward(float* dqkv, const AttentionShape& s, float theta) override;
  void attention_forward(float* out, float* lse, const float* qkv, const AttentionShape& s) override;
  void attention_backward(float* dqkv, const float* dout, const float* out, const float* lse, const float* qkv, const AttentionShape& s) override;
  void attention_decode(float* out, const float* qkv, const AttentionShape& s) override;
  void swiglu_forward(float* out, const float* h, int64_t rows, int64_t I) override;
  void swiglu_backward(float* dh, const float* dout, const float* h, int64_t rows, int64_t I) override;
  void sigmoid_gate_forward(float* out, const float* logit, const float* y, int64_t rows, int64_t C) override;
  void sigmoid_gate_backward(float* dy, float* dlogit, const float* dout, const float* logit, const float* y, int64_t rows, int64_t C) override;
  void cross_entropy_forward(float* losses, const float* logits, const int32_t* targets, int64_t N, int64_t V) override;
  void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets, const float* dloss, int64_t N, int64_t V) override;
  void router_topk(float* probs, float* lse, int32_t* idx, float* gates, const float* logits, int64_t N, int64_t E, int64_t K, const RouterOptions& opt) override;
  void router_backward(float* dlogits, const float* dgates, const float* logits, const float* probs, const float* lse, const int32_t* idx, const float* gates, const float* dprobs_all, float z_coef, int64_t N, int64_t E, int64_t K, const RouterOptions& opt) override;
  void route_plan(int32_t* pos, int32_t* expert_offsets, const int32_t* idx, int64_t N, int64_t E, int64_t K) override;
  void dispatch_forward(float* xp, const float* x, const int32_t* pos, int64_t N, int64_t K, int64_t C) override;
  void dispatch_backward(float* dx, const float* dxp, const int32_t* pos, int64_t N, int64_t K, int64_t C) override;
  void combine_forward(float* out, const float* y, const int32_t* pos, const float* gates, int64_t N, int64_t K, int64_t C) override;
  void combine_backward(float* dy, float* dgates, const float* dout, const float* y, const int32_t* pos, const float* gates, int64_t N, int64_t K, int64_t C) override;
  void gather_rows(void* dst, const void* src, const int64_t* index, int64_t n, int64_t row_bytes) override;
  void scatter_rows(void* dst, const void* src, const int64_t* index, int64_t n, int64_t row_bytes) override;
  void scatter_add_rows(float* dst, const int64_t* dst_index, const float* src, const int64_t* src_index, const float* w, const uint8_t* first, int64_t n, int64_t C) override;
  void gate_dot_scale(float* dy, float* dgate, const float* y, const float* gate, int64_t rows, int64_t C) override;

 private:
  // A checked call of `method`: check its arguments, open(), then forward.
  DeviceCheckRegistry::Access call(const char* method) { return {*registry_, method, "a kernel"}; }
  // Rows an index array addresses: its largest entry + 1 (0 when none is >= 0); the array itself is
  // checked first and read with its region open.
  template <class T>
  int64_t rows_indexed(const char* method, const char* arg, const T* index, int64_t n);

  std::unique_ptr<Backend> inner_;
  std::shared_ptr<DeviceCheckRegistry> registry_;
  MemoryLedger ledger_;
};

// `inner` (the CPU backend in practice) behind the checker.
std::unique_ptr<Backend> make_device_check_backend(std::unique_ptr<Backend> inner);
// The registry of a device-check backend, null for any other backend.
std::shared_ptr<DeviceCheckRegistry> device_check_registry(Backend& backend);

}  // namespace switchyard::core
