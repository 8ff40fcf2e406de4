// tests/mpi/test_expert_parallel_model.cpp: the whole model under expert parallelism against the
// same model in one process. Every rank builds (a) the full model on the full global batch and
// (b) its expert-parallel share (n_experts / E experts per layer, tokens exchanged flat or
// hierarchically) on its slice of the batch, with the trainer's gradient reduction (dense over all
// ranks, experts over the expert-data group). Loss and every gradient tensor this rank holds must
// equal the single-process ones (fp32, 1e-5 relative in norm). Variants: top-p routing (unused
// slots cross the dispatcher), expert capacity by position and by importance (gate, margin): each
// rank's kept slots equal its slice of the single process's, slot for slot. Under activation checkpointing
// (full: the dispatch exchange runs again in backward with the saved plan; selective) the
// expert-parallel gradients and expert counts are bit-identical to those without. On the
// device-discipline checker (a device-check CPU backend, the process groups behind the checking
// communicator: the dispatcher's and the exchange's device path) they are bit-identical to the
// plain CPU + MPI run. With top-p routing (slots a token leaves unused are dropped before the
// exchange) the same equality holds.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "core/backend.h"
#include "core/config.h"
#include "core/device_check_backend.h"
#include "launch/param_sharding.h"
#include "moe/model.h"
#include "parallel/device_check_communicator.h"
#include "parallel/mpi_communicator.h"
#include "parallel/process_groups.h"
#include "parallel/token_exchange.h"
#include "tests/unit/testing.h"

namespace sy = switchyard;

