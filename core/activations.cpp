// core/activations.cpp: activation storage under a checkpointing policy (see core/activations.h).
#include "core/activations.h"

#include <algorithm>

#include "core/error.h"

namespace switchyard::core {

ActivationStore::ActivationStore(Backend& be, Recompute policy) : ActivationStore(policy) { be_ = &be; }
ActivationStore::ActivationStore(Recompute policy) : policy_(policy) {
  SY_CHECK(policy != Recompute::automatic, "activation checkpointing 'auto' reached the activation store unresolved");
}

bool ActivationStore::kept(Keep k) const {
  switch (k) {
    case Keep::always: return true;
    case Keep::expensive: return policy_ != Recompute::full;
    case Keep::cheap: return policy_ == Recompute::none;
    case Keep::scratch: return false;
  }
  return false;
}

ActivationStore::~ActivationStore() {
  for (auto& s : slots_)
    if (s.own) be_->release(s.own);
  for (auto& [name, sh] : shared_)
    if (sh.ptr) be_->release(sh.ptr);
}

int64_t ActivationStore::footprint(int64_t bytes) { return (std::max<int64_t>(bytes, 1) + 63) / 64 * 64; }

void* ActivationStore::take(int64_t bytes) { return be_->alloc(static_cast<size_t>(std::max<int64_t>(bytes, 1))); }

void ActivationStore::add_bytes(int layer, const std::string& name, int64_t bytes, Keep keep,
                                std::function<void(void*)> bind) {
  SY_CHECK(!allocated_, "activation buffer {} of layer {} registered after allocate()", name, layer);
  SY_CHECK(bytes >= 0, "activation buffer {} of layer {}: negative size", name, layer);
  for (const auto& s : slots_)
    SY_CHECK(!(s.layer == layer && s.name == name), "activation buffer {} of layer {} registered twice",
             name, layer);
  slots_.push_back({layer, name, bytes, keep, std::move(bind)});
}

void ActivationStore::allocate() {
  SY_CHECK(!allocated_, "ActivationStore::allocate() called twice");
  SY_CHECK(!is_layout(), "ActivationStore::allocate() on a layout");
  for (const auto& s : slots_)
    if (!kept(s.keep)) {
      Shared& sh = shared_[s.name];
      sh.bytes = std::max(sh.bytes, s.bytes);
    }
  for (auto& [name, sh] : shared_) sh.ptr = take(sh.bytes);
  for (auto& s : slots_) {
    if (kept(s.keep)) s.own = take(s.bytes);
    s.bind(s.own ? s.own : shared_.at(s.name).ptr);
  }
  allocated_ = true;
}

void ActivationStore::ensure_bytes(int layer, const std::string& name, int64_t bytes) {
  SY_CHECK(allocated_, "ActivationStore::ensure before allocate()");
  for (auto& s : slots_) {
    if (s.layer != layer || s.name != name) continue;
    if (bytes <= s.bytes) return;
    s.bytes = bytes;
    if (s.own) {
      be_->release(s.own);
      s.own = take(bytes);
      s.bind(s.own);
      return;
    }
    Shared& sh = shared_.at(name);
    if (bytes <= sh.bytes) {
      return;
    }
    be_->release(sh.ptr);
    sh.bytes = bytes;
    sh.ptr = take(bytes);
    for (auto& o : slots_)
      if (!o.own && o.name == name) o.bind(sh.ptr);
    return;
  }
  throw_internal("activation buffer {} of layer {} was never registered", name, layer);
}

// Counted from the registrations, so a layout and an allocated store agree: per-layer storage
// for each kept buffer, and one shared buffer per name of the rest (the largest registered;
// ensure() keeps it the largest).
int64_t ActivationStore::kept_bytes() const {
  int64_t n = 0;
  for (const auto& s : slots_)
    if (kept(s.keep)) n += footprint(s.bytes);
  return n;
}

int64_t ActivationStore::shared_bytes() const {
  std::map<std::string, int64_t> largest;
  for (const auto& s : slots_)
    if (!kept(s.keep)) largest[s.name] = std::max(largest[s.name], s.bytes);
  int64_t n = 0;
  for (const auto& [name, bytes] : largest) n += footprint(bytes);
  return n;
}

int64_t ActivationStore::bytes() const { return kept_bytes() + shared_bytes(); }

}  // namespace switchyard::core
