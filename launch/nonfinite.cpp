// launch/nonfinite.cpp: locating the first non-finite activation or gradient (see nonfinite.h).
#include "launch/nonfinite.h"

#include <fmt/format.h>

#include <array>
#include <climits>
#include <cmath>
#include <cstring>
#include <tuple>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/params.h"
#include "parallel/watchdog.h"

namespace switchyard::launch {

namespace {
// Position of a tensor in the order backward produces gradients (smaller = earlier).
int backward_order(const core::ParamSpec& p, int n_layers) {
  if (p.layer >= 0) return 1 + (n_layers - 1 - p.layer);
  if (p.kind == core::ParamKind::embedding && p.name.find("embed_tokens") != std::string::npos)
    return n_layers + 1;
  return 0;  // LM head, final norm
}

// The text of `owner` on every rank.
std::string broadcast_text(const std::string& mine, int owner, parallel::Communicator& world) {
  std::array<char, 1024> buf{};
  std::strncpy(buf.data(), mine.c_str(), buf.size() - 1);
  const parallel::WaitScope wait("the search for inf/NaN");
  world.broadcast(buf.data(), static_cast<int64_t>(buf.size()), owner);
  return std::string(buf.data());
}

// The lowest `key` over the ranks and the lowest rank holding it (MPI's MINLOC): {key, rank}.
std::pair<int, int> min_with_rank(int key, const char* what, parallel::Communicator& world) {
  int64_t packed = int64_t{key} * world.size() + world.rank();
  const parallel::WaitScope wait(what);
  world.allreduce_min(&packed, 1);
  return {static_cast<int>(packed / world.size()), static_cast<int>(packed % world.size())};
}
}  // namespace

std::string locate_nonfinite(const moe::Model& model, bool local_loss_nonfinite, parallel::Communicator& world) {
  const int rank = world.rank();
  const int n_layers = static_cast<int>(model.config().n_layers);

  // forward: the first rank (lowest) whose loss was non-finite names the block
  auto [key, owner] = min_with_rank(local_loss_nonfinite ? 0 : 1, "the search for inf/NaN", world);
  if (key == 0) {
    std::string text;
    if (rank == owner) {
      const int64_t b = model.first_nonfinite_block();
      if (b < 0) text = fmt::format("the forward pass on rank {} produced inf/NaN in the embedding output", rank);
      else if (b < n_layers) text = fmt::format("the forward pass on rank {} produced inf/NaN first in the output of layer {}", rank, b);
      else text = fmt::format("the forward pass on rank {} produced a non-finite loss (logits or cross-entropy; every block output was finite)", rank);
    }
    return broadcast_text(text, owner, world);
  }

  // backward: the first tensor in backward order with a non-finite gradient, over every rank
  core::Backend& be = model.backend();
  const core::ParamTable& table = model.table();
  int best = INT_MAX;
  std::string name;
  for (const auto& p : table.specs()) {
    const int k = backward_order(p, n_layers);
    if (k >= best) continue;
    if (!std::isfinite(be.sum_squares(model.grads() + p.offset, p.numel))) {
      best = k;
      name = p.name;
    }
  }
  std::tie(key, owner) = min_with_rank(best, "the search for inf/NaN", world);
  if (key == INT_MAX) return "no gradient is non-finite now (the overflow was transient)";
  const std::string text =
      rank == owner ? fmt::format("the first gradient backward produced with inf/NaN is {} (on rank {})", name, rank)
                       : std::string();
  return broadcast_text(text, owner, world);
}

}  // namespace switchyard::launch

namespace switchyard::launch {

void require_finite_params(const moe::Model& model, int64_t step, parallel::Communicator& world) {
  const int size = world.size(), rank = world.rank();
  std::vector<float> host(static_cast<size_t>(model.num_params()));
  model.params_to_host(host.data());
  const int64_t bad = core::first_nonfinite_param(model.table(), host.data());
  int64_t owner = bad >= 0 ? rank : INT_MAX;
  {
    const parallel::WaitScope wait("the check for inf/NaN in the weights before a save");
    world.allreduce_min(&owner, 1);
  }
  if (owner == INT_MAX) return;
  const std::string name =
      broadcast_text(bad >= 0 ? model.table()[static_cast<size_t>(bad)].name : "", static_cast<int>(owner), world);
  throw_usage("training diverged at step {}: the optimizer step left inf/NaN in the weights, first in {}{}; the "
              "checkpoint of step {} was not saved (the latest one is the previous). Lower optim.lr or raise "
              "optim.warmup_steps",
              step, name, size > 1 ? fmt::format(" (on rank {})", owner) : "", step);
}

void require_finite_weights(const core::ModelConfig& cfg, const std::vector<float>& params,
                            const std::string& source, bool allow) {
  if (allow) return;
  const core::ParamTable table = core::make_param_table(cfg);
  const int64_t bad = core::first_nonfinite_param(table, params.data());
  if (bad >= 0)
    throw_usage("{}: tensor {} holds inf/NaN (weights of a diverged run?); use an earlier checkpoint "
                "(<run>/checkpoints/step-NNNNNN), or pass --allow-nonfinite to go on anyway",
                source, table[static_cast<size_t>(bad)].name);
}

}  // namespace switchyard::launch
