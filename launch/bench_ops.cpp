// launch/bench_ops.cpp: `switchyard bench ops`: the training step's heavy kernels on a backend,
// timed on the backend's clock (Backend::seconds_per_run: CUDA events on a GPU), each figure
// against its ceiling: GEMM-like work against the best dense bf16 GEMM rate measured in the same
// run, AdamW against the memory traffic it must move. The default sizes are those of
// configs/gpu_1b.yaml on one GPU (8192 tokens per micro-batch, d_model 2048, 16 experts top-2 of
// width 1408, 16 heads / 4 kv heads of 128); --quick shrinks every size for a CPU smoke run.
#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/error.h"
#include "launch/bench.h"

namespace switchyard::launch {
namespace {

// A backend buffer of n floats filled with a fixed pattern of small values (uploaded once).
class Buffer {
 public:
  Buffer(core::Backend& be, int64_t n, float scale = 0.02f) : be_(be) {
    p_ = static_cast<float*>(be.alloc(static_cast<size_t>(n) * sizeof(float)));
    std::vector<float> host(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) host[i] = scale * static_cast<float>(static_cast<int>((i * 2654435761u) % 2001) - 1000) / 1000.f;
    be.copy_from_host(p_, host.data(), host.size() * sizeof(float));
  }
  ~Buffer() { be_.release(p_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  float* get() const { return p_; }

 private:
  core::Backend& be_;
  float* p_ = nullptr;
};

struct Row {
  std::string name, shape;
  double seconds = 0;
  double work = 0;  // FLOPs, or bytes for memory-bound rows
  bool bytes = false;
  std::string ceiling;  // what the rate is compared with
  double ceiling_rate = 0;
};

// The bf16 GEMM of the training path: bf16 operands, fp32 accumulation, output rounded to bf16.
constexpr core::GemmRounding kBf16{core::Dtype::bf16, core::Dtype::bf16, core::Dtype::bf16, core::Dtype::bf16};

struct Sizes {
  int64_t square, tokens, C, V, E_small, E_large, I, NH, NKV, HD, B, T, adamw_n;
  int repeats;
};
constexpr Sizes kFull{8192, 8192, 2048, 32000, 8, 64, 1408, 16, 4, 128, 4, 2048, 256 << 20, 10};
constexpr Sizes kQuick{256, 256, 64, 512, 8, 64, 48, 4, 2, 16, 2, 64, 1 << 16, 2};

double gemm_seconds(core::Backend& be, bool ta, bool tb, int64_t M, int64_t N, int64_t K, int repeats) {
  Buffer a(be, M * K), b(be, K * N), c(be, M * N);
  return be.seconds_per_run([&] {
    be.gemm(ta, tb, M, N, K, 1.f, a.get(), ta ? M : K, b.get(), tb ? K : N, 0.f, c.get(), N, kBf16);
  }, repeats);
}

// Rows per expert: balanced (R/E each) or skewed (weights 1/(e+1), the busiest few take most).
std::vector<int64_t> expert_rows(int64_t R, int64_t E, bool skewed) {
  std::vector<double> w(static_cast<size_t>(E), 1.0);
  if (skewed)
    for (int64_t e = 0; e < E; ++e) w[e] = 1.0 / static_cast<double>(e + 1);
  double sum = 0;
  for (double x : w) sum += x;
  std::vector<int64_t> rows(static_cast<size_t>(E));
  int64_t given = 0;
  for (int64_t e = 0; e < E; ++e) given += rows[e] = static_cast<int64_t>(static_cast<double>(R) * w[e] / sum);
  rows[0] += R - given;
  return rows;
}

// The gate|up GEMM of the experts as one grouped GEMM: rows [R, C] x W_e^T [C, 2I] per expert.
double grouped_seconds(core::Backend& be, const std::vector<int64_t>& rows, int64_t C, int64_t I, int repeats) {
  int64_t R = 0;
  for (int64_t r : rows) R += r;
  const int64_t E = static_cast<int64_t>(rows.size());
  Buffer x(be, R * C), w(be, E * 2 * I * C), h(be, R * 2 * I);
  std::vector<core::GemmProblem> problems;
  int64_t r0 = 0;
  for (int64_t e = 0; e < E; ++e) {
    if (rows[e] > 0)
      problems.push_back({rows[e], 2 * I, C, x.get() + r0 * C, C, w.get() + e * 2 * I * C, C, h.get() + r0 * 2 * I, 2 * I});
    r0 += rows[e];
  }
  return be.seconds_per_run([&] { be.grouped_gemm(false, true, problems, 1.f, 0.f, kBf16); }, repeats);
}

std::vector<Row> run_rows(core::Backend& be, const Sizes& s) {
  std::vector<Row> out;
  const auto flops = [](int64_t M, int64_t N, int64_t K) { return 2.0 * static_cast<double>(M) * N * K; };
  // dense GEMMs: the square reference, then the training shapes (qkv, o, the expert-sized dense
  // product that grouped GEMMs are compared with, the LM head)
  const int64_t q = s.NH * s.HD, qkv = (s.NH + 2 * s.NKV) * s.HD, R = s.tokens * 2;
  struct G { std::string name; int64_t M, N, K; };
  const std::vector<G> gemms = {{"gemm_bf16_square", s.square, s.square, s.square},
                                {"gemm_bf16_qkv", s.tokens, qkv, s.C},
                                {"gemm_bf16_o", s.tokens, s.C, q},
                                {"gemm_bf16_experts_dense", R, 2 * s.I, s.C},
                                {"gemm_bf16_lm_head", s.tokens, s.V, s.C}};
  double peak = 0, dense_experts = 0;
  for (const G& g : gemms) {
    const double sec = gemm_seconds(be, false, true, g.M, g.N, g.K, s.repeats);
    peak = std::max(peak, flops(g.M, g.N, g.K) / sec);
    if (g.name == "gemm_bf16_experts_dense") dense_experts = flops(g.M, g.N, g.K) / sec;
    out.push_back({g.name, fmt::format("{}x{}x{}", g.M, g.N, g.K), sec, flops(g.M, g.N, g.K), false, "best GEMM"});
  }
  for (const int64_t E : {s.E_small, s.E_large})
    for (const bool skewed : {false, true}) {
      const auto rows = expert_rows(R, E, skewed);
      const double sec = grouped_seconds(be, rows, s.C, s.I, s.repeats);
      out.push_back({fmt::format("grouped_gemm_E{}_{}", E, skewed ? "skewed" : "balanced"),
                     fmt::format("{} rows (max {}/expert) x{}x{}", R, *std::max_element(rows.begin(), rows.end()),
                                 2 * s.I, s.C),
                     sec, flops(R, 2 * s.I, s.C), false, "dense GEMM of the same rows", dense_experts});
    }
  {  // causal GQA attention, forward and backward (fp32 kernels: the compute dtype is a GEMM's)
    const core::AttentionShape a{s.B, s.T, s.NH, s.NKV, s.HD};
    Buffer x(be, s.B * s.T * a.qkv_width(), 1.0f), o(be, s.B * s.T * a.q_width()), lse(be, s.B * s.NH * s.T),
        dx(be, s.B * s.T * a.qkv_width());
    const double f = 2.0 * 2.0 * s.B * s.NH * static_cast<double>(s.T) * s.T * s.HD / 2;  // QK^T and PV, causal
    const double fwd = be.seconds_per_run([&] { be.attention_forward(o.get(), lse.get(), x.get(), a); }, s.repeats);
    const double bwd = be.seconds_per_run([&] { be.attention_backward(dx.get(), o.get(), o.get(), lse.get(), x.get(), a); },
                                          s.repeats);
    const std::string shape = fmt::format("B{} T{} H{}/{} D{}", s.B, s.T, s.NH, s.NKV, s.HD);
    out.push_back({"attention_fwd", shape, fwd, f, false, "best GEMM"});
    out.push_back({"attention_bwd", shape, bwd, 2.5 * f, false, "best GEMM"});
  }
  {  // AdamW with the compute-weight write: reads p, g, m, v; writes p, m, v and the bf16 copy
    Buffer p(be, s.adamw_n), g(be, s.adamw_n), m(be, s.adamw_n), v(be, s.adamw_n), pc(be, s.adamw_n);
    const double sec = be.seconds_per_run([&] {
      be.adamw_update(p.get(), g.get(), m.get(), v.get(), s.adamw_n, 1.f, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.1f, 0.05f,
                      pc.get(), core::Dtype::bf16);
    }, s.repeats);
    out.push_back({"adamw", fmt::format("{} params", s.adamw_n), sec, 8.0 * 4 * static_cast<double>(s.adamw_n), true,
                   "memory traffic (reported rate only)"});
  }
  for (Row& r : out)
    if (!r.bytes && r.ceiling_rate == 0) r.ceiling_rate = peak;
  return out;
}

}  // namespace

int run_bench_ops(const BenchOpsOptions& opts) {
  auto be = core::make_backend(opts.device, opts.threads, 0, "bench ops --device");
  const Sizes& s = opts.quick ? kQuick : kFull;
  const std::vector<Row> rows = run_rows(*be, s);
  nlohmann::json json = nlohmann::json::array();
  fmt::print("bench ops on {}{}\n{:<28} {:<36} {:>10} {:>14} {:>8}  {}\n", be->name(),
             be->device() >= 0 ? fmt::format(":{}", be->device()) : "", "op", "shape", "ms", "rate", "ratio", "ceiling");
  for (const Row& r : rows) {
    const double rate = r.work / r.seconds;
    const std::string rate_s = r.bytes ? fmt::format("{:.0f} GB/s", rate / 1e9) : fmt::format("{:.1f} TFLOP/s", rate / 1e12);
    const std::string ratio = r.ceiling_rate > 0 ? fmt::format("{:.2f}", rate / r.ceiling_rate) : "";
    fmt::print("{:<28} {:<36} {:>10.3f} {:>14} {:>8}  {}\n", r.name, r.shape, r.seconds * 1e3, rate_s, ratio, r.ceiling);
    json.push_back({{"op", r.name}, {"shape", r.shape}, {"ms", r.seconds * 1e3}, {r.bytes ? "gb_per_s" : "tflops", rate / (r.bytes ? 1e9 : 1e12)},
                    {"ratio", r.ceiling_rate > 0 ? rate / r.ceiling_rate : 0.0}, {"ceiling", r.ceiling}});
  }
  if (!opts.json.empty()) {
    std::ofstream f(opts.json);
    f << nlohmann::json{{"backend", be->name()}, {"device", be->device()}, {"ops", json}}.dump(1) << "\n";
    if (!f) throw_usage("bench ops --json {}: cannot write it", opts.json);
  }
  return 0;
}

}  // namespace switchyard::launch
