// core/config.h: typed experiment configs. YAML -> these structs; every field is listed once in
// its struct's visit() so that parsing, --set overrides, validation of unknown keys and writing
// the resolved config all come from one table.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/choices.h"

namespace switchyard::core {

// model.moe.router: how a token's experts are scored and chosen (moe/router.h).
struct RouterConfig {
  RouterScoring scoring = RouterScoring::softmax;  // sigmoid: DeepSeek-V3 (gates = selected scores)
  double top_p = 0.0;  // adaptive experts per token: smallest prefix with probability >= top_p; 0: off
  int64_t k_max = 0;   // the most experts a token takes when top_p > 0 (its routing slots)
  // Expert capacity per micro-batch (moe/capacity.h): max(min_capacity, ceil(capacity_factor *
  // tokens * slots per token / n_experts)), tokens of the whole expert group; 0: dropless.
  double capacity_factor = 0.0;
  int64_t min_capacity = 4;
  DropPolicy drop_policy = DropPolicy::position;     // which assignments an over-full expert drops
  ImportanceScore importance = ImportanceScore::gate;  // the importance drop_policy: importance ranks by
  template <class V> void visit(V& v) {
    v("scoring", scoring);
    v("top_p", top_p);
    v("k_max", k_max);
    v("capacity_factor", capacity_factor);
    v("min_capacity", min_capacity);
    v("drop_policy", drop_policy);
    v("importance", importance);
  }
};

// model.moe.balance: load-balancing state updated by the trainer (moe/router.h).
struct BalanceConfig {
  double bias_rate = 0.0;  // aux-loss-free selection bias (DeepSeek-V3); 0: off
  // global: the aux loss's load fractions over the whole step and every rank (grad_accum - 1
  // extra forwards per step; launch/train_step.cpp)
  AuxScope aux_scope = AuxScope::micro_batch;
  template <class V> void visit(V& v) {
    v("bias_rate", bias_rate);
    v("aux_scope", aux_scope);
  }
};

struct MoeConfig {
  int64_t n_experts = 8;          // HF: num_local_experts (mixtral) / num_experts (qwen2_moe)
  int64_t top_k = 2;              // num_experts_per_tok
  int64_t expert_size = 512;      // intermediate size of one routed expert
  bool normalize_topk = true;     // renormalise the k gates to sum to 1 (mixtral: always)
  int64_t shared_expert_size = 0; // 0: no shared expert (qwen2_moe: shared_expert_intermediate_size)
  double aux_loss_coef = 0.01;    // Switch load-balancing loss, averaged over MoE layers
  double z_loss_coef = 0.0;       // router z-loss, averaged over MoE layers
  RouterConfig router;
  BalanceConfig balance;

  template <class V> void visit(V& v) {
    v("n_experts", n_experts);
    v("top_k", top_k);
    v("expert_size", expert_size);
    v("normalize_topk", normalize_topk);
    v("shared_expert_size", shared_expert_size);
    v("aux_loss_coef", aux_loss_coef);
    v("z_loss_coef", z_loss_coef);
    v("router", router);
    v("balance", balance);
  }
  // Routing slots per token: k_max under top-p routing, top_k otherwise. Everything that sizes or
  // indexes the routing plan ([tokens, slots]) uses this, never top_k directly.
  int64_t slots_per_token() const { return router.top_p > 0 ? router.k_max : top_k; }
};

struct ModelConfig {
  int64_t vocab_size = 256;
  int64_t d_model = 256;          // hidden_size
  int64_t n_layers = 4;
  int64_t n_heads = 8;
  int64_t n_kv_heads = 4;
  int64_t head_dim = 0;           // 0: d_model / n_heads
  int64_t max_seq_len = 256;      // max_position_embeddings
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-5;
  bool qkv_bias = false;
  bool tie_embeddings = false;
  int64_t first_dense_layers = 0; // the first N layers use a dense SwiGLU MLP
  int64_t dense_ffn_size = 1024;  // intermediate size of those dense layers
  double init_std = 0.02;         // normal init of linear weights and embeddings
  MoeConfig moe;

  int64_t hd() const { return head_dim > 0 ? head_dim : d_model / n_heads; }
  bool is_moe_layer(int64_t l) const { return l >= first_dense_layers; }
  // Hugging Face layout: qwen2_moe when there is a shared expert, qkv bias, a dense layer or
  // un-normalised top-k gates (mixtral has none of these), mixtral otherwise.
  bool qwen_layout() const {
    return moe.shared_expert_size > 0 || qkv_bias || first_dense_layers > 0 || !moe.normalize_topk;
  }

