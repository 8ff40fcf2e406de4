// moe/model.h: the MoE transformer (Mixtral / Qwen2-MoE family) with explicit forward and backward.
//   embedding -> [ RMSNorm -> attention -> + -> RMSNorm -> MoE (or dense) FFN -> + ] x L
//             -> RMSNorm -> LM head -> cross-entropy (+ balancing losses)
// Parameters and gradients live in two arenas carved by the ParamTable (Hugging Face names).
// backward() ACCUMULATES parameter gradients (+=) so micro-batches of an accumulation window add up;
// the trainer zeroes them once per optimizer step.
//
// Loss = mean CE over the micro-batch's targets + aux_loss_coef * mean_l aux_l + z_loss_coef *
// mean_l z_l, the means over MoE layers (aux_l and z_l are defined in moe/moe_layer.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/activations.h"
#include "core/attention_layer.h"
#include "core/backend.h"
#include "core/config.h"
#include "core/params.h"
#include "core/precision.h"
#include "moe/moe_layer.h"

namespace switchyard::moe {

struct ForwardResult {
  double loss = 0;  // total: ce + weighted balancing losses
  double ce = 0;    // mean cross-entropy over counted targets
  double aux = 0;   // mean over MoE layers of aux_l
  double z = 0;     // mean over MoE layers of z_l
  int64_t tokens = 0;  // targets counted (targets < 0 are ignored)
  double weight_sum = 0;  // sum of the counted targets' loss weights (= tokens without weights)
  double ce_sum = 0;      // sum over counted targets of weight * cross-entropy (ce = ce_sum / weight_sum)
};

// One micro-batch: host arrays of B*T entries, row-major (row b = one sequence of T positions).
struct Batch {
  const int32_t* tokens = nullptr;
  const int32_t* targets = nullptr;  // < 0: no loss at that position
  // Loss weight per position (>= 0, finite); null: 1 everywhere. A weight 0 counts no loss.
  const float* weights = nullptr;
  // Packed rows (data.packing): per position, the position in its row where its document begins
  // (0 <= doc_start[b*T+t] <= t, constant over a document; documents are contiguous, so each value
  // is t or the previous position's). RoPE positions restart there and attention never looks
  // before it. Null: every row is one causal sequence from position 0.
  const int32_t* doc_start = nullptr;
  // The cross-entropy part of the loss is ce_norm * sum_i w_i ce_i; 0: 1 / sum_i w_i (the mean over
  // this micro-batch). The trainer sets it to normalise by the whole step's weight over all ranks.
  double ce_norm = 0;
  int64_t B = 0, T = 0;
};

// How the model computes: GEMM/attention dtype (fp32 master weights always) and which
// activations survive from forward to backward (core/activations.h).
struct ModelOptions {
  core::PrecisionPolicy precision;
  core::Recompute recompute = core::Recompute::none;
};

class Model {
 public:
  // Activations are sized for micro-batches of up to max_batch sequences of max_seq tokens,
  // allocated once: every micro-batch of an accumulation window reuses them. With expert
  // parallelism the table (and so the arenas) holds this rank's experts only.
  Model(core::Backend& be, const core::ModelConfig& cfg, int64_t max_batch, int64_t max_seq,
        const ExpertParallel& ep = {}, const ModelOptions& opts = {});
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const core::ModelConfig& config() const { return cfg_; }
  const core::ParamTable& table() const { return table_; }
  core::Backend& backend() const { return be_; }
  // fp32 master weights. The non-const accessor marks the compute weights stale: the next
  // forward refreshes them (a copy rounded to the compute dtype; the same memory under fp32).
  float* params() { compute_stale_ = true; return params_.data(); }
  const float* params() const { return params_.data(); }
  float* grads() const { return grads_.data(); }
  // The optimizer's view: the master weights, and the compute weights (null under fp32) for an
  // optimizer that writes them rounded in the same pass (AdamW::step). end_update() then restores
  // the fp32 router weights in the compute copy and marks it fresh.
  struct UpdateTarget {
    float* master;
    float* compute;
    core::Dtype dtype;
  };
  UpdateTarget begin_update();
  void end_update();
  const ModelOptions& options() const { return opts_; }
  // Bytes of activation storage (kept per layer + shared), allocated at construction.
  int64_t activation_bytes() const { return acts_.bytes(); }
  // Registers every activation buffer of a model with a layout store (core/activations.h),
  // building nothing: the blocks' own, their attention and MoE layers', those outside the blocks.
  // The constructor registers the same list; launch/plan counts it so. expert_rows: the rows of
  // each MoE layer's expert buffers (max_tokens x slots per token under balanced routing).
  static void register_activations(core::ActivationStore& layout, const core::ModelConfig& cfg, int64_t max_tokens,
                                   int64_t expert_rows, bool expert_parallel);
  int64_t num_params() const { return table_.total(); }

