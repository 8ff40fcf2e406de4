#include "launch/param_sharding.h"

#include <cmath>
#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace switchyard::launch {

using core::ParamKind;

GradientReducer::GradientReducer(const core::ParamTable& table, parallel::ProcessGroups& groups,
                                 int n_layers)
    : groups_(groups), n_layers_(n_layers), started_(static_cast<size_t>(n_layers + 1), false) {
  for (const auto& p : table.specs()) {
    const bool expert = p.kind == ParamKind::expert;
    const Run* last = runs_.empty() ? nullptr : &runs_.back();
    if (last && last->expert == expert && last->layer == p.layer && last->end == p.offset)
      runs_.back().end = p.offset + p.numel;
    else
      runs_.push_back({p.offset, p.offset + p.numel, expert, p.layer});
  }
}

void GradientReducer::start_bucket(float* grads, int layer) {
  const size_t b = layer < 0 ? static_cast<size_t>(n_layers_) : static_cast<size_t>(layer);
  if (started_[b]) return;
  started_[b] = true;
  for (const Run& r : runs_) {
    if ((r.layer < 0 ? -1 : r.layer) != (layer < 0 ? -1 : layer)) continue;
    parallel::Communicator& comm = r.expert ? groups_.expert_data() : groups_.data();
    if (comm.size() > 1) pending_.push_back({&comm, comm.allreduce_sum_async(grads + r.begin, r.end - r.begin)});
  }
}

void GradientReducer::finish(float* grads) {
  for (int l = n_layers_ - 1; l >= -1; --l) start_bucket(grads, l);
  for (auto& [comm, req] : pending_) comm->wait(req);
  pending_.clear();
  std::fill(started_.begin(), started_.end(), false);
}

void GradientReducer::reduce(float* grads) const {
  for (const Run& r : runs_) {
    parallel::Communicator& comm = r.expert ? groups_.expert_data() : groups_.data();
    if (comm.size() > 1) comm.allreduce_sum(grads + r.begin, r.end - r.begin);
  }
}

double GradientReducer::global_norm(core::Backend& be, const float* grads) const {
  double dense = 0, expert = 0;
  for (const Run& r : runs_) (r.expert ? expert : dense) += be.sum_squares(grads + r.begin, r.end - r.begin);
  if (groups_.expert().size() > 1) groups_.expert().host().allreduce_sum(&expert, 1);  // a host double
  return std::sqrt(dense + expert);
}

namespace {
// The routed-expert tensors of a table, in table order, and their total size.
std::vector<const core::ParamSpec*> expert_specs(const core::ParamTable& t, int64_t* total) {
  std::vector<const core::ParamSpec*> out;
  *total = 0;
  for (const auto& p : t.specs())
    if (p.kind == ParamKind::expert) {
      out.push_back(&p);
      *total += p.numel;
    }
  return out;
}
}  // namespace

std::vector<float> gather_full_params(const moe::Model& model, parallel::ProcessGroups& groups,
                                      const core::ModelConfig& cfg) {
  const core::ParamTable& local = model.table();
  std::vector<float> mine(static_cast<size_t>(local.total()));
  model.params_to_host(mine.data());
  const bool rank0 = groups.world().rank() == 0;
  const core::ParamTable full = core::make_param_table(cfg);
  std::vector<float> out;
  if (rank0) out.resize(static_cast<size_t>(full.total()));
  // dense tensors (and, without expert parallelism, everything) from rank 0's own arena
  if (rank0)
    for (const auto& p : local.specs())
      std::memcpy(out.data() + full.at(p.name).offset, mine.data() + p.offset,
                  sizeof(float) * static_cast<size_t>(p.numel));
  parallel::Communicator& eg = groups.expert().host();  // host vectors below
  if (eg.size() == 1) return out;

  // every rank of an expert group sends its experts to the group's rank 0
  int64_t n_expert = 0;
  const auto specs = expert_specs(local, &n_expert);
  std::vector<float> send(static_cast<size_t>(n_expert));
  int64_t at = 0;
  for (const auto* p : specs) {
    std::memcpy(send.data() + at, mine.data() + p->offset, sizeof(float) * static_cast<size_t>(p->numel));
    at += p->numel;
  }
  const int G = eg.size();
  const int64_t bytes = n_expert * static_cast<int64_t>(sizeof(float));  // the same on every rank
  std::vector<int64_t> send_counts(G, 0), send_displs(G, 0), recv_counts(G, 0), recv_displs(G, 0);
  send_counts[0] = bytes;
  const bool group_root = eg.rank() == 0;
  std::vector<float> recv;
  if (group_root) {
    recv.resize(static_cast<size_t>(n_expert) * static_cast<size_t>(G));
    for (int q = 0; q < G; ++q) {
      recv_counts[q] = bytes;
      recv_displs[q] = q * bytes;
    }
  }
  eg.alltoallv(send.data(), send_counts, send_displs, recv.data(), recv_counts, recv_displs);
  if (!rank0) return out;
  for (int q = 0; q < G; ++q) {
    const core::ParamTable tq = core::make_param_table(cfg, q, G);
    int64_t n = 0;
    int64_t pos = q * n_expert;
    for (const auto* p : expert_specs(tq, &n)) {
      std::memcpy(out.data() + full.at(p->name).offset, recv.data() + pos,
                  sizeof(float) * static_cast<size_t>(p->numel));
      pos += p->numel;
    }
  }
  return out;
}

}  // namespace switchyard::launch