  template <class V> void visit(V& v) {
    v("vocab_size", vocab_size);
    v("d_model", d_model);
    v("n_layers", n_layers);
    v("n_heads", n_heads);
    v("n_kv_heads", n_kv_heads);
    v("head_dim", head_dim);
    v("max_seq_len", max_seq_len);
    v("rope_theta", rope_theta);
    v("rms_norm_eps", rms_norm_eps);
    v("qkv_bias", qkv_bias);
    v("tie_embeddings", tie_embeddings);
    v("first_dense_layers", first_dense_layers);
    v("dense_ffn_size", dense_ffn_size);
    v("init_std", init_std);
    v("moe", moe);
  }
};

// Dynamic expert weight decay (optim/expert_decay.h). Per MoE layer and expert, load_e is an EMA
// over optimizer steps of the expert's share of the layer's routing slots (whole step, all ranks);
// the multiplier m_e = clip((load_e * n_experts)^alpha, min, max) scales the decoupled weight
// decay of the expert's weights and/or its router row (apply_to). Busy experts decay more.
struct ExpertDecayConfig {
  ExpertDecayMode mode = ExpertDecayMode::fixed;  // static | dynamic
  double alpha = 1.0;             // exponent of load / mean load
  double ema = 0.9;               // load <- ema * load + (1 - ema) * share of this step; in [0, 1)
  double min = 0.5;               // clip of the multiplier
  double max = 4.0;
  // experts | router | both (router: row e of the router weight decays by weight_decay * m_e,
  // whatever optim.decay_router says)
  ExpertDecayTarget apply_to = ExpertDecayTarget::experts;

  template <class V> void visit(V& v) {
    v("mode", mode);
    v("alpha", alpha);
    v("ema", ema);
    v("min", min);
    v("max", max);
    v("apply_to", apply_to);
  }
};

struct OptimConfig {
  double lr = 1e-3;
  double min_lr = 1e-4;           // cosine decays from lr to min_lr
  int64_t warmup_steps = 10;      // linear warmup from 0
  double weight_decay = 0.1;      // decoupled (AdamW)
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;         // global L2 norm; 0 disables
  bool decay_norms = false;       // apply weight decay to norm weights
  bool decay_biases = false;
  bool decay_router = false;
  bool decay_embeddings = true;
  ExpertDecayConfig expert_decay;

  template <class V> void visit(V& v) {
    v("lr", lr);
    v("min_lr", min_lr);
    v("warmup_steps", warmup_steps);
    v("weight_decay", weight_decay);
    v("beta1", beta1);
    v("beta2", beta2);
    v("eps", eps);
    v("grad_clip", grad_clip);
    v("decay_norms", decay_norms);
    v("decay_biases", decay_biases);
    v("decay_router", decay_router);
    v("decay_embeddings", decay_embeddings);
    v("expert_decay", expert_decay);
  }
};

// Dynamic loss scaling (train.precision fp16): the loss is multiplied by `scale` before backward
// and the gradients divided by it before the optimizer. An overflow (inf/NaN in any gradient on
// any rank) skips the step on every rank; after `hysteresis` overflows the scale is multiplied by
// backoff_factor (never below min_scale); after growth_interval clean steps in a row it is
// multiplied by growth_factor. Overflowing `max_overflows_at_min` steps in a row at min_scale
// stops training with a diagnostic.
struct LossScalerConfig {
  double initial_scale = 65536.0;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 1000;
  int64_t hysteresis = 2;
  double min_scale = 1.0;
  int64_t max_overflows_at_min = 5;

  template <class V> void visit(V& v) {
    v("initial_scale", initial_scale);
    v("growth_factor", growth_factor);
    v("backoff_factor", backoff_factor);
    v("growth_interval", growth_interval);
    v("hysteresis", hysteresis);
    v("min_scale", min_scale);
    v("max_overflows_at_min", max_overflows_at_min);
  }
};

struct TrainConfig {
  int64_t steps = 100;
  int64_t micro_batch = 8;        // sequences per micro-batch per rank
  int64_t seq_len = 256;
  int64_t grad_accum = 1;         // micro-batches per optimizer step
  Dtype precision = Dtype::f32;   // fp32 | bf16 | fp16 (GEMM/attention dtype; master weights fp32)
  LossScalerConfig loss_scaler;   // fp16 only
  // none | full | selective | auto (auto: the least recomputation within activation_memory_mb)
  Recompute activation_checkpointing = Recompute::none;
  int64_t activation_memory_mb = 0;  // per rank budget for auto; 0: no limit (auto = none)
  int64_t seed = 1234;
  // cpu | cuda (cuda: the GPU of index local rank % GPUs on the machine, NCCL between ranks)
  Device device = Device::cpu;
  int64_t threads = 0;            // CPU threads per rank; 0: OMP_NUM_THREADS or all cores
  int64_t log_interval = 1;
  int64_t eval_interval = 0;      // 0: evaluate only at the end
  int64_t eval_windows = 64;      // windows of the validation split per evaluation (0: all)

