// core/params.h: the parameter spec table and the arenas carved by it (DESIGN decision 2).
// One contiguous block per kind of state (parameters, gradients, master weights, Adam moments);
// every tensor is a (name, shape, offset, kind, layer, expert) row. Names are the Hugging Face
// names of the model's layout. Weight decay, reduction groups, sharding and export are decided by
// these rows, never by a tensor's position.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/backend.h"
#include "core/config.h"

namespace switchyard::core {

enum class ParamKind : uint8_t {
  embedding,
  norm,
  linear,  // dense linear weight (attention, dense MLP, shared expert, lm head)
  bias,
  router,
  expert,  // a routed expert's linear weight
};

struct ParamSpec {
  std::string name;            // Hugging Face name
  std::vector<int64_t> shape;  // [out, in] for linear weights
  int64_t offset = 0;          // in elements, from the arena's start
  int64_t numel = 0;
  ParamKind kind = ParamKind::linear;
  int32_t layer = -1;          // -1: not in a transformer layer
  int32_t expert = -1;         // global expert id for ParamKind::expert, else -1
};

class ParamTable {
 public:
  // Appends a tensor at the end of the arena (adjacent to the previous one, no padding).
  int add(std::string name, std::vector<int64_t> shape, ParamKind kind, int layer = -1,
          int expert = -1);
  const std::vector<ParamSpec>& specs() const { return specs_; }
  const ParamSpec& operator[](size_t i) const { return specs_[i]; }
  size_t size() const { return specs_.size(); }
  int64_t total() const { return total_; }  // arena size in elements
  int find(const std::string& name) const;  // -1 if absent
  const ParamSpec& at(const std::string& name) const;  // throws if absent

 private:
  std::vector<ParamSpec> specs_;
  std::unordered_map<std::string, int> index_;
  int64_t total_ = 0;
};

// Whether AdamW decays this tensor, decided by its kind and the optimizer flags.
bool param_decays(const ParamSpec& p, const OptimConfig& cfg);

// The routed experts of every MoE layer that expert-parallel rank `ep_rank` of `ep_size` holds:
// global ids [first, first + count), contiguous blocks in rank order (the one ownership rule; the
// parameter table, the MoE layer and checkpoints follow it).
struct ExpertRange {
  int64_t first = 0, count = 0;
};
ExpertRange local_experts(const ModelConfig& cfg, int ep_rank, int ep_size);
// The inverse of local_experts: the expert-parallel rank (of ep_size) that holds global expert
// `expert`, and the expert's index among that rank's experts (the MoE layer's slot destination
// and tag in the token exchange).
struct ExpertOwner {
  int32_t rank = 0, local = 0;
};
ExpertOwner expert_owner(const ModelConfig& cfg, int64_t expert, int ep_size);

// The table of the model described by `cfg`, in arena order. Layout (see docs/ARCHITECTURE.md):
// q,k,v weights (and biases) are adjacent so one GEMM computes the packed qkv; each expert's
// gate (w1/gate_proj) and up (w3/up_proj) weights are adjacent so one GEMM computes gate|up.
// With expert parallelism (ep_size > 1) the table holds only the routed experts of rank ep_rank of
// the expert group (local_experts) of every MoE layer, still named by their global ids; every other
// tensor is replicated.
ParamTable make_param_table(const ModelConfig& cfg, int ep_rank = 0, int ep_size = 1);

// The index (table order) of the first tensor of `host` (laid out as `table`) that holds inf or
// NaN, or -1 when every value is finite.
int64_t first_nonfinite_param(const ParamTable& table, const float* host);

// An owning block of floats in a backend's memory.
class Arena {
 public:
  Arena() = default;
  Arena(Backend& be, int64_t numel);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  Arena(Arena&& o) noexcept;
  Arena& operator=(Arena&& o) noexcept;
  float* data() const { return data_; }
  int64_t numel() const { return numel_; }
  float* at(const ParamSpec& p) const { return data_ + p.offset; }
  void zero();

 private:
  Backend* be_ = nullptr;
  float* data_ = nullptr;
  int64_t numel_ = 0;
};

}  // namespace switchyard::core
