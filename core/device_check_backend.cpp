// core/device_check_backend.cpp: every method checks its pointer arguments with the extent it
// touches (core/backend.h's dimensions), opens their regions and forwards to the inner backend.
#include "core/device_check_backend.h"

#include <algorithm>

#include "core/error.h"

namespace switchyard::core {
namespace {

template <class T>
size_t n_of(int64_t n) {
  return n > 0 ? static_cast<size_t>(n) * sizeof(T) : 0;
}
size_t floats(int64_t n) { return n_of<float>(n); }
size_t floats(int64_t rows, int64_t cols) { return rows > 0 && cols > 0 ? floats(rows * cols) : 0; }
size_t ints(int64_t n) { return n_of<int32_t>(n); }
size_t longs(int64_t n) { return n_of<int64_t>(n); }
// A rows x cols block of floats with leading dimension ld, up to its last element.
size_t matrix(int64_t rows, int64_t cols, int64_t ld) {
  return rows > 0 && cols > 0 ? floats((rows - 1) * ld + cols) : 0;
}
size_t bytes(int64_t rows, int64_t row_bytes) { return rows > 0 && row_bytes > 0 ? static_cast<size_t>(rows * row_bytes) : 0; }

}  // namespace

DeviceCheckBackend::DeviceCheckBackend(std::unique_ptr<Backend> inner)
    : inner_(std::move(inner)), registry_(std::make_shared<DeviceCheckRegistry>()) {
  SY_CHECK(inner_ != nullptr, "device-check backend without an inner backend");
}

template <class T>
int64_t DeviceCheckBackend::rows_indexed(const char* method, const char* arg, const T* index, int64_t n) {
  if (!index || n <= 0) return 0;
  auto c = call(method);
  c.device(arg, index, n_of<T>(n)).open();
  T most = -1;
  for (int64_t i = 0; i < n; ++i) most = std::max(most, index[i]);
  return static_cast<int64_t>(most) + 1;
}

// ---------------------------------------------------------------- memory

void* DeviceCheckBackend::alloc(size_t bytes) {
  void* p = registry_->allocate(bytes);
  ledger_.add(p, bytes == 0 ? 64 : (bytes + 63) / 64 * 64);  // as the CPU backend counts
  return p;
}
void DeviceCheckBackend::release(void* p) {
  if (!p) return;
  registry_->deallocate(p);  // first: it refuses regions in use, which stay counted
  ledger_.remove(p, "device-check");
}
void DeviceCheckBackend::zero(void* p, size_t n) {
  auto c = call("zero");
  c.device("p", p, n).open();
  inner_->zero(p, n);
}
void DeviceCheckBackend::copy_to_host(void* host_dst, const void* src, size_t n) {
  auto c = call("copy_to_host");
  c.host("host_dst", host_dst, n).device("src", src, n).open();
  inner_->copy_to_host(host_dst, src, n);
}
void DeviceCheckBackend::copy_from_host(void* dst, const void* host_src, size_t n) {
  auto c = call("copy_from_host");
  c.device("dst", dst, n).host("host_src", host_src, n).open();
  inner_->copy_from_host(dst, host_src, n);
}
void DeviceCheckBackend::copy(void* dst, const void* src, size_t n) {
  auto c = call("copy");
  c.device("dst", dst, n).device("src", src, n).open();
  inner_->copy(dst, src, n);
}

// ---------------------------------------------------------------- GEMM, elementwise, optimizer

void DeviceCheckBackend::gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                              const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                              int64_t ldc, const GemmRounding& rounding) {
  // M or N zero: nothing is touched; K zero: C = beta * C only.
  const bool reads = M > 0 && N > 0 && K > 0;
  auto c = call("gemm");
  c.device("A", A, reads ? (trans_a ? matrix(K, M, lda) : matrix(M, K, lda)) : 0)
      .device("B", B, reads ? (trans_b ? matrix(N, K, ldb) : matrix(K, N, ldb)) : 0)
      .device("C", C, matrix(M, N, ldc))
      .open();
  inner_->gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, rounding);
}
void DeviceCheckBackend::round_to(Dtype d, float* x, int64_t n) {
  auto c = call("round_to");
  c.device("x", x, floats(n)).open();
  inner_->round_to(d, x, n);
}
void DeviceCheckBackend::add(float* out, const float* a, const float* b, int64_t n) {
  auto c = call("add");
  c.device("out", out, floats(n)).device("a", a, floats(n)).device("b", b, floats(n)).open();
  inner_->add(out, a, b, n);
}
void DeviceCheckBackend::axpy(float* y, float alpha, const float* x, int64_t n) {
  auto c = call("axpy");
  c.device("y", y, floats(n)).device("x", x, floats(n)).open();
  inner_->axpy(y, alpha, x, n);
}
void DeviceCheckBackend::add_bias(float* x, const float* bias, int64_t rows, int64_t cols) {
  auto c = call("add_bias");
  c.device("x", x, floats(rows, cols)).device("bias", bias, rows > 0 ? floats(cols) : 0).open();
  inner_->add_bias(x, bias, rows, cols);
}
void DeviceCheckBackend::bias_backward(float* dbias, const float* dout, int64_t rows, int64_t cols) {
  auto c = call("bias_backward");
  c.device("dbias", dbias, floats(cols)).device("dout", dout, floats(rows, cols)).open();
  inner_->bias_backward(dbias, dout, rows, cols);
}
double DeviceCheckBackend::sum_squares(const float* x, int64_t n) {
  auto c = call("sum_squares");
  c.device("x", x, floats(n)).open();
  return inner_->sum_squares(x, n);
}
void DeviceCheckBackend::scale(float* x, float alpha, int64_t n) {
  auto c = call("scale");
  c.device("x", x, floats(n)).open();
  inner_->scale(x, alpha, n);
}
void DeviceCheckBackend::adamw_update(float* p, const float* grads, float* m, float* v, int64_t n, float grad_scale,
                                      float lr, float beta1, float beta2, float eps, float weight_decay, float bc1,
                                      float bc2, float* p_compute, Dtype compute) {
  auto c = call("adamw_update");
  c.device("p", p, floats(n)).device("grads", grads, floats(n)).device("m", m, floats(n)).device("v", v, floats(n))
      .device("p_compute", p_compute, floats(n))
      .open();
  inner_->adamw_update(p, grads, m, v, n, grad_scale, lr, beta1, beta2, eps, weight_decay, bc1, bc2, p_compute,
                       compute);
}