  template <class V> void visit(V& v) {
    v("steps", steps);
    v("micro_batch", micro_batch);
    v("seq_len", seq_len);
    v("grad_accum", grad_accum);
    v("precision", precision);
    v("loss_scaler", loss_scaler);
    v("activation_checkpointing", activation_checkpointing);
    v("activation_memory_mb", activation_memory_mb);
    v("seed", seed);
    v("device", device);
    v("threads", threads);
    v("log_interval", log_interval);
    v("eval_interval", eval_interval);
    v("eval_windows", eval_windows);
  }
};

// data.train: one token file, or a blend of several: a YAML list of {path, weight} (a bare path in
// the list weighs 1). Each source is drawn with probability weight / sum of weights.
struct DataSource {
  std::string path;
  double weight = 1.0;
  bool operator==(const DataSource&) const = default;
  template <class V> void visit(V& v) {
    v("path", path);
    v("weight", weight);
  }
};
struct DataSources {
  std::vector<DataSource> items;
  DataSources() = default;
  DataSources(std::string path) { *this = std::move(path); }  // NOLINT: a single file reads as a path
  DataSources& operator=(std::string path) {
    items.clear();
    if (!path.empty()) items.push_back({std::move(path), 1.0});
    return *this;
  }
  bool empty() const { return items.empty(); }
  bool blend() const { return items.size() > 1; }
  bool operator==(const DataSources&) const = default;
  bool operator==(const std::string& path) const { return *this == DataSources(path); }
};

// data.mining: hard examples (high loss that still falls) are drawn more often (data/sample_stats.h).
struct MiningConfig {
  bool enabled = false;
  int64_t warmup_steps = 50;   // uniform sampling before this many steps
  int64_t min_visits = 2;      // a sample is scored after this many visits
  double threshold = 0.25;     // hard: excess loss (nats over the step's median sample) above this, falling
  double strength = 2.0;       // draw weight 1 + strength * excess loss, ...
  double max_weight = 4.0;     // ... at most this

  template <class V> void visit(V& v) {
    v("enabled", enabled);
    v("warmup_steps", warmup_steps);
    v("min_visits", min_visits);
    v("threshold", threshold);
    v("strength", strength);
    v("max_weight", max_weight);
  }
};

// data.noise: noisy examples (loss high above the rest and not falling) are drawn less and their
// loss is down-weighted (data/sample_stats.h).
struct NoiseConfig {
  bool enabled = false;
  int64_t warmup_steps = 50;   // no sample is flagged before this many steps
  int64_t min_visits = 2;      // a sample is scored after this many visits
  double threshold = 1.0;      // noisy: excess loss (nats over the step's median sample) above this ...
  double max_slope = 0.05;     // ... while it falls by less than this (nats per visit)
  double sample_weight = 0.05; // draw weight of a noisy sample
  double loss_weight = 0.1;    // loss weight of a noisy sample (the step's weights are renormalised)

  template <class V> void visit(V& v) {
    v("enabled", enabled);
    v("warmup_steps", warmup_steps);
    v("min_visits", min_visits);
    v("threshold", threshold);
    v("max_slope", max_slope);
    v("sample_weight", sample_weight);
    v("loss_weight", loss_weight);
  }
};

struct DataConfig {
  DataSources train;              // a token file (HDF5, llm.c shard, Megatron .bin/.idx) or a blend
  std::string valid;              // optional; empty: the validation split of `train` if it has one
  SampleUnit sample = SampleUnit::window;  // window | document (data/samples.h)
  bool packing = false;           // document: pack whole documents into each row (attention kept apart)
  bool prefetch = true;           // a thread prepares the next step's micro-batches during this step
  double stats_ema = 0.5;         // per-sample statistics: EMA factor per visit
  MiningConfig mining;
  NoiseConfig noise;