namespace {

// The shared small model with 8 experts of width 16 (four per rank at E=2, two at E=4).
sy::core::ModelConfig small_model() {
  sy::core::ModelConfig c = sy::test::small_moe_model(2);
  c.init_std = 0.1;
  c.moe.n_experts = 8;
  c.moe.expert_size = 16;
  c.moe.aux_loss_coef = 0.0;  // the Switch loss of a slice is not additive over slices
  c.moe.z_loss_coef = 0.01;   // the z-loss is a mean over tokens: additive
  return c;
}

// small_model() with top-p routing: 3 slots per token, of which a token keeps 1 to 3, so unused
// slots (idx -1, pos -1) go through the expert-parallel dispatcher's exchange path.
sy::core::ModelConfig top_p_model() {
  sy::core::ModelConfig c = small_model();
  c.moe.router.top_p = 0.4;
  c.moe.router.k_max = 3;
  return c;
}

// small_model() with expert capacity 0.75 (moe/capacity.h): over-full experts drop, decided over
// the expert group's tokens, which must be one process's decision over the whole batch.
sy::core::ModelConfig capacity_model(sy::core::DropPolicy policy, sy::core::ImportanceScore score) {
  sy::core::ModelConfig c = small_model();
  c.moe.router.capacity_factor = 0.75;
  c.moe.router.min_capacity = 1;
  c.moe.router.drop_policy = policy;
  c.moe.router.importance = score;
  return c;
}

std::vector<float> host(const sy::moe::Model& m, const float* dev) {
  std::vector<float> v(static_cast<size_t>(m.num_params()));
  m.backend().copy_to_host(v.data(), dev, v.size() * sizeof(float));
  return v;
}

void check_against_single_process(int E, sy::parallel::ExchangeAlgorithm algo, int ranks_per_node,
                                  const sy::core::ModelConfig& cfg = small_model()) {
  auto world = sy::parallel::MpiCommunicator::world();
  const int N = world->size(), rank = world->rank();
  sy::parallel::ProcessGroups groups(*world, {E, ranks_per_node});
  const int64_t T = 16, B_local = 2, B = B_local * N;
  std::vector<int32_t> tokens(static_cast<size_t>(B * T)), targets(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<int32_t>((i * 2654435761u >> 7) % 64);
    targets[i] = static_cast<int32_t>((i * 40503u + 11) % 64);
  }
  auto be = sy::core::make_cpu_backend(1);

  sy::moe::Model full(*be, cfg, B, T);
  full.init_random(7);
  const auto ref = full.forward(tokens.data(), targets.data(), B, T);
  full.zero_grads();
  full.backward();
  const auto ref_grads = host(full, full.grads());
  if (cfg.moe.router.top_p > 0) {  // the test needs tokens with unused slots, and tokens without
    for (const auto& layer : full.expert_counts()) {
      int64_t kept = 0;
      for (int64_t c : layer) kept += c;
      EXPECT_GT(kept, B * T) << "every token keeps more than one expert";
      EXPECT_LT(kept, B * T * cfg.moe.router.k_max) << "no token has an unused slot";
    }
  }

  auto exchange = sy::parallel::make_token_exchange(algo, groups.exchange_groups(), *be);
  sy::moe::Model part(*be, cfg, B_local, T, {exchange.get(), groups.expert().rank(), E});
  part.init_random(7);
  const auto r = part.forward(tokens.data() + rank * B_local * T, targets.data() + rank * B_local * T, B_local, T);
  part.zero_grads();
  sy::launch::GradientReducer reducer(part.table(), groups, static_cast<int>(cfg.n_layers));
  part.backward(1.0f / static_cast<float>(N),
                [&](int layer) { reducer.start_bucket(part.grads(), layer); });
  reducer.finish(part.grads());
  const auto grads = host(part, part.grads());
  if (cfg.moe.router.capacity_factor > 0 && E == N) {  // the same slots dropped, this rank's slice
    const auto NK = static_cast<std::ptrdiff_t>(B_local * T * cfg.moe.slots_per_token());
    int64_t dropped = 0;
    for (int64_t l = 0; l < full.num_moe_layers(); ++l) {
      const auto& want = full.moe_stats(l).kept;
      EXPECT_EQ(part.moe_stats(l).kept, std::vector<int32_t>(want.begin() + rank * NK, want.begin() + (rank + 1) * NK))
          << "layer " << l << " on rank " << rank;
      EXPECT_EQ(part.moe_stats(l).capacity, full.moe_stats(l).capacity);
      dropped += full.moe_stats(l).dropped;
    }
    EXPECT_GT(dropped, 0) << "the capacity must drop something";
  }

  double loss = r.loss / N;
  world->allreduce_sum(&loss, 1);
  EXPECT_NEAR(loss, ref.loss, 1e-5 * std::abs(ref.loss));
  EXPECT_NEAR(reducer.global_norm(*be, part.grads()),
              std::sqrt(be->sum_squares(full.grads(), full.num_params())), 1e-5 * 10);
  int experts_seen = 0;
  for (const auto& p : part.table().specs()) {
    const auto& q = full.table().at(p.name);
    double num = 0, den = 0;
    for (int64_t i = 0; i < p.numel; ++i) {
      const double a = grads[p.offset + i], b = ref_grads[q.offset + i];
      num += (a - b) * (a - b);
      den += b * b;
    }
    EXPECT_LE(std::sqrt(num), 1e-5 * std::sqrt(den) + 1e-12) << p.name << " on rank " << rank;
    experts_seen += p.kind == sy::core::ParamKind::expert;
  }
  // this rank holds exactly its share of the experts
  EXPECT_EQ(experts_seen, 3 * static_cast<int>(cfg.n_layers) * static_cast<int>(cfg.moe.n_experts) / E);
}

struct EpRun {
  std::vector<float> grads;
  std::vector<std::vector<int64_t>> counts;
  double loss = 0;
};

// device_check: the CPU backend behind the device-discipline checker, the groups split from the
// checking communicator.
EpRun run_expert_parallel(int E, sy::parallel::ExchangeAlgorithm algo, int ranks_per_node,
                          sy::core::Recompute recompute, bool device_check = false) {
  auto world = sy::parallel::MpiCommunicator::world();
  const int rank = world->rank();
  auto be = device_check ? sy::core::make_device_check_backend(sy::core::make_cpu_backend(1))
                         : sy::core::make_cpu_backend(1);
  auto checked = device_check
                     ? sy::parallel::make_device_check_communicator(*world, sy::core::device_check_registry(*be))
                     : nullptr;
  sy::parallel::ProcessGroups groups(checked ? *checked : *world, {E, ranks_per_node});
  const auto cfg = small_model();
  const int64_t T = 16, B_local = 2;
  std::vector<int32_t> tokens(static_cast<size_t>(B_local * T)), targets(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    const size_t g = i + static_cast<size_t>(rank) * tokens.size();
    tokens[i] = static_cast<int32_t>((g * 2654435761u >> 7) % 64);
    targets[i] = static_cast<int32_t>((g * 40503u + 11) % 64);
  }
  auto exchange = sy::parallel::make_token_exchange(algo, groups.exchange_groups(), *be);
  sy::moe::ModelOptions opts;
  opts.recompute = recompute;
  sy::moe::Model part(*be, cfg, B_local, T, {exchange.get(), groups.expert().rank(), E}, opts);
  part.init_random(7);
  EpRun out;
  part.zero_grads();
  for (int micro = 0; micro < 2; ++micro) {  // an accumulation window of two micro-batches
    out.loss += part.forward(tokens.data(), targets.data(), B_local, T).loss;
    part.backward(0.5f);
    const auto c = part.expert_counts();
    if (out.counts.empty()) out.counts = c;
    else
      for (size_t l = 0; l < c.size(); ++l)
        for (size_t e = 0; e < c[l].size(); ++e) out.counts[l][e] += c[l][e];
  }
  out.grads = host(part, part.grads());
  return out;
}

TEST(ExpertParallelModel, CheckpointingIsBitIdentical) {
  auto world = sy::parallel::MpiCommunicator::world();
  const int E = world->size();
  const auto algo = E >= 4 ? sy::parallel::ExchangeAlgorithm::hierarchical
                           : sy::parallel::ExchangeAlgorithm::flat;
  const int rpn = E >= 4 ? 2 : 0;
  const EpRun none = run_expert_parallel(E, algo, rpn, sy::core::Recompute::none);
  for (auto r : {sy::core::Recompute::full, sy::core::Recompute::selective}) {
    const EpRun got = run_expert_parallel(E, algo, rpn, r);
    EXPECT_EQ(0, std::memcmp(got.grads.data(), none.grads.data(), got.grads.size() * sizeof(float)))
        << sy::core::name_of(r) << " on rank " << world->rank();
    EXPECT_EQ(got.counts, none.counts);
    EXPECT_EQ(got.loss, none.loss);
  }
}

TEST(ExpertParallelModel, DeviceCheckIsBitIdentical) {
  auto world = sy::parallel::MpiCommunicator::world();
  const int E = world->size();
  for (auto algo : {sy::parallel::ExchangeAlgorithm::flat, sy::parallel::ExchangeAlgorithm::hierarchical}) {
    for (auto r : {sy::core::Recompute::none, sy::core::Recompute::full}) {
      const EpRun plain = run_expert_parallel(E, algo, 1, r);
      const EpRun checked = run_expert_parallel(E, algo, 1, r, /*device_check=*/true);
      EXPECT_EQ(0, std::memcmp(checked.grads.data(), plain.grads.data(), plain.grads.size() * sizeof(float)))
          << sy::core::name_of(algo) << " " << sy::core::name_of(r) << " on rank " << world->rank();
      EXPECT_EQ(checked.counts, plain.counts);
      EXPECT_EQ(checked.loss, plain.loss);
    }
  }
}

TEST(ExpertParallelModel, FlatAllExpertsSpread) {
  auto world = sy::parallel::MpiCommunicator::world();
  check_against_single_process(world->size(), sy::parallel::ExchangeAlgorithm::flat, 0);
}

TEST(ExpertParallelModel, HierarchicalOnSimulatedNodes) {
  auto world = sy::parallel::MpiCommunicator::world();
  if (world->size() < 4) GTEST_SKIP() << "needs 4 ranks for 2 nodes x 2";
  check_against_single_process(world->size(), sy::parallel::ExchangeAlgorithm::hierarchical, 2);
}

TEST(ExpertParallelModel, TopPRoutingFlat) {
  auto world = sy::parallel::MpiCommunicator::world();
  check_against_single_process(world->size(), sy::parallel::ExchangeAlgorithm::flat, 0, top_p_model());
}

TEST(ExpertParallelModel, TopPRoutingHierarchical) {
  auto world = sy::parallel::MpiCommunicator::world();
  if (world->size() < 4) GTEST_SKIP() << "needs 4 ranks for 2 nodes x 2";
  check_against_single_process(world->size(), sy::parallel::ExchangeAlgorithm::hierarchical, 2,
                               top_p_model());
}

TEST(ExpertParallelModel, CapacityPositionFlat) {
  auto world = sy::parallel::MpiCommunicator::world();
  check_against_single_process(world->size(), sy::parallel::ExchangeAlgorithm::flat, 0,
                               capacity_model(sy::core::DropPolicy::position, sy::core::ImportanceScore::gate));
}

TEST(ExpertParallelModel, CapacityImportanceFlat) {
  auto world = sy::parallel::MpiCommunicator::world();
  check_against_single_process(world->size(), sy::parallel::ExchangeAlgorithm::flat, 0,
                               capacity_model(sy::core::DropPolicy::importance, sy::core::ImportanceScore::gate));
}

TEST(ExpertParallelModel, CapacityImportanceHierarchical) {
  auto world = sy::parallel::MpiCommunicator::world();
  if (world->size() < 4) GTEST_SKIP() << "needs 4 ranks for 2 nodes x 2";
  check_against_single_process(world->size(), sy::parallel::ExchangeAlgorithm::hierarchical, 2,
                               capacity_model(sy::core::DropPolicy::importance, sy::core::ImportanceScore::margin));
}

TEST(ExpertParallelModel, DataAndExpertParallel) {
  auto world = sy::parallel::MpiCommunicator::world();
  if (world->size() < 4) GTEST_SKIP() << "needs 4 ranks for 2 data x 2 expert";
  check_against_single_process(2, sy::parallel::ExchangeAlgorithm::automatic, 2);
}

}  // namespace