// ---------------------------------------------------------------- dense layers

void DeviceCheckBackend::embedding_forward(float* out, const int32_t* tokens, const float* wte, int64_t N, int64_t C) {
  const int64_t V = rows_indexed("embedding_forward", "tokens", tokens, N);
  auto c = call("embedding_forward");
  c.device("out", out, floats(N, C)).device("tokens", tokens, ints(N)).device("wte", wte, floats(V, C)).open();
  inner_->embedding_forward(out, tokens, wte, N, C);
}
void DeviceCheckBackend::embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int64_t N, int64_t C) {
  const int64_t V = rows_indexed("embedding_backward", "tokens", tokens, N);
  auto c = call("embedding_backward");
  c.device("dwte", dwte, floats(V, C)).device("dout", dout, floats(N, C)).device("tokens", tokens, ints(N)).open();
  inner_->embedding_backward(dwte, dout, tokens, N, C);
}
void DeviceCheckBackend::rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int64_t N, int64_t C,
                                         float eps) {
  auto c = call("rmsnorm_forward");
  c.device("out", out, floats(N, C)).device("rstd", rstd, floats(N)).device("x", x, floats(N, C))
      .device("w", w, N > 0 ? floats(C) : 0)
      .open();
  inner_->rmsnorm_forward(out, rstd, x, w, N, C, eps);
}
void DeviceCheckBackend::rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                                          const float* rstd, int64_t N, int64_t C) {
  auto c = call("rmsnorm_backward");
  c.device("dx", dx, floats(N, C)).device("dw", dw, floats(C)).device("dout", dout, floats(N, C))
      .device("x", x, floats(N, C)).device("w", w, N > 0 ? floats(C) : 0).device("rstd", rstd, floats(N))
      .open();
  inner_->rmsnorm_backward(dx, dw, dout, x, w, rstd, N, C);
}
void DeviceCheckBackend::add_rmsnorm_forward(float* sum, float* out, float* rstd, const float* a, const float* b,
                                             const float* w, int64_t N, int64_t C, float eps) {
  auto c = call("add_rmsnorm_forward");
  c.device("sum", sum, floats(N, C)).device("out", out, floats(N, C)).device("rstd", rstd, floats(N))
      .device("a", a, floats(N, C)).device("b", b, floats(N, C)).device("w", w, N > 0 ? floats(C) : 0)
      .open();
  inner_->add_rmsnorm_forward(sum, out, rstd, a, b, w, N, C, eps);
}
void DeviceCheckBackend::rmsnorm_backward_accumulate(float* dx, float* dw, const float* dout, const float* x,
                                                     const float* w, const float* rstd, int64_t N, int64_t C) {
  auto c = call("rmsnorm_backward_accumulate");
  c.device("dx", dx, floats(N, C)).device("dw", dw, floats(C)).device("dout", dout, floats(N, C))
      .device("x", x, floats(N, C)).device("w", w, N > 0 ? floats(C) : 0).device("rstd", rstd, floats(N))
      .open();
  inner_->rmsnorm_backward_accumulate(dx, dw, dout, x, w, rstd, N, C);
}
void DeviceCheckBackend::rope_forward(float* qkv, const AttentionShape& s, float theta) {
  auto c = call("rope_forward");
  c.device("qkv", qkv, floats(s.B * s.T, s.qkv_width()))
      .device("doc_start", s.doc_start, ints(s.B * s.T))
      .open();
  inner_->rope_forward(qkv, s, theta);
}
void DeviceCheckBackend::rope_backward(float* dqkv, const AttentionShape& s, float theta) {
  auto c = call("rope_backward");
  c.device("dqkv", dqkv, floats(s.B * s.T, s.qkv_width()))
      .device("doc_start", s.doc_start, ints(s.B * s.T))
      .open();
  inner_->rope_backward(dqkv, s, theta);
}
void DeviceCheckBackend::attention_forward(float* out, float* lse, const float* qkv, const AttentionShape& s) {
  const int64_t BT = s.B * s.T;
  auto c = call("attention_forward");
  c.device("out", out, floats(BT, s.q_width())).device("lse", lse, floats(BT, s.NH))
      .device("qkv", qkv, floats(BT, s.qkv_width())).device("doc_start", s.doc_start, ints(BT))
      .open();
  inner_->attention_forward(out, lse, qkv, s);
}
void DeviceCheckBackend::attention_decode(float* out, const float* qkv, const AttentionShape& s) {
  auto c = call("attention_decode");
  c.device("out", out, floats(s.q_width())).device("qkv", qkv, floats(s.T, s.qkv_width()))
      .device("doc_start", s.doc_start, ints(s.T))
      .open();
  inner_->attention_decode(out, qkv, s);
}
void DeviceCheckBackend::attention_backward(float* dqkv, const float* dout, const float* out, const float* lse,
                                            const float* qkv, const AttentionShape& s) {
  const int64_t BT = s.B * s.T;
  auto c = call("attention_backward");
  c.device("dqkv", dqkv, floats(BT, s.qkv_width())).device("dout", dout, floats(BT, s.q_width()))
      .device("out", out, floats(BT, s.q_width())).device("lse", lse, floats(BT, s.NH))
      .device("qkv", qkv, floats(BT, s.qkv_width())).device("doc_start", s.doc_start, ints(BT))
      .open();
  inner_->attention_backward(dqkv, dout, out, lse, qkv, s);
}
void DeviceCheckBackend::swiglu_forward(float* out, const float* h, int64_t rows, int64_t I) {
  auto c = call("swiglu_forward");
  c.device("out", out, floats(rows, I)).device("h", h, floats(rows, 2 * I)).open();
  inner_->swiglu_forward(out, h, rows, I);
}
void DeviceCheckBackend::swiglu_backward(float* dh, const float* dout, const float* h, int64_t rows, int64_t I) {
  auto c = call("swiglu_backward");
  c.device("dh", dh, floats(rows, 2 * I)).device("dout", dout, floats(rows, I)).device("h", h, floats(rows, 2 * I))
      .open();
  inner_->swiglu_backward(dh, dout, h, rows, I);
}
void DeviceCheckBackend::sigmoid_gate_forward(float* out, const float* logit, const float* y, int64_t rows, int64_t C) {
  auto c = call("sigmoid_gate_forward");
  c.device("out", out, floats(rows, C)).device("logit", logit, floats(rows)).device("y", y, floats(rows, C)).open();
  inner_->sigmoid_gate_forward(out, logit, y, rows, C);
}
void DeviceCheckBackend::sigmoid_gate_backward(float* dy, float* dlogit, const float* dout, const float* logit,
                                               const float* y, int64_t rows, int64_t C) {
  auto c = call("sigmoid_gate_backward");
  c.device("dy", dy, floats(rows, C)).device("dlogit", dlogit, floats(rows)).device("dout", dout, floats(rows, C))
      .device("logit", logit, floats(rows)).device("y", y, floats(rows, C))
      .open();
  inner_->sigmoid_gate_backward(dy, dlogit, dout, logit, y, rows, C);
}
void DeviceCheckBackend::cross_entropy_forward(float* losses, const float* logits, const int32_t* targets, int64_t N,
                                               int64_t V) {
  auto c = call("cross_entropy_forward");
  c.device("losses", losses, floats(N)).device("logits", logits, floats(N, V)).device("targets", targets, ints(N))
      .open();
  inner_->cross_entropy_forward(losses, logits, targets, N, V);
}
void DeviceCheckBackend::cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                                                const float* dloss, int64_t N, int64_t V) {
  auto c = call("cross_entropy_backward");
  c.device("dlogits", dlogits, floats(N, V)).device("logits", logits, floats(N, V))
      .device("targets", targets, ints(N)).device("dloss", dloss, floats(N))
      .open();
  inner_->cross_entropy_backward(dlogits, logits, targets, dloss, N, V);
}

