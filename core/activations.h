// core/activations.h: where a model's activation buffers live under an activation-checkpointing
// policy. Every layer registers each buffer it uses with a class saying when its contents must
// survive from forward to backward:
//   always     kept per layer under every policy (block inputs, the routing plan)
//   expensive  kept per layer unless `full` (GEMM outputs, attention outputs, exchanged tokens)
//   cheap      kept per layer only under `none` (norm outputs, SwiGLU products)
//   scratch    never kept: one buffer per name shared by all layers (backward temporaries)
// A buffer that is not kept for its layer points into storage shared by every layer that
// registered that name (sized for the largest); the layer recomputes its contents in backward.
// Storage is allocated once (allocate()), so the activation memory of a micro-batch is fixed and
// every micro-batch of an accumulation window reuses it.
// The list of buffers lives in the layers' registration code only (core/attention_layer.h,
// moe/moe_layer.h, moe/model.h: each has a static register_activations). A layout store (no
// backend) records the same registrations and counts bytes() without allocating anything: that
// is how launch/plan sizes a config, however large, before it runs.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/choices.h"

namespace switchyard::core {


enum class Keep { always, expensive, cheap, scratch };

class ActivationStore {
 public:
  // `policy` is resolved (not Recompute::automatic).
  ActivationStore(Backend& be, Recompute policy);
  // A layout: records registrations and counts bytes() as allocate() would take them, allocating
  // nothing; allocate() and ensure() are refused.
  explicit ActivationStore(Recompute policy);
  ~ActivationStore();
  ActivationStore(const ActivationStore&) = delete;
  ActivationStore& operator=(const ActivationStore&) = delete;

  Recompute policy() const { return policy_; }
  bool is_layout() const { return be_ == nullptr; }
  // Whether a buffer of class k survives from forward to backward under this policy.
  bool kept(Keep k) const;

  // Registers *slot (a T*) as `count` elements of buffer `name` of `layer` (-1: outside the layers).
  // *slot is set by allocate(); until then it is null.
  template <class T>
  void add(int layer, const std::string& name, T** slot, int64_t count, Keep keep) {
    add_bytes(layer, name, count * static_cast<int64_t>(sizeof(T)), keep,
              [slot](void* p) { *slot = static_cast<T*>(p); });
  }
  void allocate();
  // Grows buffer `name` of `layer` to at least `count` T's (expert rows under expert parallelism).
  // Contents are lost; shared storage is regrown for every layer that uses it. Call only where the
  // buffer holds nothing live (forward, before writing it).
  template <class T>
  void ensure(int layer, const std::string& name, int64_t count) {
    ensure_bytes(layer, name, count * static_cast<int64_t>(sizeof(T)));
  }

  // Bytes of the storage: allocated now, or for a layout what allocate() would take. Counted from
  // the registrations (as grown by ensure()) by the backend's allocation rule (footprint()).
  int64_t bytes() const;
  // Bytes kept per layer and shared, for reports.
  int64_t kept_bytes() const;
  int64_t shared_bytes() const;

 private:
  struct Slot {
    int layer;
    std::string name;
    int64_t bytes;
    Keep keep;
    std::function<void(void*)> bind;
    void* own = nullptr;  // per-layer storage (null when shared)
  };
  struct Shared {
    int64_t bytes = 0;
    void* ptr = nullptr;
  };
  void add_bytes(int layer, const std::string& name, int64_t bytes, Keep keep,
                 std::function<void(void*)> bind);
  void ensure_bytes(int layer, const std::string& name, int64_t bytes);
  void* take(int64_t bytes);
  // What a buffer of `bytes` occupies: backend allocations are never empty and 64-byte aligned
  // (core/backend.h).
  static int64_t footprint(int64_t bytes);

  Backend* be_ = nullptr;  // null: a layout
  Recompute policy_;
  std::vector<Slot> slots_;
  std::map<std::string, Shared> shared_;
  bool allocated_ = false;
};

}  // namespace switchyard::core
