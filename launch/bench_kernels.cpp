// launch/bench_kernels.cpp: the suite's compute and memory scenarios (launch/bench_suite.h): the
// square GEMMs that are the GEMM peak, causal GQA attention, a whole MoE layer under balanced and
// skewed routing, AdamW, and drawing training micro-batches from a token file. Kernels are timed
// on the backend's clock (Backend::seconds_per_run); GEMM-like work against the GEMM peak,
// AdamW and data loading against the stream triad's memory bandwidth.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "core/params.h"
#include "data/train_data.h"
#include "launch/bench_suite.h"
#include "launch/peak.h"
#include "moe/moe_layer.h"

namespace switchyard::launch {

namespace {

// n floats in the backend's memory, a fixed pattern of values in offset + [-scale, scale].
core::Arena filled(core::Backend& be, int64_t n, float scale = 0.02f, float offset = 0.f) {
  core::Arena a(be, n);
  std::vector<float> host(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    host[i] = offset + scale * static_cast<float>(static_cast<int>((i * 2654435761u) % 2001) - 1000) / 1000.f;
  be.copy_from_host(a.data(), host.data(), host.size() * sizeof(float));
  return a;
}

void gemm_row(BenchSuite& s, bool bf16) {
  const int64_t n = measured_gemm_size(s.backend());
  const double rate = s.gemm_rate(bf16);
  const double flops = 2.0 * static_cast<double>(n) * n * n;
  s.add({bf16 ? "gemm_bf16" : "gemm_fp32", fmt::format("{0}x{0}x{0}", n), flops / rate, rate / 1e9, "GFLOP/s",
         s.gemm_peak() / 1e9, "GEMM peak (best square GEMM of this run)", ""});
}

core::AttentionShape attention_shape(const BenchSuite& s) {
  return s.quick() ? core::AttentionShape{1, 256, 4, 2, 32} : core::AttentionShape{2, 1024, 8, 4, 64};
}

void attention_row(BenchSuite& s, bool backward) {
  core::Backend& be = s.backend();
  const core::AttentionShape a = attention_shape(s);
  core::Arena x = filled(be, a.B * a.T * a.qkv_width(), 1.0f), o(be, a.B * a.T * a.q_width()),
              lse(be, a.B * a.NH * a.T), dx(be, a.B * a.T * a.qkv_width());
  // QK^T and PV over the causal half; backward: 2.5x (dS, dQ, dK, dV and the recomputed P)
  const double fwd_flops = 2.0 * 2.0 * a.B * a.NH * static_cast<double>(a.T) * a.T * a.HD / 2;
  be.attention_forward(o.data(), lse.data(), x.data(), a);
  const double sec =
      backward ? s.seconds_per_run([&] { be.attention_backward(dx.data(), o.data(), o.data(), lse.data(), x.data(), a); })
               : s.seconds_per_run([&] { be.attention_forward(o.data(), lse.data(), x.data(), a); });
  const double flops = backward ? 2.5 * fwd_flops : fwd_flops;
  s.add({backward ? "attention_bwd" : "attention_fwd", fmt::format("B{} T{} H{}/{} D{}", a.B, a.T, a.NH, a.NKV, a.HD),
         sec, flops / sec / 1e9, "GFLOP/s", s.gemm_peak() / 1e9, "GEMM peak", "fp32"});
}

// One MoE layer (layer 0 of a one-layer model) forward or backward. Skewed: every token row has a
// positive mean and the router rows favour low expert ids by a graded constant, so the first
// experts take most tokens (the note gives the busiest expert's load over the mean).
constexpr float kSkew = 4.8f;  // the logit of expert e gains kSkew * (E - e) / E * mean(x)

void moe_row(BenchSuite& s, bool backward, bool skewed) {
  core::Backend& be = s.backend();
  core::ModelConfig cfg;
  cfg.n_layers = 1;
  cfg.d_model = s.quick() ? 128 : 512;
  cfg.moe.n_experts = 8;
  cfg.moe.top_k = 2;
  cfg.moe.expert_size = s.quick() ? 256 : 1024;
  const int64_t N = s.quick() ? 256 : 2048, C = cfg.d_model, E = cfg.moe.n_experts, I = cfg.moe.expert_size;
  const core::ParamTable table = core::make_param_table(cfg);
  std::vector<float> host(static_cast<size_t>(table.total()));
  for (size_t i = 0; i < host.size(); ++i)
    host[i] = 0.02f * static_cast<float>(static_cast<int>((i * 2654435761u) % 2001) - 1000) / 1000.f;
  if (skewed)
    for (const core::ParamSpec& p : table.specs())
      if (p.kind == core::ParamKind::router)
        for (int64_t e = 0; e < E; ++e)
          for (int64_t c = 0; c < C; ++c) host[p.offset + e * C + c] += kSkew * static_cast<float>(E - e) / static_cast<float>(E * C);
  core::Arena params(be, table.total()), grads(be, table.total());
  be.copy_from_host(params.data(), host.data(), host.size() * sizeof(float));
  grads.zero();
  core::Arena x = filled(be, N * C, 1.0f, skewed ? 1.0f : 0.f), out(be, N * C), dout = filled(be, N * C, 0.01f),
              dx(be, N * C);
  moe::MoeLayer layer(be, cfg, table, 0, N);
  layer.forward(out.data(), x.data(), params.data(), N);
  double sec = 0;
  if (backward)
    sec = s.seconds_per_run(
        [&] { layer.backward(dx.data(), dout.data(), x.data(), params.data(), grads.data(), N, 0.01f, 0.001f); });
  else
    sec = s.seconds_per_run([&] { layer.forward(out.data(), x.data(), params.data(), N); });
  const auto& counts = layer.stats().expert_counts;
  const double mean = static_cast<double>(N * cfg.moe.top_k) / static_cast<double>(E);
  const double max_over_mean = static_cast<double>(*std::max_element(counts.begin(), counts.end())) / mean;
  // router + gate|up + down of the routed rows; backward twice that (input and weight gradients)
  const double fwd_flops = 2.0 * N * C * E + 6.0 * static_cast<double>(N) * cfg.moe.top_k * C * I;
  const double flops = backward ? 2 * fwd_flops : fwd_flops;
  s.add({fmt::format("moe_{}_{}", backward ? "bwd" : "fwd", skewed ? "skewed" : "balanced"),
         fmt::format("{} tok C{} E{} top-{} I{}", N, C, E, cfg.moe.top_k, I), sec, flops / sec / 1e9, "GFLOP/s",
         s.gemm_peak() / 1e9, "GEMM peak", fmt::format("busiest expert {:.2f}x the mean load", max_over_mean)});
}

}  // namespace

void bench_gemm_fp32(BenchSuite& s) { gemm_row(s, false); }
void bench_gemm_bf16(BenchSuite& s) { gemm_row(s, true); }
void bench_attention_fwd(BenchSuite& s) { attention_row(s, false); }
void bench_attention_bwd(BenchSuite& s) { attention_row(s, true); }
void bench_moe_fwd_balanced(BenchSuite& s) { moe_row(s, false, false); }
void bench_moe_bwd_balanced(BenchSuite& s) { moe_row(s, true, false); }
void bench_moe_fwd_skewed(BenchSuite& s) { moe_row(s, false, true); }
void bench_moe_bwd_skewed(BenchSuite& s) { moe_row(s, true, true); }

// AdamW over fp32 master weights, no compute copy: reads p, g, m, v and writes p, m, v.
void bench_adamw(BenchSuite& s) {
  core::Backend& be = s.backend();
  const int64_t n = s.quick() ? (4 << 20) : (32 << 20);
  core::Arena p = filled(be, n), g = filled(be, n, 0.001f), m(be, n), v(be, n);
  m.zero();
  v.zero();
  const double sec = s.seconds_per_run([&] {
    be.adamw_update(p.data(), g.data(), m.data(), v.data(), n, 1.f, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.1f, 0.05f);
  });
  const double bytes = 7.0 * 4 * static_cast<double>(n);
  s.add({"adamw", fmt::format("{}M params fp32", n >> 20), sec, bytes / sec / 1e9, "GB/s", s.memory_bandwidth(bytes) / 1e9,
         be.device() >= 0 ? "device memory bandwidth (copy)" : "memory bandwidth (stream triad)",
         "7 floats moved per parameter"});
}

// Micro-batches of the tiny config drawn from the suite's token file (random windows, no prefetch
// thread: the drawing and reading itself). Bytes delivered: tokens and targets, int32 each.
void bench_data_loading(BenchSuite& s) {
  if (s.config_path("tiny").empty()) {
    s.skip("data_loading", fmt::format("no {}/tiny.yaml: run from the repository root or pass --configs", s.opts.configs));
    return;
  }
  const core::ExperimentConfig cfg = s.run_config("tiny", "data_loading");
  data::TrainData data(cfg, 0, 1, cfg.train.micro_batch);
  const int steps = s.quick() ? 20 : 100;
  int64_t positions = 0;
  data.take(0);  // opens and warms the file
  const auto t0 = std::chrono::steady_clock::now();
  for (int step = 1; step <= steps; ++step)
    for (const data::MicroBatch& mb : data.take(step).micro) positions += mb.B * mb.T;
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / steps;
  const double bytes = 8.0 * static_cast<double>(positions) / steps;
  s.add({"data_loading", fmt::format("{}x{} tokens x{} micro-batches", cfg.train.micro_batch, cfg.train.seq_len,
                                     cfg.train.grad_accum),
         sec, bytes / sec / 1e9, "GB/s", s.host_memory_bandwidth(bytes) / 1e9, "host memory bandwidth (stream triad)",
         fmt::format("{:.3g} M tokens/s", static_cast<double>(positions) / steps / sec / 1e6)});
}

}  // namespace switchyard::launch