  // Normal(0, init_std) linear weights and embeddings (output projections scaled by
  // 1/sqrt(2*n_layers)), norms 1, biases 0; a pure function of (seed, tensor name, element).
  void init_random(uint64_t seed);
  void set_params_from_host(const float* host);  // table().total() floats
  void params_to_host(float* host) const;

  // Keeps the activations for backward(). ForwardResult::ce is the weighted mean over the
  // micro-batch whatever batch.ce_norm says; the gradient follows ce_norm.
  ForwardResult forward(const Batch& batch);
  // tokens, targets: host arrays [B*T], every weight 1.
  ForwardResult forward(const int32_t* tokens, const int32_t* targets, int64_t B, int64_t T) {
    return forward(Batch{tokens, targets, nullptr, nullptr, 0, B, T});
  }
  // ---- incremental decoding of one sequence (inference only; launch/generate.h) ----
  // decode_reset() starts a sequence; decode(tokens, n) feeds n tokens (host) at its next positions
  // through a per-layer KV cache and returns logits() [n, V] (backend memory; logits_rows() = n):
  // the rows forward() over the whole sequence gives there (to rounding; with dropless routing, as
  // capacity depends on the rows routed together). At most decode_capacity() positions (max_seq,
  // capped at max_seq_len); the caches are allocated on the first call. backward() is refused after
  // it until the next forward().
  void decode_reset();
  const float* decode(const int32_t* tokens, int64_t n);
  int64_t decode_length() const { return decode_pos_; }
  int64_t decode_capacity() const { return std::min(max_tokens_, cfg_.max_seq_len); }
  // Cross-entropy of each position of the last forward, [B*T] on the host (0 where target < 0).
  const std::vector<float>& token_losses() const { return token_losses_; }
  // Adds grad_scale * d(loss)/d(params) to grads() for the last forward; under activation
  // checkpointing each block is recomputed from its saved input first (replaying its routing
  // plan). grad_scale carries the loss scale and the 1/micro-batches factor. on_grads_ready (optional)
  // is called with a layer index as soon as that layer's parameter gradients are final, and with
  // -1 once the tensors outside the layers (embedding, final norm, LM head) are: the trainer
  // starts their reduction there, overlapping the rest of backward.
  void backward(float grad_scale = 1.0f, const std::function<void(int)>& on_grads_ready = {});
  void zero_grads() { grads_.zero(); }