// ---------------------------------------------------------------- MoE routing and permutation

void DeviceCheckBackend::router_topk(float* probs, float* lse, int32_t* idx, float* gates, const float* logits,
                                     int64_t N, int64_t E, int64_t K, const RouterOptions& opt) {
  auto c = call("router_topk");
  c.device("probs", probs, floats(N, E)).device("lse", lse, floats(N)).device("idx", idx, ints(N * K))
      .device("gates", gates, floats(N, K)).device("logits", logits, floats(N, E))
      .device("bias", opt.bias, N > 0 ? floats(E) : 0)
      .open();
  inner_->router_topk(probs, lse, idx, gates, logits, N, E, K, opt);
}
void DeviceCheckBackend::router_backward(float* dlogits, const float* dgates, const float* logits, const float* probs,
                                         const float* lse, const int32_t* idx, const float* gates,
                                         const float* dprobs_all, float z_coef, int64_t N, int64_t E, int64_t K,
                                         const RouterOptions& opt) {
  auto c = call("router_backward");
  c.device("dlogits", dlogits, floats(N, E)).device("dgates", dgates, floats(N, K))
      .device("logits", logits, floats(N, E))
      .device("probs", probs, floats(N, E)).device("lse", lse, floats(N)).device("idx", idx, ints(N * K))
      .device("gates", gates, floats(N, K)).device("dprobs_all", dprobs_all, N > 0 ? floats(E) : 0)
      .open();
  inner_->router_backward(dlogits, dgates, logits, probs, lse, idx, gates, dprobs_all, z_coef, N, E, K, opt);
}
void DeviceCheckBackend::route_plan(int32_t* pos, int32_t* expert_offsets, const int32_t* idx, int64_t N, int64_t E,
                                    int64_t K) {
  auto c = call("route_plan");
  c.device("pos", pos, ints(N * K)).device("expert_offsets", expert_offsets, ints(E + 1))
      .device("idx", idx, ints(N * K))
      .open();
  inner_->route_plan(pos, expert_offsets, idx, N, E, K);
}
void DeviceCheckBackend::dispatch_forward(float* xp, const float* x, const int32_t* pos, int64_t N, int64_t K,
                                          int64_t C) {
  const int64_t P = rows_indexed("dispatch_forward", "pos", pos, N * K);
  auto c = call("dispatch_forward");
  c.device("xp", xp, floats(P, C)).device("x", x, floats(N, C)).device("pos", pos, ints(N * K)).open();
  inner_->dispatch_forward(xp, x, pos, N, K, C);
}
void DeviceCheckBackend::dispatch_backward(float* dx, const float* dxp, const int32_t* pos, int64_t N, int64_t K,
                                           int64_t C) {
  const int64_t P = rows_indexed("dispatch_backward", "pos", pos, N * K);
  auto c = call("dispatch_backward");
  c.device("dx", dx, floats(N, C)).device("dxp", dxp, floats(P, C)).device("pos", pos, ints(N * K)).open();
  inner_->dispatch_backward(dx, dxp, pos, N, K, C);
}
void DeviceCheckBackend::combine_forward(float* out, const float* y, const int32_t* pos, const float* gates, int64_t N,
                                         int64_t K, int64_t C) {
  const int64_t P = rows_indexed("combine_forward", "pos", pos, N * K);
  auto c = call("combine_forward");
  c.device("out", out, floats(N, C)).device("y", y, floats(P, C)).device("pos", pos, ints(N * K))
      .device("gates", gates, floats(N, K))
      .open();
  inner_->combine_forward(out, y, pos, gates, N, K, C);
}
void DeviceCheckBackend::combine_backward(float* dy, float* dgates, const float* dout, const float* y,
                                          const int32_t* pos, const float* gates, int64_t N, int64_t K, int64_t C) {
  const int64_t P = rows_indexed("combine_backward", "pos", pos, N * K);
  auto c = call("combine_backward");
  c.device("dy", dy, floats(P, C)).device("dgates", dgates, floats(N, K)).device("dout", dout, floats(N, C))
      .device("y", y, floats(P, C)).device("pos", pos, ints(N * K)).device("gates", gates, floats(N, K))
      .open();
  inner_->combine_backward(dy, dgates, dout, y, pos, gates, N, K, C);
}