  template <class V> void visit(V& v) {
    v("train", train);
    v("valid", valid);
    v("sample", sample);
    v("packing", packing);
    v("prefetch", prefetch);
    v("stats_ema", stats_ema);
    v("mining", mining);
    v("noise", noise);
  }
};

struct ParallelConfig {
  int64_t expert_parallel = 1;          // ranks the experts of a layer are spread over (E)
  int64_t ranks_per_node = 0;           // 0: SWITCHYARD_RANKS_PER_NODE or MPI shared-memory nodes
  ExchangeAlgorithm token_exchange = ExchangeAlgorithm::automatic;  // flat | hierarchical | auto (cost model below)
  double intra_latency_us = 3.0;        // cost model of the auto choice: NVLink defaults
  double intra_bandwidth_gbs = 200.0;
  double inter_latency_us = 6.0;        // InfiniBand NDR defaults
  double inter_bandwidth_gbs = 40.0;
  double timeout_s = 600.0;             // a wait for other ranks longer than this ends the job; 0: never

  template <class V> void visit(V& v) {
    v("expert_parallel", expert_parallel);
    v("ranks_per_node", ranks_per_node);
    v("token_exchange", token_exchange);
    v("intra_latency_us", intra_latency_us);
    v("intra_bandwidth_gbs", intra_bandwidth_gbs);
    v("inter_latency_us", inter_latency_us);
    v("inter_bandwidth_gbs", inter_bandwidth_gbs);
    v("timeout_s", timeout_s);
  }
};

struct RunConfig {
  std::string name = "run";
  std::string dir;                // empty: runs/<name>

  template <class V> void visit(V& v) {
    v("name", name);
    v("dir", dir);
  }
};

struct CheckpointConfig {
  std::string dir;                // empty: <run folder>/checkpoints
  int64_t interval = 0;           // save every this many steps; 0: only at the end and on SIGTERM/SIGUSR1
  int64_t keep_last = 2;          // complete checkpoints kept (older ones pruned after a save)

  template <class V> void visit(V& v) {
    v("dir", dir);
    v("interval", interval);
    v("keep_last", keep_last);
  }
};

// observe: how a run is watched besides metrics.jsonl and the progress line (rank 0; launch/observers.h).
struct ObserveConfig {
  int64_t prometheus_port = 0;           // serve /metrics (Prometheus text format) on this port; 0: off
  std::string prometheus_address = "0.0.0.0";  // the address it listens on (127.0.0.1: this host only)
  std::string prometheus_textfile;       // also write the same to this file after each step (node_exporter
                                         // textfile collector); empty: off
  bool tensorboard = false;              // TensorBoard event files in <run folder>/tensorboard
  double peak_tflops = 0;                // one device's peak for MFU (TFLOP/s); 0: measured at start

  template <class V> void visit(V& v) {
    v("prometheus_port", prometheus_port);
    v("prometheus_address", prometheus_address);
    v("prometheus_textfile", prometheus_textfile);
    v("tensorboard", tensorboard);
    v("peak_tflops", peak_tflops);
  }
};

struct ExperimentConfig {
  RunConfig run;
  ModelConfig model;
  TrainConfig train;
  OptimConfig optim;
  DataConfig data;
  ParallelConfig parallel;
  CheckpointConfig checkpoint;
  ObserveConfig observe;

  template <class V> void visit(V& v) {
    v("run", run);
    v("model", model);
    v("train", train);
    v("optim", optim);
    v("data", data);
    v("parallel", parallel);
    v("checkpoint", checkpoint);
    v("observe", observe);
  }
};

// Reads `path` (YAML), applies overrides ("a.b.c=value", YAML scalar syntax), and validates.
// Unknown keys, wrong types and inconsistent values throw a usage Error naming file and key path.
ExperimentConfig load_experiment_config(const std::string& path,
                                        const std::vector<std::string>& overrides = {});
// Same from a YAML string; `origin` names it in errors.
ExperimentConfig parse_experiment_config(const std::string& yaml_text, const std::string& origin,
                                         const std::vector<std::string>& overrides = {});
// Checks consistency (divisibility, ranges); throws a usage Error naming the key path.
void validate(const ExperimentConfig& cfg, const std::string& origin);
void validate(const ModelConfig& cfg, const std::string& origin);
// The most CPU threads a process may ask for (train.threads, --threads, OMP_NUM_THREADS): 4 per
// core of this machine, at least 256.
int64_t max_threads();
// The resolved config as YAML, every key written.
std::string to_yaml(const ExperimentConfig& cfg);

}  // namespace switchyard::core