  // Logits [logits_rows(), V] of the last forward, in the backend's memory; rows = B*T.
  const float* logits() const { return bufs_.logits; }
  int64_t logits_rows() const { return B_ * T_; }
  // Routing slots per expert of each MoE layer in the last forward: [n_moe_layers][E].
  std::vector<std::vector<int64_t>> expert_counts() const;
  // The statistics of MoE layer i (0 <= i < num_moe_layers()) in the last forward.
  const MoeStats& moe_stats(int64_t i) const;
  // Token-exchange traffic and expert GEMM time of the last forward and backward, all MoE layers.
  parallel::ExchangeStats exchange_stats() const;
  double expert_seconds() const;
  // Per MoE layer, the token exchange the last forward used (empty without expert parallelism).
  std::vector<std::string> exchange_plans() const;
  int64_t num_moe_layers() const { return n_moe_; }
  // model.moe.balance.aux_scope global: hands every MoE layer the step's counts (MoeLayer::
  // set_aux_counts). counts [n_moe_layers * E] in layer order, summed over the step's micro-batches
  // and every rank; tokens, the tokens routed there; micro_batches, how many the trainer averages.
  // Empty counts: back to each micro-batch's own counts. The last forward's aux loss (and its
  // backward) follow the new counts: last_forward() has it.
  void set_global_aux_counts(const std::vector<int64_t>& counts, int64_t tokens, int64_t micro_batches);
  // What the last forward() returned, its aux loss under the current counts.
  const ForwardResult& last_forward() const { return last_; }
  // The aux-loss-free selection bias of every MoE layer, [n_moe_layers * E] in layer order
  // (empty when model.moe.balance.bias_rate is 0; moe/router.h). update_selection_bias takes one
  // step from load [n_moe_layers * E]: the routing slots of the whole optimizer step, summed over
  // every rank (StepRecord::expert_counts); the trainer calls it once per optimizer step.
  std::vector<float> selection_bias() const;
  void set_selection_bias(const std::vector<float>& bias);
  void update_selection_bias(const std::vector<int64_t>& load);
  // After a non-finite loss: the first block whose output (the next block's input, or the final
  // residual) holds inf/NaN in the last forward; -1: the embedding output already does; n_layers:
  // none does (the head or the loss overflowed).
  int64_t first_nonfinite_block() const;

 private:
  struct Layer;
  // activations outside the blocks: kept, the final norm, logits, losses, tokens; scratch, the rest
  struct Buffers {
    float *x_final = nullptr, *lnf = nullptr, *lnf_rstd = nullptr, *logits = nullptr, *losses = nullptr;
    float *dlogits = nullptr, *dresid = nullptr, *dtmp = nullptr, *dln = nullptr;
    float* dloss = nullptr;
    int32_t *tokens = nullptr, *targets = nullptr;
    int32_t* doc_start = nullptr;  // packed rows' document starts (Batch::doc_start)
  };
  // The model's activation buffers in registration order: per block (`layers`, one per layer) its
  // own and its layers' (attention(l), then moe(l) in an MoE block), then those outside the blocks.
  static void add_buffers(core::ActivationStore& acts, const core::ModelConfig& cfg, int64_t max_tokens,
                          std::vector<std::unique_ptr<Layer>>& layers, Buffers& bufs,
                          const std::function<void(int)>& attention, const std::function<void(int)>& moe);
  void recompute_block(Layer& L, const float* P, int64_t B, int64_t T);
  void run_rows(int64_t N, const std::function<void(Layer&, size_t)>& attention);
  void add_balance_losses(ForwardResult& r) const;
  void refresh_compute_weights();
  // The weights the GEMMs read: the compute copy under mixed precision, the master weights else.
  const float* compute_weights() const { return opts_.precision.mixed() ? compute_.data() : params_.data(); }
  core::Backend& be_;
  core::ModelConfig cfg_;
  ModelOptions opts_;
  core::ParamTable table_;
  core::Arena params_, grads_;
  core::Arena compute_;  // compute weights (mixed precision only)
  bool compute_stale_ = true;
  core::ActivationStore acts_;
  int64_t max_tokens_;
  int64_t n_moe_ = 0;
  std::vector<std::unique_ptr<Layer>> layers_;
  Buffers bufs_;  // bound by acts_
  int64_t B_ = 0, T_ = 0;
  const int32_t* doc_start_ = nullptr;  // the last forward's: bufs_.doc_start or null (unpacked)
  int64_t counted_ = 0;
  std::vector<float> token_losses_;  // [B*T] of the last forward
  std::vector<float> loss_weights_;  // [B*T] of the last forward: its weights, 0 where no target
  double ce_denominator_ = 0;        // the CE part of the last forward = sum w_i ce_i / this
  ForwardResult last_;
  std::vector<core::Arena> kv_cache_;  // per layer [decode_capacity(), qkv width], after RoPE (decode)
  int64_t decode_pos_ = 0;
  bool decoding_ = false;  // the last pass was decode(): nothing kept for backward
};

}  // namespace switchyard::moe