// ---------------------------------------------------------------- token exchange steps

void DeviceCheckBackend::gather_rows(void* dst, const void* src, const int64_t* index, int64_t n, int64_t row_bytes) {
  const int64_t R = rows_indexed("gather_rows", "index", index, n);
  auto c = call("gather_rows");
  c.device("dst", dst, bytes(n, row_bytes)).device("src", src, bytes(R, row_bytes)).device("index", index, longs(n))
      .open();
  inner_->gather_rows(dst, src, index, n, row_bytes);
}
void DeviceCheckBackend::scatter_rows(void* dst, const void* src, const int64_t* index, int64_t n, int64_t row_bytes) {
  const int64_t R = rows_indexed("scatter_rows", "index", index, n);
  auto c = call("scatter_rows");
  c.device("dst", dst, bytes(R, row_bytes)).device("src", src, bytes(n, row_bytes)).device("index", index, longs(n))
      .open();
  inner_->scatter_rows(dst, src, index, n, row_bytes);
}
void DeviceCheckBackend::scatter_add_rows(float* dst, const int64_t* dst_index, const float* src,
                                          const int64_t* src_index, const float* w, const uint8_t* first, int64_t n,
                                          int64_t C) {
  const int64_t D = rows_indexed("scatter_add_rows", "dst_index", dst_index, n);
  const int64_t S = rows_indexed("scatter_add_rows", "src_index", src_index, n);
  auto c = call("scatter_add_rows");
  c.device("dst", dst, floats(D, C)).device("dst_index", dst_index, longs(n)).device("src", src, floats(S, C))
      .device("src_index", src_index, longs(n)).device("w", w, floats(n)).device("first", first, n_of<uint8_t>(n))
      .open();
  inner_->scatter_add_rows(dst, dst_index, src, src_index, w, first, n, C);
}
void DeviceCheckBackend::gate_dot_scale(float* dy, float* dgate, const float* y, const float* gate, int64_t rows,
                                        int64_t C) {
  auto c = call("gate_dot_scale");
  c.device("dy", dy, floats(rows, C)).device("dgate", dgate, floats(rows)).device("y", y, floats(rows, C))
      .device("gate", gate, floats(rows))
      .open();
  inner_->gate_dot_scale(dy, dgate, y, gate, rows, C);
}

// ---------------------------------------------------------------- factories

std::unique_ptr<Backend> make_device_check_backend(std::unique_ptr<Backend> inner) {
  return std::make_unique<DeviceCheckBackend>(std::move(inner));
}

std::shared_ptr<DeviceCheckRegistry> device_check_registry(Backend& backend) {
  auto* checked = dynamic_cast<DeviceCheckBackend*>(&backend);
  return checked ? checked->registry() : nullptr;
}

}  // namespace switchyard::core
