// launch/nonfinite.cpp: locating the first non-finite activation or gradient (see nonfinite.h).
#include "launch/nonfinite.h"

#include <fmt/format.h>
#include <mpi.h>

#include <array>
#include <climits>
#include <cmath>
#include <cstring>
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
std::string broadcast_text(const std::string& mine, int owner) {
  std::array<char, 1024> buf{};
  std::strncpy(buf.data(), mine.c_str(), buf.size() - 1);
  const parallel::WaitScope wait("the search for inf/NaN");
  MPI_Bcast(buf.data(), static_cast<int>(buf.size()), MPI_CHAR, owner, MPI_COMM_WORLD);
  return std::string(buf.data());
}
}  // namespace

std::string locate_nonfinite(const moe::Model& model, bool local_loss_nonfinite) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const int n_layers = static_cast<int>(model.config().n_layers);

  // forward: the first rank (lowest) whose loss was non-finite names the block
  struct {
    int key;
    int rank;
  } in{local_loss_nonfinite ? 0 : 1, rank}, out{};
  {
    const parallel::WaitScope wait("the search for inf/NaN");
    MPI_Allreduce(&in, &out, 1, MPI_2INT, MPI_MINLOC, MPI_COMM_WORLD);
  }
  if (out.key == 0) {
    std::string text;
    if (rank == out.rank) {
      const int64_t b = model.first_nonfinite_block();
      if (b < 0) text = fmt::format("the forward pass on rank {} produced inf/NaN in the embedding output", rank);
      else if (b < n_layers) text = fmt::format("the forward pass on rank {} produced inf/NaN first in the output of layer {}", rank, b);
      else text = fmt::format("the forward pass on rank {} produced a non-finite loss (logits or cross-entropy; every block output was finite)", rank);
    }
    return broadcast_text(text, out.rank);
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
  in = {best, rank};
  {
    const parallel::WaitScope wait("the search for inf/NaN");
    MPI_Allreduce(&in, &out, 1, MPI_2INT, MPI_MINLOC, MPI_COMM_WORLD);
  }
  if (out.key == INT_MAX) return "no gradient is non-finite now (the overflow was transient)";
  const std::string text =
      rank == out.rank ? fmt::format("the first gradient backward produced with inf/NaN is {} (on rank {})", name, rank)
                       : std::string();
  return broadcast_text(text, out.rank);
}

}  // namespace switchyard::launch

namespace switchyard::launch {

void require_finite_params(const moe::Model& model, int64_t step) {
  int size = 1, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::vector<float> host(static_cast<size_t>(model.num_params()));
  model.params_to_host(host.data());
  const int64_t bad = core::first_nonfinite_param(model.table(), host.data());
  int owner = bad >= 0 ? rank : INT_MAX;
  {
    const parallel::WaitScope wait("the check for inf/NaN in the weights before a save");
    MPI_Allreduce(MPI_IN_PLACE, &owner, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  }
  if (owner == INT_MAX) return;
  const std::string name = broadcast_text(bad >= 0 ? model.table()[static_cast<size_t>(bad)].name : "", owner);
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
