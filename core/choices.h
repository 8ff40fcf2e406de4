// core/choices.h: the enumerated choices of an experiment config, each with its one table of
// names. Configs are parsed into these enums (core/config.h) and written back from the same
// tables; nothing downstream compares strings.
//   Dtype              train.precision            fp32 | bf16 | fp16 (the compute dtype)
//   Recompute          train.activation_checkpointing   none | full | selective | auto
//   ExchangeAlgorithm  parallel.token_exchange    flat | hierarchical | auto
//   Device             train.device               cpu | cuda
//   ExpertDecayMode    optim.expert_decay.mode    static | dynamic
//   ExpertDecayTarget  optim.expert_decay.apply_to   experts | router | both
//   AuxScope           model.moe.balance.aux_scope    micro_batch | global
//   SampleUnit         data.sample                    window | document
#pragma once

#include <fmt/format.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace switchyard::core {

// Compute dtypes of mixed precision (core/precision.h: the policy that picks them per role).
enum class Dtype : uint8_t { f32, bf16, f16 };

// Activation checkpointing (core/activations.h). `automatic` is resolved by launch/plan.h to the
// least recomputation that fits the memory budget before any layer sees it.
enum class Recompute : uint8_t { none, full, selective, automatic };
inline constexpr int kResolvedRecomputes = 3;  // none, full, selective: the ones a model can run

// How MoE tokens travel between the ranks of an expert group (parallel/token_exchange.h).
// `automatic` picks flat or hierarchical per layer from the cost model.
enum class ExchangeAlgorithm : uint8_t { flat, hierarchical, automatic };

// Where a run computes (core::make_backend): the CPU backend, or the CUDA backend on the rank's GPU.
enum class Device : uint8_t { cpu, cuda };
// model.moe.router.scoring: softmax over the experts, or DeepSeek-V3's per-expert sigmoid.
enum class RouterScoring : uint8_t { softmax, sigmoid };
// Which routed assignments an expert over its capacity drops (moe/capacity.h): the latest in
// token order (`position`), or the least important (`importance`: batch-prioritised routing).
enum class DropPolicy : uint8_t { position, importance };
// An assignment's importance: its gate probability (`gate`), or its token's margin between the
// top-1 and the top-(k+1) score (`margin`).
enum class ImportanceScore : uint8_t { gate, margin };

// Weight decay of the routed experts (optim/expert_decay.h): `fixed` (named "static") decays every
// expert alike; `dynamic` scales each expert's decay by a multiplier that follows its routed load.
enum class ExpertDecayMode : uint8_t { fixed, dynamic };
// What the dynamic multiplier of expert e scales: its weights, its router row, or both.
enum class ExpertDecayTarget : uint8_t { experts, router, both };

// model.moe.balance.aux_scope: the load fractions of the Switch aux loss come from one
// micro-batch on one rank, or from the whole optimizer step over every rank (moe/moe_layer.h).
enum class AuxScope : uint8_t { micro_batch, global };

// data.sample: a training sample is a random window of the token stream (crossing documents), or
// a document (a chunk of train.seq_len + 1 tokens of a longer one; data/samples.h).
enum class SampleUnit : uint8_t { window, document };

// The names table of an enum: EnumNames<E>::table lists every value with its name.
template <class E> struct EnumNames;
template <> struct EnumNames<Dtype> {
  static constexpr std::array<std::pair<Dtype, std::string_view>, 3> table{
      {{Dtype::f32, "fp32"}, {Dtype::bf16, "bf16"}, {Dtype::f16, "fp16"}}};
};
template <> struct EnumNames<Recompute> {
  static constexpr std::array<std::pair<Recompute, std::string_view>, 4> table{
      {{Recompute::none, "none"}, {Recompute::full, "full"}, {Recompute::selective, "selective"},
       {Recompute::automatic, "auto"}}};
};
template <> struct EnumNames<ExchangeAlgorithm> {
  static constexpr std::array<std::pair<ExchangeAlgorithm, std::string_view>, 3> table{
      {{ExchangeAlgorithm::flat, "flat"}, {ExchangeAlgorithm::hierarchical, "hierarchical"},
       {ExchangeAlgorithm::automatic, "auto"}}};
};

template <> struct EnumNames<Device> {
  static constexpr std::array<std::pair<Device, std::string_view>, 2> table{
      {{Device::cpu, "cpu"}, {Device::cuda, "cuda"}}};
};
template <> struct EnumNames<RouterScoring> {
  static constexpr std::array<std::pair<RouterScoring, std::string_view>, 2> table{
      {{RouterScoring::softmax, "softmax"}, {RouterScoring::sigmoid, "sigmoid"}}};
};

template <> struct EnumNames<DropPolicy> {
  static constexpr std::array<std::pair<DropPolicy, std::string_view>, 2> table{
      {{DropPolicy::position, "position"}, {DropPolicy::importance, "importance"}}};
};
template <> struct EnumNames<ImportanceScore> {
  static constexpr std::array<std::pair<ImportanceScore, std::string_view>, 2> table{
      {{ImportanceScore::gate, "gate"}, {ImportanceScore::margin, "margin"}}};
};

template <> struct EnumNames<ExpertDecayMode> {
  static constexpr std::array<std::pair<ExpertDecayMode, std::string_view>, 2> table{
      {{ExpertDecayMode::fixed, "static"}, {ExpertDecayMode::dynamic, "dynamic"}}};
};
template <> struct EnumNames<ExpertDecayTarget> {
  static constexpr std::array<std::pair<ExpertDecayTarget, std::string_view>, 3> table{
      {{ExpertDecayTarget::experts, "experts"}, {ExpertDecayTarget::router, "router"},
       {ExpertDecayTarget::both, "both"}}};
};

template <> struct EnumNames<AuxScope> {
  static constexpr std::array<std::pair<AuxScope, std::string_view>, 2> table{
      {{AuxScope::micro_batch, "micro_batch"}, {AuxScope::global, "global"}}};
};

template <> struct EnumNames<SampleUnit> {
  static constexpr std::array<std::pair<SampleUnit, std::string_view>, 2> table{
      {{SampleUnit::window, "window"}, {SampleUnit::document, "document"}}};
};

template <class E>
concept NamedEnum = requires { EnumNames<E>::table; };

// The name of a value (a string literal: data() is null-terminated).
template <NamedEnum E> constexpr std::string_view name_of(E value) {
  for (const auto& [v, name] : EnumNames<E>::table)
    if (v == value) return name;
  return "?";
}
// The value named `name`, or nothing.
template <NamedEnum E> constexpr std::optional<E> value_named(std::string_view name) {
  for (const auto& [v, n] : EnumNames<E>::table)
    if (n == name) return v;
  return std::nullopt;
}
// "fp32, bf16, fp16": every name, for messages.
template <NamedEnum E> std::string names_of() {
  std::string out;
  for (const auto& [v, name] : EnumNames<E>::table) out += (out.empty() ? "" : ", ") + std::string(name);
  return out;
}

}  // namespace switchyard::core

// fmt prints a choice by its name: fmt::format("{}", Dtype::bf16) == "bf16".
template <switchyard::core::NamedEnum E>
struct fmt::formatter<E> : fmt::formatter<std::string_view> {
  auto format(E value, fmt::format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(switchyard::core::name_of(value), ctx);
  }
};
